//! Malformed files give errors that say what and where — never a panic.

use yuanli_gguf::{GgufFile, GgufWriter, Value};
use yuanli_tensor::QuantType;

/// A small valid file: two metadata entries and two tensors.
fn valid() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()));
    w.set("tokenizer.ggml.tokens", Value::Array(8, vec![Value::String("a".into()), Value::String("b".into())]));
    w.add_tensor("a", &[2, 3], QuantType::F32, vec![0; 24]);
    w.add_tensor("b", &[1, 32], QuantType::Q8_0, vec![0; 34]);
    w.to_bytes()
}

fn err(bytes: Vec<u8>) -> String {
    GgufFile::from_bytes(bytes, "x.gguf").unwrap_err().to_string()
}

#[test]
fn the_valid_file_opens() {
    let f = GgufFile::from_bytes(valid(), "x.gguf").unwrap();
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.tensor_f32("b").unwrap().0, [1, 32]);
}

#[test]
fn wrong_magic() {
    let mut b = valid();
    b[..4].copy_from_slice(b"GGML");
    assert_eq!(err(b), "x.gguf: at byte 0: not a GGUF file (magic \"GGML\", expected \"GGUF\")");
}

#[test]
fn unsupported_version() {
    let mut b = valid();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err(b).contains("GGUF version 1 is not supported"));
}

#[test]
fn truncated_anywhere_is_an_error_not_a_panic() {
    let b = valid();
    for n in 0..b.len() {
        let e = GgufFile::from_bytes(b[..n].to_vec(), "x.gguf");
        // Cuts inside the trailing padding of the last tensor are still complete files.
        let complete = n >= b.len() - (32 - 34 % 32) && e.is_ok();
        assert!(e.is_err() || complete, "a file cut at {n} of {} bytes opened", b.len());
    }
    let e = err(valid()[..50].to_vec());
    assert!(e.contains("truncated"), "{e}");
}

#[test]
fn tensor_past_the_end_names_the_tensor() {
    let mut b = valid();
    b.truncate(b.len() - 40);
    let e = err(b);
    assert!(e.contains("tensor \"b\"") && e.contains("points past the end of the file"), "{e}");
}

#[test]
fn unsupported_tensor_type_is_named() {
    let mut w = GgufWriter::new();
    w.add_tensor("w", &[1, 32], QuantType::Q8_0, vec![0; 34]);
    let mut b = w.to_bytes();
    // The type id follows name (8 + 1 bytes), n_dims (4) and two dims (16) after the 24-byte header.
    let at = 24 + 9 + 4 + 16;
    assert_eq!(u32::from_le_bytes(b[at..at + 4].try_into().unwrap()), 8);
    b[at..at + 4].copy_from_slice(&16u32.to_le_bytes()); // IQ2_XXS (a grid i-quant)
    let e = err(b);
    assert!(e.contains("tensor \"w\" has type IQ2_XXS (id 16), which yuanli cannot read"), "{e}");
}

#[test]
fn absurd_counts_do_not_allocate() {
    let mut b = valid();
    b[16..24].copy_from_slice(&u64::MAX.to_le_bytes()); // metadata count
    assert!(err(b).contains("metadata entries cannot fit in the"));
    let mut w = GgufWriter::new();
    w.set("k", Value::Array(4, vec![Value::U32(1)]));
    let mut b = w.to_bytes();
    let at = 24 + 9 + 4 + 4; // key, value type, element type
    b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(err(b).contains("array of 1152921504606846976 elements cannot fit"));
}

#[test]
fn missing_file_and_directory() {
    let e = GgufFile::open("/nonexistent/model.gguf").unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/model.gguf: cannot open: "), "{e}");
    let e = GgufFile::open(env!("CARGO_MANIFEST_DIR")).unwrap_err().to_string();
    assert!(e.ends_with("is a directory, not a GGUF file"), "{e}");
}
