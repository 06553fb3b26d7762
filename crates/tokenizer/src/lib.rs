//! # yuanli-tokenizer — byte-level BPE (work in progress)
