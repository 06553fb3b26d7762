//! The KV cache: per layer, the keys and values of every position processed so far, so each
//! new token costs one position of work instead of a whole forward pass.

use yuanli_tensor::Tensor;

/// Keys and values of one layer, `(B, Hk, T₀, D)` each.
#[derive(Clone, Default)]
pub(crate) struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    /// Appends the keys and values of new positions along the time axis and returns the whole
    /// cache for this layer.
    pub(crate) fn append(&mut self, k_new: &Tensor, v_new: &Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.kv.take() {
            None => (k_new.contiguous(), v_new.contiguous()),
            Some((k0, v0)) => (Tensor::concat(&[k0, k_new.clone()], 2), Tensor::concat(&[v0, v_new.clone()], 2)),
        };
        self.kv = Some((k.clone(), v.clone()));
        (k, v)
    }
}

/// The KV cache of one generation.
#[derive(Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: usize,
}

impl KvCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `i` of a model with `n_layer` layers (created on first use).
    pub(crate) fn layer(&mut self, i: usize, n_layer: usize) -> &mut LayerCache {
        if self.layers.len() != n_layer {
            self.layers = vec![LayerCache::default(); n_layer];
        }
        &mut self.layers[i]
    }

    /// Records that `t` more positions are cached.
    pub(crate) fn advance(&mut self, t: usize) {
        self.len += t;
    }

    /// Bytes the cached keys and values occupy.
    pub fn bytes(&self) -> usize {
        let size = |t: &Tensor| t.numel() * t.dtype().size_in_bytes();
        self.layers.iter().filter_map(|l| l.kv.as_ref()).map(|(k, v)| size(k) + size(v)).sum()
    }
}
