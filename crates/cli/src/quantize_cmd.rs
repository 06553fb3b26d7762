//! `yuanli quantize`: rewrite a model as a GGUF file whose matrices are stored in a smaller
//! type (q8_0, q5_1, q5_0, q4_1, q4_0, f16) — or in f32, to turn a checkpoint into a GGUF file as it is.
//!
//! Two inputs:
//! - a `.gguf` file of any architecture: every metadata key is copied in order (only
//!   `general.file_type` changes) and every tensor is rewritten;
//! - a checkpoint directory from `yuanli train` (a GPT): written in llama.cpp's `gpt2` layout
//!   ([`yuanli_models::load::gpt_gguf_name_map`]) with its vocabulary in `tokenizer.ggml.*`.
//!
//! Which tensors are quantized follows llama.cpp: a 2-D tensor `[rows, cols]` with `cols` a
//! multiple of the 32-weight block is stored in the target type (each row quantized
//! independently, so a row is a whole number of blocks); 1-D tensors (norm weights, biases)
//! and anything else stay f32. A tensor already in the target type is copied byte for byte
//! (dequantizing and quantizing again could only add error).
//!
//! Bits per weight = 8 · (tensor bytes) / (weights): f32 32, f16 16, q8_0 8.5 (32 int8 + an
//! f16 scale per block), q5_1 6, q5_0 5.5 (a fifth bit per weight), q4_1 5 (32 nibbles + f16
//! scale and minimum), q4_0 4.5.

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yuanli_infer::Vocab;
use yuanli_models::gguf::{GgufFile, GgufWriter, Value};
use yuanli_models::load::{gpt_gguf_name_map, CHAR_TOKENIZER_MODEL, GPT2_ARCH};
use yuanli_tensor::quant::{quantize_row, QuantType};
use yuanli_tokenizer::{byte_level::encode_bytes, Pattern, Tokenizer};
use yuanli_train::pretrain::Trainee;

/// `yuanli quantize`
#[derive(Args, Debug)]
pub(crate) struct QuantizeArgs {
    /// A .gguf file (any architecture) or a checkpoint directory from `yuanli train`.
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    /// Storage type of the 2-D weights: q8_0, q5_1, q5_0, q4_1, q4_0, f16 or f32.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_type)]
    ty: QuantType,
    /// The GGUF file to write.
    #[arg(long, value_name = "FILE.gguf")]
    out: PathBuf,
    /// A UTF-8 text file: measure the perplexity of the input and of the output on it.
    #[arg(long, value_name = "TEXT")]
    eval_file: Option<PathBuf>,
    /// Context length of each perplexity chunk (the second half of each is scored).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Perplexity chunks to score (0 = the whole file).
    #[arg(long, default_value_t = 4)]
    chunks: usize,
}

/// The target types `--type` accepts and llama.cpp's `general.file_type` code of each
/// (`enum llama_ftype`: ALL_F32 0, MOSTLY_F16 1, MOSTLY_Q4_0 2, MOSTLY_Q4_1 3, MOSTLY_Q8_0 7,
/// MOSTLY_Q5_0 8, MOSTLY_Q5_1 9).
const TARGETS: [(&str, QuantType, u32); 7] = [
    ("f32", QuantType::F32, 0),
    ("f16", QuantType::F16, 1),
    ("q4_0", QuantType::Q4_0, 2),
    ("q4_1", QuantType::Q4_1, 3),
    ("q5_0", QuantType::Q5_0, 8),
    ("q5_1", QuantType::Q5_1, 9),
    ("q8_0", QuantType::Q8_0, 7),
];

fn parse_type(s: &str) -> Result<QuantType, String> {
    TARGETS.iter().find(|t| t.0.eq_ignore_ascii_case(s)).map(|t| t.1).ok_or_else(|| {
        format!("unknown type {s:?}; one of {}", TARGETS.iter().map(|t| t.0).collect::<Vec<_>>().join(", "))
    })
}

fn file_type_code(ty: QuantType) -> u32 {
    TARGETS.iter().find(|t| t.1 == ty).map_or(0, |t| t.2)
}

/// The type a tensor of row-major `shape` is stored in: `target` for a matrix whose rows are
/// whole blocks, f32 otherwise.
fn storage_type(shape: &[usize], target: QuantType) -> QuantType {
    match shape {
        [_, cols] if cols % target.block_len() == 0 => target,
        _ => QuantType::F32,
    }
}

/// Metadata entries in file order.
type Metadata = Vec<(String, Value)>;

/// One tensor as written: name, row-major shape, type, bytes.
struct Written {
    name: String,
    shape: Vec<usize>,
    ty: QuantType,
    bytes: Vec<u8>,
}

/// Encodes `values` (row-major `shape`) as `ty`.
fn encode(name: &str, shape: &[usize], values: &[f32], ty: QuantType) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(ty.bytes_for(values.len()).unwrap_or(0));
    if !values.len().is_multiple_of(ty.block_len()) || quantize_row(ty, values, &mut bytes).is_none() {
        bail!("tensor {name} {shape:?}: cannot be stored as {ty}");
    }
    Ok(bytes)
}

fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} tensor {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    bar
}

/// Rewrites every tensor of a GGUF file; copies the metadata, changing `general.file_type`.
fn from_gguf(path: &Path, target: QuantType) -> Result<(Metadata, Vec<Written>)> {
    let f = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut meta: Metadata = f.metadata().to_vec();
    match meta.iter_mut().find(|(k, _)| k == "general.file_type") {
        Some(entry) => entry.1 = Value::U32(file_type_code(target)),
        None => meta.push(("general.file_type".into(), Value::U32(file_type_code(target)))),
    }
    let bar = progress(f.tensors().len());
    let mut out = Vec::with_capacity(f.tensors().len());
    for info in f.tensors() {
        bar.set_message(info.name.clone());
        let shape = info.shape();
        let ty = storage_type(&shape, target);
        let bytes = if info.ty == ty {
            f.tensor_bytes(info).to_vec()
        } else {
            let (_, values) = f.tensor_f32(&info.name)?;
            encode(&info.name, &shape, &values, ty)?
        };
        out.push(Written { name: info.name.clone(), shape, ty, bytes });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((meta, out))
}

/// A string array value.
fn strings(v: Vec<String>) -> Value {
    Value::Array(8, v.into_iter().map(Value::String).collect())
}

/// llama.cpp's `tokenizer.ggml.*` keys for a byte-level BPE tokenizer: tokens as GPT-2
/// characters (a special as its text), types (1 normal, 3 control), merges `"a b"`.
fn bpe_metadata(t: &Tokenizer, origin: &str) -> Result<Vec<(String, Value)>> {
    let pre = match t.pattern() {
        Pattern::Gpt2 => "gpt-2",
        Pattern::Smollm => "smollm",
        other => bail!("{origin}: pre-tokenizer {other:?} has no llama.cpp name (GPT-2's and SmolLM2's do)"),
    };
    let n = t.vocab_size() as u32;
    let bytes = |id: u32| t.token_bytes(id).unwrap_or_default();
    let text = |id: u32| match t.is_special(id) {
        true => String::from_utf8_lossy(bytes(id)).into_owned(),
        false => encode_bytes(bytes(id)),
    };
    let tokens: Vec<String> = (0..n).map(text).collect();
    let types: Vec<Value> = (0..n).map(|id| Value::I32(if t.is_special(id) { 3 } else { 1 })).collect();
    let merges = t.recover_merges().with_context(|| format!("{origin}: the tokenizer's merges cannot be recovered"))?;
    let merges: Vec<String> =
        merges.iter().map(|&(a, b)| format!("{} {}", encode_bytes(bytes(a)), encode_bytes(bytes(b)))).collect();
    let mut m = vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(5, types)),
        ("tokenizer.ggml.merges".to_string(), strings(merges)),
    ];
    if let Some(eot) = t.special_id("<|endoftext|>") {
        m.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(eot)));
        m.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eot)));
    }
    m.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)));
    Ok(m)
}

/// A `yuanli train` checkpoint as a llama.cpp `gpt2` GGUF file.
fn from_checkpoint(dir: &Path, target: QuantType) -> Result<(Metadata, Vec<Written>)> {
    let (t, cfg) = Trainee::load(dir).with_context(|| format!("{} is not a yuanli checkpoint", dir.display()))?;
    let m = &cfg.model;
    let origin = dir.display().to_string();
    let vocab = Vocab::of_data(&cfg.data_dir)?;
    let name = dir.file_name().map_or_else(|| "yuanli-gpt".into(), |n| n.to_string_lossy().into_owned());
    let mut meta: Metadata = vec![
        ("general.architecture".into(), Value::String(GPT2_ARCH.into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(file_type_code(target))),
        ("gpt2.context_length".into(), Value::U32(m.block_size as u32)),
        ("gpt2.embedding_length".into(), Value::U32(m.n_embd as u32)),
        ("gpt2.block_count".into(), Value::U32(m.n_layer as u32)),
        ("gpt2.feed_forward_length".into(), Value::U32(4 * m.n_embd as u32)),
        ("gpt2.attention.head_count".into(), Value::U32(m.n_head as u32)),
        ("gpt2.attention.layer_norm_epsilon".into(), Value::F32(1e-5)),
    ];
    let n_tokens = match &vocab {
        Vocab::Chars(chars) => {
            meta.push(("tokenizer.ggml.model".into(), Value::String(CHAR_TOKENIZER_MODEL.into())));
            meta.push(("tokenizer.ggml.tokens".into(), strings(chars.iter().map(char::to_string).collect())));
            chars.len()
        }
        Vocab::Bpe(tok) => {
            meta.extend(bpe_metadata(tok, &origin)?);
            tok.vocab_size()
        }
    };
    if n_tokens != m.vocab_size {
        bail!("{origin}: the model has vocab_size {} but its data's vocabulary has {n_tokens} tokens", m.vocab_size);
    }
    let all: Vec<f32> = t.store.value_arena().to_vec::<f32>();
    let names = gpt_gguf_name_map(m);
    let bar = progress(names.len());
    let mut out = Vec::with_capacity(names.len());
    for (ours, theirs) in names {
        bar.set_message(theirs.clone());
        let p = t.store.get(&ours).with_context(|| format!("{origin}: no parameter {ours}"))?;
        let mut shape = p.shape.clone();
        if ours == "wte.weight" {
            shape[0] = m.vocab_size; // the real rows; the padding up to Vp is never used
        }
        let values = &all[p.offset..p.offset + shape.iter().product::<usize>()];
        let ty = storage_type(&shape, target);
        let bytes = encode(&theirs, &shape, values, ty)?;
        out.push(Written { name: theirs, shape, ty, bytes });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((meta, out))
}

/// Bytes on disk of the input: the GGUF file, or a checkpoint's `model.safetensors`.
fn input_size(path: &Path) -> u64 {
    let file = if path.is_dir() { path.join("model.safetensors") } else { path.to_path_buf() };
    std::fs::metadata(file).map_or(0, |m| m.len())
}

/// Weights and tensor bytes of a GGUF file, and how many tensors of each type it has.
fn census(f: &GgufFile) -> (usize, usize, BTreeMap<String, usize>) {
    let mut types = BTreeMap::new();
    let (mut weights, mut bytes) = (0, 0);
    for info in f.tensors() {
        weights += info.numel();
        bytes += info.size;
        *types.entry(info.ty.name().to_string()).or_insert(0) += 1;
    }
    (weights, bytes, types)
}

/// Perplexity of the model at `path` on `text` (in its own tokens), and the chunks scored.
fn perplexity(path: &Path, text: &str, ctx: usize, chunks: usize) -> Result<(f64, usize)> {
    let model = crate::llm_cmd::open_model(path, false)?;
    if ctx > model.lm().context_len() {
        bail!("--ctx {ctx} exceeds the context of {} ({})", path.display(), model.lm().context_len());
    }
    let ids = model.encode(text, false)?;
    if ids.len() < ctx {
        bail!("the eval file has {} tokens, fewer than one chunk of --ctx {ctx}", ids.len());
    }
    let n = if chunks > 0 { (ids.len() / ctx).min(chunks) } else { ids.len() / ctx };
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} chunk {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    let p = yuanli_models::eval::perplexity(model.lm(), &ids, ctx, chunks, &mut |_, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    })?;
    bar.finish_and_clear();
    Ok((p.ppl, p.chunk_nll.len()))
}

pub(crate) fn run(args: &QuantizeArgs) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let text = match &args.eval_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {} as UTF-8 text", p.display()))?),
        None => None,
    };
    if args.input.canonicalize().ok().is_some_and(|i| args.out.canonicalize().ok() == Some(i)) {
        bail!("--out {} is the input; write to another file", args.out.display());
    }
    let (meta, tensors) =
        if args.input.is_dir() { from_checkpoint(&args.input, args.ty)? } else { from_gguf(&args.input, args.ty)? };
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(&k, v);
    }
    for t in &tensors {
        w.add_tensor(&t.name, &t.shape, t.ty, t.bytes.clone());
    }
    w.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    drop(w);

    // Read it back: every tensor must come back with the name, shape, type and bytes written.
    let back = GgufFile::open(&args.out).with_context(|| format!("reopening {}", args.out.display()))?;
    if back.tensors().len() != tensors.len() {
        bail!("{}: {} tensors read back, {} written", args.out.display(), back.tensors().len(), tensors.len());
    }
    for (t, info) in tensors.iter().zip(back.tensors()) {
        if info.name != t.name || info.shape() != t.shape || info.ty != t.ty || back.tensor_bytes(info) != t.bytes {
            bail!("{}: tensor {} does not read back as written", args.out.display(), t.name);
        }
    }
    drop(tensors);

    let mb = |b: u64| b as f64 / 1e6;
    let (in_size, out_size) = (input_size(&args.input), std::fs::metadata(&args.out)?.len());
    let (weights, bytes, types) = census(&back);
    println!(
        "{} ({:.2} MB) -> {} ({:.2} MB): {:.1}% of the size",
        args.input.display(),
        mb(in_size),
        args.out.display(),
        mb(out_size),
        100.0 * out_size as f64 / in_size.max(1) as f64
    );
    println!(
        "{:.2} M weights, {:.3} bits per weight; tensors: {}",
        weights as f64 / 1e6,
        8.0 * bytes as f64 / weights.max(1) as f64,
        types.iter().map(|(t, n)| format!("{n} × {t}")).collect::<Vec<_>>().join(", ")
    );
    if let Some(text) = text {
        let (before, n) = perplexity(&args.input, &text, args.ctx, args.chunks)
            .with_context(|| format!("perplexity of {}", args.input.display()))?;
        let (after, _) = perplexity(&args.out, &text, args.ctx, args.chunks)
            .with_context(|| format!("perplexity of {}", args.out.display()))?;
        println!(
            "perplexity ({n} chunks of {}, second halves scored): input {before:.4}, {} {after:.4} ({:+.3}%)",
            args.ctx,
            args.ty,
            100.0 * (after - before) / before
        );
    }
    Ok(())
}
