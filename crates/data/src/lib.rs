//! # yuanli-data — data sets, independent of the tensor engine
//!
//! Tabular basics for the first lessons: a numeric CSV loader ([`Table`]), feature scaling
//! fitted on the training rows only ([`MinMaxScaler`], [`StandardScaler`]), and seeded
//! train/validation/test splits and k-fold cross-validation ([`split`], [`k_fold`]). Rows come
//! out as plain `Vec<f64>`; turning them into tensors is the caller's business, so this crate
//! can be tested in milliseconds.

mod csv;
mod scale;
mod shards;
mod split;

pub use csv::{Error, Table};
pub use scale::{MinMaxScaler, StandardScaler};
pub use shards::{char_vocab, write_shards, Shard, ShardError, ShardMeta};
pub use split::{k_fold, shuffled_indices, split, Split};

/// The files in `dir` whose extension is `ext`, sorted by name, so that a corpus is always read
/// in the same order.
pub fn files_with_extension(dir: &std::path::Path, ext: &str) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    Ok(files)
}
