//! Seeded shuffles, train/validation/test splits and k-fold cross-validation.

/// Row indices of one split.
#[derive(Clone, Debug, PartialEq)]
pub struct Split {
    /// Training rows.
    pub train: Vec<usize>,
    /// Validation rows.
    pub val: Vec<usize>,
    /// Test rows.
    pub test: Vec<usize>,
}

/// SplitMix64: a tiny, portable generator for shuffles (the tensor crate's `Rng` is not a
/// dependency of this crate on purpose).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// SplitMix64 step, shared with the shard loader.
pub(crate) fn splitmix64_pub(state: &mut u64) -> u64 {
    splitmix64(state)
}

/// `0..n` in a random order fixed by `seed` (Fisher–Yates).
pub fn shuffled_indices(n: usize, seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut s = seed;
    for i in (1..n).rev() {
        let j = (((splitmix64(&mut s) >> 32) * (i as u64 + 1)) >> 32) as usize;
        idx.swap(i, j);
    }
    idx
}

/// Shuffles `0..n` with `seed` and cuts it into train / validation / test by fractions.
pub fn split(n: usize, val_fraction: f64, test_fraction: f64, seed: u64) -> Split {
    let idx = shuffled_indices(n, seed);
    let n_test = (n as f64 * test_fraction).round() as usize;
    let n_val = (n as f64 * val_fraction).round() as usize;
    let test = idx[..n_test.min(n)].to_vec();
    let val = idx[n_test.min(n)..(n_test + n_val).min(n)].to_vec();
    let train = idx[(n_test + n_val).min(n)..].to_vec();
    Split { train, val, test }
}

/// `k` (train, validation) folds over the given rows: fold `i` validates on the `i`-th of `k`
/// nearly equal parts of a seeded shuffle and trains on the rest.
pub fn k_fold(rows: &[usize], k: usize, seed: u64) -> Vec<(Vec<usize>, Vec<usize>)> {
    let order = shuffled_indices(rows.len(), seed);
    let shuffled: Vec<usize> = order.iter().map(|&i| rows[i]).collect();
    let k = k.max(1);
    (0..k)
        .map(|f| {
            let lo = f * shuffled.len() / k;
            let hi = (f + 1) * shuffled.len() / k;
            let val = shuffled[lo..hi].to_vec();
            let train = shuffled[..lo].iter().chain(&shuffled[hi..]).copied().collect();
            (train, val)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_partition_the_rows_and_are_reproducible() {
        let s = split(100, 0.1, 0.2, 7);
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (70, 10, 20));
        let mut all: Vec<usize> = s.train.iter().chain(&s.val).chain(&s.test).copied().collect();
        all.sort();
        assert_eq!(all, (0..100).collect::<Vec<_>>());
        assert_eq!(s, split(100, 0.1, 0.2, 7));
        assert_ne!(s, split(100, 0.1, 0.2, 8));
    }

    #[test]
    fn k_fold_validates_every_row_exactly_once() {
        let rows: Vec<usize> = (10..33).collect();
        let folds = k_fold(&rows, 5, 3);
        let mut seen: Vec<usize> = folds.iter().flat_map(|(_, v)| v.clone()).collect();
        seen.sort();
        assert_eq!(seen, rows);
        for (t, v) in &folds {
            assert_eq!(t.len() + v.len(), rows.len());
            assert!(v.iter().all(|x| !t.contains(x)));
        }
    }
}
