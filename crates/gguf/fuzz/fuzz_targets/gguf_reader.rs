//! Fuzzes the GGUF reader: any byte string must give `Ok` or a `GgufError`, never a panic,
//! and every accessor on a file that opened must work too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use yuanli_gguf::GgufFile;

/// Tensors with more elements are not dequantized (keeps memory bounded; the header check
/// that the tensor lies inside the file already caps this at ~2 elements per input byte).
const MAX_NUMEL: usize = 1 << 24;

/// Keys the tokenizer and model loaders read as arrays.
const ARRAY_KEYS: [&str; 5] = [
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.scores",
    "general.alignment",
];

fuzz_target!(|data: &[u8]| {
    let Ok(f) = GgufFile::from_bytes(data.to_vec(), "fuzz.gguf") else {
        return;
    };
    let _ = (f.version(), f.alignment(), f.origin(), format!("{f:?}"));
    for (key, value) in f.metadata() {
        let _ = value.summary();
        let _ = (value.type_id(), value.as_i128(), value.as_f64(), value.as_str(), value.as_array());
        assert!(f.get(key).is_some(), "metadata key {key:?} listed but not found");
        let _ = (f.get_usize(key), f.get_f64(key), f.get_str(key));
        let _ = (f.get_strings(key), f.get_ints(key));
    }
    for key in ARRAY_KEYS {
        let _ = f.get_strings(key);
        let _ = f.get_ints(key);
    }
    for t in f.tensors() {
        let info = f.tensor_info(&t.name).expect("listed tensor has an entry");
        assert_eq!(info, t);
        assert_eq!(f.tensor_bytes(t).len(), t.size);
        if t.numel() > MAX_NUMEL {
            continue;
        }
        let (shape, values) = f.tensor_f32(&t.name).expect("listed tensor dequantizes");
        assert_eq!(shape, t.shape());
        assert_eq!(values.len(), t.numel());
    }
});
