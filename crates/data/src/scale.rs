//! Feature scaling, fitted on the training rows only (fitting on all rows leaks the test set).

/// `x' = (x − min) / (max − min)` per column (constant columns map to 0).
#[derive(Clone, Debug, PartialEq)]
pub struct MinMaxScaler {
    /// Per-column minimum seen in fitting.
    pub min: Vec<f64>,
    /// Per-column maximum seen in fitting.
    pub max: Vec<f64>,
}

impl MinMaxScaler {
    /// Fits on the rows `idx` of a `rows × cols` matrix.
    pub fn fit(x: &[f64], cols: usize, idx: &[usize]) -> Self {
        let mut min = vec![f64::INFINITY; cols];
        let mut max = vec![f64::NEG_INFINITY; cols];
        for &i in idx {
            for j in 0..cols {
                min[j] = min[j].min(x[i * cols + j]);
                max[j] = max[j].max(x[i * cols + j]);
            }
        }
        Self { min, max }
    }

    /// Scales rows in place (`x` is `rows × cols`).
    pub fn transform(&self, x: &mut [f64]) {
        let cols = self.min.len();
        for r in x.chunks_mut(cols) {
            for j in 0..cols {
                let span = self.max[j] - self.min[j];
                r[j] = if span > 0.0 { (r[j] - self.min[j]) / span } else { 0.0 };
            }
        }
    }
}

/// `x' = (x − μ) / σ` per column (σ = 0 columns map to 0).
#[derive(Clone, Debug, PartialEq)]
pub struct StandardScaler {
    /// Per-column mean of the fitting rows.
    pub mean: Vec<f64>,
    /// Per-column standard deviation (population) of the fitting rows.
    pub std: Vec<f64>,
}

impl StandardScaler {
    /// Fits on the rows `idx` of a `rows × cols` matrix.
    pub fn fit(x: &[f64], cols: usize, idx: &[usize]) -> Self {
        let n = idx.len().max(1) as f64;
        let mut mean = vec![0.0; cols];
        for &i in idx {
            for j in 0..cols {
                mean[j] += x[i * cols + j] / n;
            }
        }
        let mut var = vec![0.0; cols];
        for &i in idx {
            for j in 0..cols {
                var[j] += (x[i * cols + j] - mean[j]).powi(2) / n;
            }
        }
        Self { mean, std: var.into_iter().map(f64::sqrt).collect() }
    }

    /// Scales rows in place.
    pub fn transform(&self, x: &mut [f64]) {
        let cols = self.mean.len();
        for r in x.chunks_mut(cols) {
            for j in 0..cols {
                r[j] = if self.std[j] > 0.0 { (r[j] - self.mean[j]) / self.std[j] } else { 0.0 };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalers_use_only_the_fitting_rows() {
        let x = vec![0.0, 10.0, 2.0, 10.0, 100.0, 10.0]; // 3 rows × 2 cols; row 2 is "test"
        let mm = MinMaxScaler::fit(&x, 2, &[0, 1]);
        let mut t = x.clone();
        mm.transform(&mut t);
        assert_eq!(t, vec![0.0, 0.0, 1.0, 0.0, 50.0, 0.0]);
        let st = StandardScaler::fit(&x, 2, &[0, 1]);
        assert_eq!((st.mean.clone(), st.std.clone()), (vec![1.0, 10.0], vec![1.0, 0.0]));
        let mut t = x;
        st.transform(&mut t);
        assert_eq!(t, vec![-1.0, 0.0, 1.0, 0.0, 99.0, 0.0]);
    }
}
