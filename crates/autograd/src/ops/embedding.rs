//! Fused embedding lookup.

use crate::var::{Backward, Var};
use yuanli_tensor::Tensor;

/// `y[n] = W[ids[n]]`: `∂L/∂W[r] = Σ_{n: ids[n] = r} g[n]` (a scatter-add of rows).
struct Embedding {
    vocab: usize,
    ids: Tensor,
}
impl Backward for Embedding {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn backward(&self, g: &Tensor, n: &[bool]) -> Vec<Option<Tensor>> {
        vec![n[0].then(|| g.contiguous().index_add_rows(&self.ids, self.vocab))]
    }
}

impl Var {
    /// Embedding lookup: `self` is the table `(V, C)`, `ids` u32 of any shape → `(…ids, C)`.
    #[track_caller]
    pub fn embedding(&self, ids: &Tensor) -> Var {
        let y = self.value().index_select(ids);
        Var::from_op(y, Embedding { vocab: self.shape()[0], ids: ids.clone() }, &[self])
    }
}
