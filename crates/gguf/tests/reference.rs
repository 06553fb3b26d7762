//! The reader against files written by the `gguf` Python package (llama.cpp's own writer):
//! metadata of every type, every tensor type dequantized exactly as `gguf.quants` does, and
//! every type we encode quantized to the same bytes.
//! Regenerate with `bench/.venv/bin/python tools/reference/gguf_reference.py`.

use std::path::PathBuf;
use yuanli_gguf::{GgufFile, GgufWriter, Value};
use yuanli_tensor::QuantType;

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

#[test]
fn metadata_of_every_type_reads_as_written() {
    let f = GgufFile::open(testdata("quants.gguf")).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.get("t.u8"), Some(&Value::U8(200)));
    assert_eq!(f.get("t.i8"), Some(&Value::I8(-100)));
    assert_eq!(f.get("t.u16"), Some(&Value::U16(60000)));
    assert_eq!(f.get("t.i16"), Some(&Value::I16(-30000)));
    assert_eq!(f.get("t.u32"), Some(&Value::U32(4_000_000_000)));
    assert_eq!(f.get("t.i32"), Some(&Value::I32(-2_000_000_000)));
    assert_eq!(f.get("t.f32"), Some(&Value::F32(1.5)));
    assert_eq!(f.get("t.u64"), Some(&Value::U64((1 << 63) + 5)));
    assert_eq!(f.get("t.i64"), Some(&Value::I64(-(1 << 62))));
    assert_eq!(f.get("t.f64"), Some(&Value::F64(-2.25)));
    assert_eq!(f.get("t.bool"), Some(&Value::Bool(true)));
    assert_eq!(f.get_str("t.str").unwrap(), "原理 GGUF");
    assert_eq!(f.get_strings("t.arr_str").unwrap(), ["a", "bc", ""]);
    assert_eq!(f.get_ints("t.arr_int").unwrap(), [1, -2, 3]);
    let nested = f.get("t.nested").and_then(Value::as_array).unwrap();
    assert_eq!(nested.len(), 2);
    assert_eq!(nested[0].as_array().unwrap().iter().map(|v| v.as_i128().unwrap()).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(f.get_str("general.architecture").unwrap(), "test");
    assert!(f.get_usize("t.str").unwrap_err().to_string().contains("expected a non-negative integer"));
}

#[test]
fn every_tensor_type_dequantizes_exactly_like_the_reference() {
    let q = GgufFile::open(testdata("quants.gguf")).unwrap();
    let r = GgufFile::open(testdata("quants_f32.gguf")).unwrap();
    let mut seen = Vec::new();
    for info in q.tensors() {
        let (shape, ours) = q.tensor_f32(&info.name).unwrap();
        let (ref_shape, want) = r.tensor_f32(&info.name).unwrap();
        assert_eq!(shape, ref_shape, "{}", info.name);
        for (i, (a, b)) in ours.iter().zip(&want).enumerate() {
            assert!(
                a == b || (a.is_nan() && b.is_nan()),
                "{} ({}) element {i}: ours {a}, gguf.quants {b}",
                info.name,
                info.ty
            );
        }
        seen.push(info.ty);
    }
    for ty in QuantType::ALL {
        assert!(seen.contains(&ty), "no {ty} tensor in the reference file");
    }
}

#[test]
fn a_written_file_reads_back_with_identical_metadata_and_tensors() {
    let q = GgufFile::open(testdata("quants.gguf")).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in q.metadata() {
        w.set(k, v.clone());
    }
    for t in q.tensors() {
        w.add_tensor(&t.name, &t.shape(), t.ty, q.tensor_bytes(t).to_vec());
    }
    let back = GgufFile::from_bytes(w.to_bytes(), "<written>").unwrap();
    assert_eq!(back.metadata(), q.metadata());
    for t in q.tensors() {
        let b = back.tensor_info(&t.name).unwrap();
        assert_eq!((b.ty, b.shape()), (t.ty, t.shape()));
        assert_eq!(back.tensor_bytes(b), q.tensor_bytes(t), "{}", t.name);
    }
}

#[test]
fn every_encoder_writes_the_bytes_gguf_quants_writes() {
    let f = GgufFile::open(testdata("quantize_ref.gguf")).unwrap();
    for ty in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1, QuantType::Q5_0, QuantType::Q5_1] {
        let name = ty.name().to_lowercase();
        let (_, x) = f.tensor_f32(&format!("x_{name}")).unwrap();
        let want = f.tensor_bytes(f.tensor_info(&name).unwrap());
        let mut ours = Vec::new();
        yuanli_tensor::quant::quantize_row(ty, &x, &mut ours).unwrap();
        assert_eq!(ours.len(), want.len(), "{ty}: length");
        if let Some(i) = ours.iter().zip(want).position(|(a, b)| a != b) {
            panic!(
                "{ty}: byte {i} (block {}) is {:#04x}, gguf.quants wrote {:#04x}",
                i / ty.block_bytes(),
                ours[i],
                want[i]
            );
        }
    }
}
