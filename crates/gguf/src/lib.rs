//! # yuanli-gguf — GGUF model files
//!
//! GGUF is llama.cpp's single-file model format. Layout (all little-endian):
//!
//! ```text
//! magic "GGUF" · version u32 (2 or 3) · tensor_count u64 · kv_count u64
//! kv_count ×  { key: string · type: u32 · value }              metadata
//! tensor_count × { name: string · n_dims u32 · ne[n_dims] u64 · type u32 · offset u64 }
//! padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_start + offset (offset a multiple of the alignment)
//! ```
//!
//! A string is `len: u64` then UTF-8 bytes; a value is one of 13 types (integers of 8–64 bits,
//! f32, f64, bool, string, and arrays `{ elem_type u32 · count u64 · elems }`, which may nest).
//! `ne[0]` is the fastest-varying dimension, so a row-major `[rows, cols]` matrix is stored
//! with `ne = [cols, rows]`; [`TensorInfo::shape`] gives the row-major shape.
//!
//! The reader checks everything before it trusts it: every length against the bytes left,
//! every count before allocating, nesting depth, UTF-8, alignment, tensor types and sizes, and
//! that every tensor lies inside the file. A malformed file yields a [`GgufError`] naming the
//! file, the byte offset and what was wrong — never a panic or an out-of-bounds read (a fuzz
//! target in `crates/gguf/fuzz` holds it to that).

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use yuanli_tensor::quant::{dequantize_row, QuantType};

/// The first four bytes of every GGUF file.
pub const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: usize = 32;
/// Deepest nesting of arrays the reader accepts.
const MAX_DEPTH: usize = 4;
/// Most dimensions a tensor may have (GGML's `GGML_MAX_DIMS`).
const MAX_DIMS: usize = 4;

/// Why a GGUF file could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {what}")]
pub struct GgufError {
    /// The file (or "<bytes>").
    pub origin: String,
    /// What was wrong, with the byte offset where it applies.
    pub what: String,
}

type Result<T> = std::result::Result<T, GgufError>;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `UINT8`
    U8(u8),
    /// `INT8`
    I8(i8),
    /// `UINT16`
    U16(u16),
    /// `INT16`
    I16(i16),
    /// `UINT32`
    U32(u32),
    /// `INT32`
    I32(i32),
    /// `UINT64`
    U64(u64),
    /// `INT64`
    I64(i64),
    /// `FLOAT32`
    F32(f32),
    /// `FLOAT64`
    F64(f64),
    /// `BOOL`
    Bool(bool),
    /// `STRING`
    String(String),
    /// `ARRAY`: the element type id and the elements (which may be arrays).
    Array(u32, Vec<Value>),
}

impl Value {
    /// The GGUF type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(..) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }

    /// The value as an integer, if it is one (of any width and sign).
    pub fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            Value::U8(x) => x.into(),
            Value::I8(x) => x.into(),
            Value::U16(x) => x.into(),
            Value::I16(x) => x.into(),
            Value::U32(x) => x.into(),
            Value::I32(x) => x.into(),
            Value::U64(x) => x.into(),
            Value::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// The value as a float (floats and integers).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x.into()),
            Value::F64(x) => Some(x),
            _ => self.as_i128().map(|x| x as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(_, v) => Some(v),
            _ => None,
        }
    }

    /// A short rendering for listings: long arrays and strings are abbreviated.
    pub fn summary(&self) -> String {
        match self {
            Value::String(s) if s.chars().count() > 60 => {
                format!("{:?}… ({} chars)", s.chars().take(60).collect::<String>(), s.chars().count())
            }
            Value::String(s) => format!("{s:?}"),
            Value::Array(_, v) if v.len() > 6 => {
                let head: Vec<String> = v.iter().take(3).map(Value::summary).collect();
                format!("[{}, …] ({} items)", head.join(", "), v.len())
            }
            Value::Array(_, v) => format!("[{}]", v.iter().map(Value::summary).collect::<Vec<_>>().join(", ")),
            Value::Bool(b) => b.to_string(),
            Value::F32(x) => x.to_string(),
            Value::F64(x) => x.to_string(),
            other => other.as_i128().map(|x| x.to_string()).unwrap_or_default(),
        }
    }
}

/// One tensor's header entry.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// Its name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGUF dimensions, fastest-varying first (`ne`).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: QuantType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: usize,
}

impl TensorInfo {
    /// The row-major shape: `dims` reversed (`ne = [cols, rows]` → `[rows, cols]`).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An open GGUF file: the parsed header and the (memory-mapped) tensor data.
pub struct GgufFile {
    origin: String,
    version: u32,
    metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: usize,
    data_start: usize,
    bytes: Bytes,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("origin", &self.origin)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A cursor over the header bytes that turns every short read into an error with its offset.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    origin: &'a str,
}

impl<'a> Cursor<'a> {
    fn err<T>(&self, what: impl fmt::Display) -> Result<T> {
        Err(GgufError { origin: self.origin.to_string(), what: format!("at byte {}: {what}", self.pos) })
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        match self.pos.checked_add(n).filter(|&end| end <= self.b.len()) {
            Some(end) => {
                let s = &self.b[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => self.err(format!(
                "file truncated: {what} needs {n} bytes but only {} remain",
                self.b.len().saturating_sub(self.pos)
            )),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn remaining(&self) -> usize {
        self.b.len() - self.pos
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let at = self.pos;
        let len = self.u64(what)?;
        if len > self.remaining() as u64 {
            self.pos = at;
            return self.err(format!("{what}: string length {len} exceeds the {} bytes left", self.remaining() - 8));
        }
        let s = self.take(len as usize, what)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => {
                self.pos = at;
                self.err(format!("{what}: string is not UTF-8 ({e})"))
            }
        }
    }

    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.array::<1>(key)?[0]),
            1 => Value::I8(self.array::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => {
                    self.pos -= 1;
                    return self.err(format!("{key}: bool byte is {b}, not 0 or 1"));
                }
            },
            8 => Value::String(self.string(key)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return self.err(format!("{key}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let elem = self.u32(key)?;
                let count = self.u64(key)?;
                // Every element takes at least one byte: a count beyond the bytes left is a lie,
                // and must not reach the allocator.
                if count > self.remaining() as u64 {
                    return self
                        .err(format!("{key}: array of {count} elements cannot fit in {} bytes", self.remaining()));
                }
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            other => {
                self.pos -= 4;
                return self.err(format!("{key}: unknown metadata value type {other}"));
            }
        })
    }
}

/// GGML type names by id, for error messages about types this reader does not support.
fn ggml_type_name(id: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

/// The whole file's bytes (tensor data included), so that an `Arc<GgufFile>` can back the
/// stored weight matrices of a model read in place ([`yuanli_tensor::QMatrix`]).
impl AsRef<[u8]> for GgufFile {
    fn as_ref(&self) -> &[u8] {
        self.bytes()
    }
}

impl GgufFile {
    /// Opens and checks a GGUF file; the tensor data is memory-mapped, not read.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        let io = |e: std::io::Error| GgufError { origin: origin.clone(), what: format!("cannot open: {e}") };
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(GgufError { origin, what: "is a directory, not a GGUF file".into() });
        }
        // SAFETY: the map is read-only and private to this process; a file truncated by
        // someone else while mapped would fault (SIGBUS), which is the accepted limit of mmap.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        GgufFile::parse(Bytes::Mapped(map), origin)
    }

    /// Parses a GGUF file held in memory (for tests, fuzzing and files built on the fly).
    pub fn from_bytes(bytes: Vec<u8>, origin: &str) -> Result<GgufFile> {
        GgufFile::parse(Bytes::Owned(bytes), origin.to_string())
    }

    fn parse(bytes: Bytes, origin: String) -> Result<GgufFile> {
        let mut c = Cursor { b: &bytes, pos: 0, origin: &origin };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            c.pos = 0;
            return c.err(format!("not a GGUF file (magic {:?}, expected \"GGUF\")", String::from_utf8_lossy(magic)));
        }
        let version = c.u32("version")?;
        if version != 2 && version != 3 {
            c.pos -= 4;
            return c.err(format!("GGUF version {version} is not supported (2 and 3 are)"));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // A key/value pair takes at least 13 bytes and a tensor info at least 24.
        if n_kv > (c.remaining() / 13) as u64 || n_tensors > (c.remaining() / 24) as u64 {
            c.pos -= 16;
            return c.err(format!(
                "file truncated or corrupt: {n_tensors} tensors and {n_kv} metadata entries cannot fit in the {} bytes \
                 left",
                c.remaining() + 16
            ));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut index = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let at = c.pos;
            let key = c.string(&format!("metadata key {i}"))?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                c.pos = at;
                return c.err(format!("metadata key {key:?} appears twice"));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_i128() {
                Some(a) if a > 0 && a <= 1 << 20 && (a as usize).is_power_of_two() => a as usize,
                _ => return c.err(format!("general.alignment = {} is not a power of two", v.summary())),
            },
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut tensor_index = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let at = c.pos;
            let name = c.string(&format!("tensor {i} name"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                c.pos -= 4;
                return c.err(format!("tensor {name:?} has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"));
            }
            let mut dims = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let ty_id = c.u32(&name)?;
            let Some(ty) = QuantType::from_ggml_id(ty_id) else {
                c.pos -= 4;
                let supported: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
                return c.err(format!(
                    "tensor {name:?} has type {} (id {ty_id}), which yuanli cannot read (supported: {})",
                    ggml_type_name(ty_id),
                    supported.join(", ")
                ));
            };
            let offset = c.u64(&name)?;
            let numel =
                dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= usize::MAX as u64 / 4);
            let Some(numel) = numel else {
                return c.err(format!("tensor {name:?} dimensions {dims:?} overflow"));
            };
            if dims[0] % ty.block_len() as u64 != 0 {
                return c.err(format!(
                    "tensor {name:?}: rows of {} elements are not a whole number of {ty} blocks of {}",
                    dims[0],
                    ty.block_len()
                ));
            }
            let size = ty.bytes_for(numel as usize).unwrap_or(usize::MAX);
            if offset % alignment as u64 != 0 {
                return c
                    .err(format!("tensor {name:?}: offset {offset} is not a multiple of the alignment {alignment}"));
            }
            if tensor_index.insert(name.clone(), tensors.len()).is_some() {
                c.pos = at;
                return c.err(format!("tensor name {name:?} appears twice"));
            }
            tensors.push(TensorInfo { name, dims, ty, offset, size });
        }
        let data_start = c.pos.next_multiple_of(alignment);
        for t in &tensors {
            let end = (data_start as u64).checked_add(t.offset).and_then(|s| s.checked_add(t.size as u64));
            if end.is_none_or(|e| e > bytes.len() as u64) {
                return Err(GgufError {
                    origin,
                    what: format!(
                        "tensor {:?} ({} {:?}, {} bytes at data offset {}) points past the end of the file ({} bytes); \
                         the file is truncated or corrupt",
                        t.name,
                        t.ty,
                        t.shape(),
                        t.size,
                        t.offset,
                        bytes.len()
                    ),
                });
            }
        }
        Ok(GgufFile { origin, version, metadata, index, tensors, tensor_index, alignment, data_start, bytes })
    }

    /// Where the file came from (its path).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment in bytes.
    pub fn alignment(&self) -> usize {
        self.alignment
    }

    /// Every metadata entry in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn missing<T>(&self, key: &str, want: &str) -> Result<T> {
        let what = match self.get(key) {
            None => format!("metadata key {key:?} is missing"),
            Some(v) => format!("metadata key {key:?} is {}, expected {want}", v.summary()),
        };
        Err(GgufError { origin: self.origin.clone(), what })
    }

    /// A required non-negative integer that fits in `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        match self.get(key).and_then(Value::as_i128).and_then(|x| usize::try_from(x).ok()) {
            Some(x) => Ok(x),
            None => self.missing(key, "a non-negative integer"),
        }
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        match self.get(key).and_then(Value::as_f64) {
            Some(x) => Ok(x),
            None => self.missing(key, "a number"),
        }
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        match self.get(key).and_then(Value::as_str) {
            Some(x) => Ok(x),
            None => self.missing(key, "a string"),
        }
    }

    /// A required array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<String>> {
        let v = self.get(key).and_then(Value::as_array);
        match v.map(|a| a.iter().map(|x| x.as_str().map(str::to_string)).collect::<Option<Vec<_>>>()) {
            Some(Some(v)) => Ok(v),
            _ => self.missing(key, "an array of strings"),
        }
    }

    /// A required array of integers.
    pub fn get_ints(&self, key: &str) -> Result<Vec<i64>> {
        let v = self.get(key).and_then(Value::as_array);
        match v.map(|a| a.iter().map(|x| x.as_i128().and_then(|i| i64::try_from(i).ok())).collect::<Option<Vec<_>>>()) {
            Some(Some(v)) => Ok(v),
            _ => self.missing(key, "an array of integers"),
        }
    }

    /// A required array of numbers.
    pub fn get_floats(&self, key: &str) -> Result<Vec<f64>> {
        let v = self.get(key).and_then(Value::as_array);
        match v.map(|a| a.iter().map(Value::as_f64).collect::<Option<Vec<_>>>()) {
            Some(Some(v)) => Ok(v),
            _ => self.missing(key, "an array of numbers"),
        }
    }

    /// Every tensor's header entry, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's header entry.
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo> {
        match self.tensor_index.get(name) {
            Some(&i) => Ok(&self.tensors[i]),
            None => Err(GgufError { origin: self.origin.clone(), what: format!("tensor {name:?} is missing") }),
        }
    }

    /// The raw bytes of a tensor (checked to lie inside the file when it was opened).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.bytes[self.tensor_range(info)]
    }

    /// Where a tensor's bytes lie in [`GgufFile::bytes`].
    pub fn tensor_range(&self, info: &TensorInfo) -> std::ops::Range<usize> {
        let start = self.data_start + info.offset as usize;
        start..start + info.size
    }

    /// The whole file (memory-mapped when opened from disk).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A tensor dequantized to f32: `(row-major shape, values)`.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensor_info(name)?;
        let mut out = vec![0f32; info.numel()];
        dequantize_row(info.ty, self.tensor_bytes(info), &mut out);
        Ok((info.shape(), out))
    }
}

/// Builds a GGUF v3 file: metadata in insertion order, then tensors, each aligned.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, QuantType, Vec<u8>)>,
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> GgufWriter {
        GgufWriter::default()
    }

    /// Adds (or replaces) a metadata entry.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// Adds a tensor of row-major `shape` whose bytes are already in the format `ty`.
    #[track_caller]
    pub fn add_tensor(&mut self, name: &str, shape: &[usize], ty: QuantType, bytes: Vec<u8>) {
        let numel = shape.iter().product::<usize>();
        assert_eq!(ty.bytes_for(numel), Some(bytes.len()), "GgufWriter: {name} {shape:?} as {ty}");
        self.tensors.push((name.to_string(), shape.iter().rev().map(|&d| d as u64).collect(), ty, bytes));
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let align = DEFAULT_ALIGNMENT;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut out, k);
            out.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut out, v);
        }
        let mut offset = 0u64;
        for (name, dims, ty, bytes) in &self.tensors {
            put_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
            out.extend_from_slice(&ty.ggml_id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offset = (offset + bytes.len() as u64).next_multiple_of(align as u64);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        for (_, _, _, bytes) in &self.tensors {
            out.extend_from_slice(bytes);
            out.resize(out.len().next_multiple_of(align), 0);
        }
        out
    }

    /// Writes the file atomically: a temporary file beside it, flushed to disk, then renamed.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let tmp: PathBuf = path.with_extension("gguf.tmp");
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&self.to_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => put_string(out, s),
        Value::Array(elem, items) => {
            out.extend_from_slice(&elem.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            items.iter().for_each(|x| put_value(out, x));
        }
    }
}
