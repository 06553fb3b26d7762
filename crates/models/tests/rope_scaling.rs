//! RoPE scaling against transformers: one tiny random LLaMA whose original context is 32 runs
//! 96 tokens under each RoPE variant (default, linear, dynamic NTK, YaRN, LLaMA 3), its config in
//! transformers 4's form (`rope_theta` + `rope_scaling`) and in transformers 5's
//! (`rope_parameters`), each written by that transformers version; our logits — from the
//! training path and from the inference engine — must be within 1e-4 of transformers' float64
//! ones at every position, the 64 past the original context included. Regenerate with
//! `tools/reference/rope_scaling_reference.py` (under both versions; its docstring says how).
//! The same models as GGUF files: `crates/cli/tests/quantize.rs`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use yuanli_models::{load_pretrained, Batch, CausalLm, Logits, Pretrained, RopeScaling, SessionOpts};
use yuanli_tensor::Tensor;

const VARIANTS: [&str; 5] = ["default", "linear", "dynamic", "yarn", "llama3"];

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

/// A loadable directory for variant `name`: its config, the shared weights, tiny_hf's tokenizer.
fn assemble(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yuanli-rope-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = data().join("rope_scaling");
    std::fs::copy(src.join(name).join("config.json"), dir.join("config.json")).unwrap();
    std::fs::copy(src.join("weights.safetensors"), dir.join("model.safetensors")).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(data().join("tiny_hf/llama").join(f), dir.join(f)).unwrap();
    }
    dir
}

struct Reference {
    ids: Vec<u32>,
    /// `(T, columns)` float64 logits.
    logits: Vec<Vec<f64>>,
    original: usize,
}

fn reference(name: &str) -> Reference {
    let path = data().join("rope_scaling").join(name).join("reference.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nums = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect::<Vec<f64>>();
    Reference {
        ids: nums(&r["input_ids"]).into_iter().map(|x| x as u32).collect(),
        logits: r["logits"].as_array().unwrap().iter().map(nums).collect(),
        original: r["original_context"].as_u64().unwrap() as usize,
    }
}

/// Largest |ours − reference| over every position and reference column; `ours` is `(T, V)`.
fn worst(ours: &[f32], r: &Reference, v: usize) -> f64 {
    let mut w = 0f64;
    for (t, row) in r.logits.iter().enumerate() {
        for (j, want) in row.iter().enumerate() {
            w = w.max((ours[t * v + j] as f64 - want).abs());
        }
    }
    w
}

/// The engine's logits of every position: the whole sequence in one step, or in two
/// (`split`: the second step attends to keys cached by the first).
fn engine_logits(m: &Pretrained, ids: &[u32], split: Option<usize>) -> Vec<f32> {
    let model = &m.model;
    let mut s = model.new_session(SessionOpts::tokens(256));
    let seq = s.add_sequence();
    let mut all = Vec::new();
    let cut = split.unwrap_or(ids.len());
    for (pos0, part) in [(0, &ids[..cut]), (cut, &ids[cut..])] {
        if part.is_empty() {
            continue;
        }
        let (mut batch, mut out) = (Batch::new(), Vec::new());
        batch.add_seq(seq, pos0, part, Logits::All);
        model.forward_batch(&mut s, &batch, &mut out).unwrap();
        all.extend(out);
    }
    all
}

fn check(variant: &str, form: &str) {
    let name = format!("{variant}_{form}");
    let dir = assemble(&name);
    let m = load_pretrained(&dir).unwrap_or_else(|e| panic!("{name}: {e}"));
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(m.model.config.rope_scaling.name(), variant, "{name}: the scaling read");
    assert_eq!(m.description.contains(&format!("RoPE {variant}")), variant != "default", "{}", m.description);
    let r = reference(&name);
    assert!(r.ids.len() >= 3 * r.original, "{name}: the reference runs past the original context");
    let v = m.model.config.vocab_size;
    let ids = &r.ids;
    let _g = yuanli_autograd::no_grad();
    let trained = m.model.forward(&Tensor::new(ids.clone(), &[1, ids.len()])).value().to_vec::<f32>();
    let w = worst(&trained, &r, v);
    assert!(w < 1e-4, "{name}: training path, largest |ours − float64 transformers| = {w}");
    let engine = engine_logits(&m, ids, None);
    let we = worst(&engine, &r, v);
    assert!(we < 1e-4, "{name}: engine, largest |ours − float64 transformers| = {we}");
    eprintln!("{name}: largest |ours − transformers float64|: training path {w:.1e}, engine {we:.1e}");
    // A prompt in two steps: the second step's queries see keys rotated in the first. Dynamic
    // NTK's angles follow the length of each step (as transformers' with a cache), so its
    // two-step logits are not a one-pass forward's: checked for the fixed scalings only.
    if variant != "dynamic" {
        let engine = engine_logits(&m, ids, Some(2 * r.original - 5));
        let w = worst(&engine, &r, v);
        assert!(w < 1e-4, "{name}: engine in two steps, largest |ours − float64 transformers| = {w}");
    }
}

#[test]
fn every_rope_variant_in_both_config_forms_matches_transformers_past_the_original_context() {
    for variant in VARIANTS {
        for form in ["v4", "v5"] {
            check(variant, form);
        }
    }
}

#[test]
fn the_references_differ_from_plain_rope_where_the_scaling_acts() {
    // A test that cannot fail is a defect: each scaled reference is far (> 1) from the default
    // one past the original context, so a scaling read as plain RoPE fails the check above.
    let plain = reference("default_v4");
    for variant in &VARIANTS[1..] {
        let r = reference(&format!("{variant}_v4"));
        let far = r.logits[r.original..]
            .iter()
            .zip(&plain.logits[r.original..])
            .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
            .fold(0.0, f64::max);
        assert!(far > 1.0, "{variant}: max |Δ| from plain RoPE past the context = {far}");
    }
}

/// `config.json` with `edit` applied to the yarn_v4 config, loaded.
fn load_edited(tag: &str, edit: impl Fn(&mut Value)) -> Result<Pretrained, String> {
    let dir = assemble("yarn_v4");
    let path = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
    let r = load_pretrained(&dir).map_err(|e| format!("{tag}: {e}"));
    std::fs::remove_dir_all(Path::new(&dir)).unwrap();
    r
}

#[test]
fn yarn_numbers_are_resolved_as_transformers_resolves_them() {
    let yarn = |m: &Pretrained| m.model.config.rope_scaling.clone();
    // defaults: β 32/1, temperature 0.1·ln 4 + 1, truncation on
    let m = load_edited("defaults", |_| {}).unwrap();
    let RopeScaling::Yarn { factor, original, beta_fast, beta_slow, attention_factor, truncate } = yarn(&m) else {
        panic!("not yarn: {:?}", yarn(&m))
    };
    assert_eq!((factor, original, beta_fast, beta_slow, truncate), (4.0, 32, 32.0, 1.0, true));
    assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-15);
    // mscale and mscale_all_dim: m(s, mscale) / m(s, mscale_all_dim)
    let m = load_edited("mscale", |v| {
        v["rope_scaling"]["mscale"] = 0.5.into();
        v["rope_scaling"]["mscale_all_dim"] = 2.0.into();
    })
    .unwrap();
    let RopeScaling::Yarn { attention_factor, .. } = yarn(&m) else { panic!() };
    let want = (0.05 * 4f64.ln() + 1.0) / (0.2 * 4f64.ln() + 1.0);
    assert!((attention_factor - want).abs() < 1e-15, "{attention_factor} vs {want}");
    // an explicit attention_factor wins
    let m = load_edited("explicit", |v| v["rope_scaling"]["attention_factor"] = 1.5.into()).unwrap();
    assert!(matches!(yarn(&m), RopeScaling::Yarn { attention_factor, .. } if attention_factor == 1.5));
    // without original_max_position_embeddings: max_position_embeddings
    let m = load_edited("no original", |v| {
        v["rope_scaling"].as_object_mut().unwrap().remove("original_max_position_embeddings");
    })
    .unwrap();
    assert!(matches!(yarn(&m), RopeScaling::Yarn { original: 128, .. }));
}

#[test]
fn rope_settings_we_cannot_honour_are_refused_by_name() {
    type Edit = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        ("longrope", Box::new(|v| v["rope_scaling"]["rope_type"] = "longrope".into()), "longrope"),
        (
            "llama3 without its factors",
            Box::new(|v| v["rope_scaling"]["rope_type"] = "llama3".into()),
            "low_freq_factor",
        ),
        (
            "linear without a factor",
            Box::new(|v| {
                v["rope_scaling"] = serde_json::json!({"rope_type": "linear"});
            }),
            "factor",
        ),
        ("a zero factor", Box::new(|v| v["rope_scaling"]["factor"] = 0.0.into()), "factor = 0"),
        (
            "two forms that disagree",
            Box::new(|v| {
                v["rope_parameters"] = serde_json::json!({"rope_type": "linear", "factor": 2.0});
            }),
            "disagree",
        ),
        (
            "two bases that disagree",
            Box::new(|v| {
                v["rope_parameters"] = serde_json::json!({"rope_type": "default", "rope_theta": 5.0});
            }),
            "rope_theta",
        ),
        (
            "two original contexts",
            Box::new(|v| v["original_max_position_embeddings"] = 64.into()),
            "original_max_position_embeddings",
        ),
        (
            "per layer type",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("rope_scaling");
                v["rope_parameters"] = serde_json::json!({"full_attention": {"rope_type": "default"}});
            }),
            "full_attention",
        ),
        ("partial rotary", Box::new(|v| v["partial_rotary_factor"] = 0.5.into()), "partial_rotary_factor"),
    ];
    for (tag, edit, needle) in cases {
        let err = load_edited(tag, edit).err().unwrap_or_else(|| panic!("{tag}: loaded"));
        assert!(err.contains(needle) && err.contains("config.json"), "{tag}: {err}");
    }
}
