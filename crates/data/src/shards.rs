//! Token shards: a corpus as a flat binary file of token ids, with a JSON header.
//!
//! `DIR/train.bin` and `DIR/val.bin` hold little-endian ids, `u16` when the vocabulary fits
//! (≤ 65 536) and `u32` otherwise; `DIR/meta.json` says which, the tokenizer, the vocabulary
//! size and the token counts. The loader memory-maps a shard and draws `(B, T+1)` windows at
//! offsets that depend only on `(seed, batch index)`, so a resumed run sees exactly the batches
//! an uninterrupted one would.

use crate::csv::Error as CsvError;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What can go wrong with shards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShardError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The header or the data is not what a shard should be.
    #[error("{path}: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

impl From<CsvError> for ShardError {
    fn from(e: CsvError) -> Self {
        ShardError::Corrupt { path: PathBuf::new(), message: e.to_string() }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ShardError + '_ {
    move |source| ShardError::Io { path: path.to_path_buf(), source }
}

/// `meta.json` of a prepared corpus.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardMeta {
    /// Format version.
    pub version: u32,
    /// `"char"` or the tokenizer file used.
    pub tokenizer: String,
    /// Number of distinct ids.
    pub vocab_size: usize,
    /// `"u16"` or `"u32"`.
    pub dtype: String,
    /// Tokens in `train.bin`.
    pub train_tokens: usize,
    /// Tokens in `val.bin`.
    pub val_tokens: usize,
    /// For `char` vocabularies: id → character.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chars: Vec<char>,
}

/// A character-level vocabulary: the sorted distinct characters of a text.
pub fn char_vocab(text: &str) -> Vec<char> {
    let mut chars: Vec<char> = text.chars().collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    chars.sort();
    chars
}

/// Writes `ids` split into `train.bin` / `val.bin` (the last `val_fraction` is validation) and
/// `meta.json` into `dir`.
pub fn write_shards(
    dir: &Path,
    ids: &[u32],
    vocab_size: usize,
    tokenizer: &str,
    chars: Vec<char>,
    val_fraction: f64,
) -> Result<ShardMeta, ShardError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let n_val = ((ids.len() as f64) * val_fraction).round() as usize;
    let (train, val) = ids.split_at(ids.len() - n_val.min(ids.len()));
    let wide = vocab_size > 1 << 16;
    let encode = |xs: &[u32]| -> Vec<u8> {
        if wide {
            xs.iter().flat_map(|v| v.to_le_bytes()).collect()
        } else {
            xs.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
        }
    };
    for (name, part) in [("train.bin", train), ("val.bin", val)] {
        let p = dir.join(name);
        std::fs::write(&p, encode(part)).map_err(io(&p))?;
    }
    let meta = ShardMeta {
        version: 1,
        tokenizer: tokenizer.to_string(),
        vocab_size,
        dtype: if wide { "u32" } else { "u16" }.to_string(),
        train_tokens: train.len(),
        val_tokens: val.len(),
        chars,
    };
    let p = dir.join("meta.json");
    let json = serde_json::to_string_pretty(&meta)
        .map_err(|e| ShardError::Corrupt { path: p.clone(), message: e.to_string() })?;
    std::fs::write(&p, json).map_err(io(&p))?;
    Ok(meta)
}

/// A memory-mapped shard of token ids.
pub struct Shard {
    map: memmap2::Mmap,
    wide: bool,
    len: usize,
    path: PathBuf,
}

impl Shard {
    /// Reads `meta.json` of a prepared directory.
    pub fn meta(dir: &Path) -> Result<ShardMeta, ShardError> {
        let p = dir.join("meta.json");
        let text = std::fs::read_to_string(&p).map_err(io(&p))?;
        let meta: ShardMeta = serde_json::from_str(&text)
            .map_err(|e| ShardError::Corrupt { path: p.clone(), message: format!("bad header: {e}") })?;
        if meta.dtype != "u16" && meta.dtype != "u32" {
            return Err(ShardError::Corrupt {
                path: p,
                message: format!("dtype {:?} is neither u16 nor u32", meta.dtype),
            });
        }
        Ok(meta)
    }

    /// Maps `DIR/{split}.bin` (`split` is `train` or `val`) and checks it against the header.
    pub fn open(dir: &Path, split: &str) -> Result<Shard, ShardError> {
        let meta = Self::meta(dir)?;
        let path = dir.join(format!("{split}.bin"));
        let file = std::fs::File::open(&path).map_err(io(&path))?;
        // SAFETY: the file is opened read-only and the map is read-only; yuanli never writes a
        // shard while it is being trained on (a concurrent writer would be a user error that
        // can only change the ids read, which are range-checked below).
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io(&path))?;
        let wide = meta.dtype == "u32";
        let width = if wide { 4 } else { 2 };
        let expected = if split == "train" { meta.train_tokens } else { meta.val_tokens };
        if map.len() != expected * width {
            return Err(ShardError::Corrupt { path, message: format!("holds {} bytes, but meta.json says {expected} {} tokens ({} bytes): truncated or from another corpus", map.len(), meta.dtype, expected * width) });
        }
        let shard = Shard { map, wide, len: expected, path };
        if let Some((i, id)) = (0..shard.len).map(|i| (i, shard.get(i))).find(|&(_, id)| id as usize >= meta.vocab_size)
        {
            return Err(ShardError::Corrupt {
                path: shard.path,
                message: format!("token {i} has id {id} ≥ vocab_size {}", meta.vocab_size),
            });
        }
        Ok(shard)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the shard is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        if self.wide {
            u32::from_le_bytes([self.map[4 * i], self.map[4 * i + 1], self.map[4 * i + 2], self.map[4 * i + 3]])
        } else {
            u16::from_le_bytes([self.map[2 * i], self.map[2 * i + 1]]) as u32
        }
    }

    /// Batch number `index` of a seeded stream: `B` windows of `T + 1` tokens, returned as
    /// inputs `(B·T)` and next-token targets `(B·T)`, row-major.
    pub fn batch(&self, seed: u64, index: u64, b: usize, t: usize) -> Result<(Vec<u32>, Vec<u32>), ShardError> {
        if self.len < t + 1 {
            return Err(ShardError::Corrupt {
                path: self.path.clone(),
                message: format!("{} tokens cannot fill a window of {} (block size + 1)", self.len, t + 1),
            });
        }
        let mut state = seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let (mut x, mut y) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t));
        for _ in 0..b {
            let r = crate::split::splitmix64_pub(&mut state);
            let start = (((r >> 11) as u128 * (self.len - t) as u128) >> 53) as usize;
            for j in 0..t {
                x.push(self.get(start + j));
                y.push(self.get(start + j + 1));
            }
        }
        Ok((x, y))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_round_trip_and_damage_is_reported() {
        let dir = std::env::temp_dir().join(format!("yuanli-shards-{}", std::process::id()));
        let text = "hello world, hello shards";
        let chars = char_vocab(text);
        let ids: Vec<u32> = text.chars().map(|c| chars.iter().position(|&d| d == c).unwrap() as u32).collect();
        let meta = write_shards(&dir, &ids, chars.len(), "char", chars.clone(), 0.2).unwrap();
        assert_eq!((meta.train_tokens, meta.val_tokens, meta.dtype.as_str()), (20, 5, "u16"));
        let tr = Shard::open(&dir, "train").unwrap();
        assert_eq!((0..tr.len()).map(|i| tr.get(i)).collect::<Vec<_>>(), ids[..20]);
        let (x, y) = tr.batch(7, 3, 2, 4).unwrap();
        assert_eq!(x.len(), 8);
        assert_eq!(&x[1..4], &y[..3], "targets are inputs shifted by one");
        assert_eq!(tr.batch(7, 3, 2, 4).unwrap(), (x, y), "batch i of a seed is reproducible");
        // Truncate the validation shard: the error names the file and the sizes.
        std::fs::write(dir.join("val.bin"), [0u8; 3]).unwrap();
        let err = Shard::open(&dir, "val").err().unwrap().to_string();
        assert!(err.contains("val.bin") && err.contains("truncated"), "{err}");
        std::fs::remove_file(dir.join("meta.json")).unwrap();
        assert!(Shard::open(&dir, "train").err().unwrap().to_string().contains("meta.json"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
