//! A tiny random model for tests (of this crate, the server, anything built on [`Model`]):
//! printable ASCII as a character vocabulary, a 2-layer LLaMA with grouped-query attention,
//! and a toy chat template. Random weights answer nonsense, but deterministic nonsense — which
//! is all a test of batching, caching or streaming needs.

use yuanli_models::{ChatTemplate, Llama, LlamaConfig};
use yuanli_nn::ParamStore;
use yuanli_tensor::{Rng, RopeLayout};

use crate::{Model, Vocab};

/// The toy chat template: `<role>content|` per message, then `<assistant>`.
pub const TEMPLATE: &str = "{% for m in messages %}<{{ m.role }}>{{ m.content }}|{% endfor %}\
                            {% if add_generation_prompt %}<assistant>{% endif %}";

/// The random model, context `ctx`; `eos`: characters that end generation.
pub fn char_model(ctx: usize, eos: &[char]) -> Model {
    let chars: Vec<char> = (32u8..127).map(char::from).collect();
    let cfg = LlamaConfig {
        vocab_size: chars.len(),
        hidden_size: 32,
        intermediate_size: 48,
        n_layer: 2,
        n_head: 4,
        n_kv_head: 2,
        head_dim: 8,
        rope_theta: 10_000.0,
        rope_scaling: Default::default(),
        rope_layout: RopeLayout::HalfSplit,
        rms_norm_eps: 1e-5,
        max_seq_len: ctx,
        tie_word_embeddings: true,
        attention_bias: false,
        extras: Default::default(),
    };
    let mut store = ParamStore::frozen();
    let llama = Llama::new(cfg, &mut store).expect("the tiny config is valid");
    let mut rng = Rng::new(4);
    for p in store.params() {
        let v: Vec<f32> = (0..p.numel()).map(|_| 0.6 * rng.normal() as f32).collect();
        store.set_values(p, &v);
    }
    let eos = eos.iter().filter_map(|e| chars.iter().position(|c| c == e)).map(|i| i as u32).collect();
    Model::from_parts(Box::new(llama), Vocab::Chars(chars), Some(ChatTemplate::new(TEMPLATE, "", "")), eos)
}
