//! `yuanli quantize`, end to end through the built binary: a tiny trained GPT survives the trip
//! to GGUF (greedy generation gives the same tokens), a real GGUF re-quantizes to q8_0 with its
//! metadata intact, and every preset writes, tensor for tensor, the types and bytes llama.cpp's
//! own quantizer writes (testdata/quantize_presets.json, from
//! tools/reference/quantize_reference.py).

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;
use yuanli_models::gguf::{GgufFile, GgufWriter, Value};
use yuanli_tensor::QuantType;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A fresh empty directory under the system's temp dir.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("yuanli-quantize-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temp dir");
    dir
}

/// Runs `yuanli ARGS`, asserting success; returns stdout.
fn yuanli(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().expect("run yuanli");
    assert!(
        out.status.success(),
        "yuanli {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Prepares Tempest with `tokenizer` and trains a 2-layer, 64-wide GPT for a few steps;
/// returns the checkpoint directory.
fn tiny_checkpoint(dir: &Path, tokenizer: &str, positions: &str) -> PathBuf {
    let text = repo().join("data/shakespeare/tempest_gut.txt");
    let data = dir.join("data");
    let s = |p: &Path| p.display().to_string();
    yuanli(&["prepare", "--tokenizer", tokenizer, "--input", &s(&text), "--out", &s(&data)]);
    let config = format!(
        "data_dir = {:?}\nout_dir = {:?}\nbatch_size = 4\nmax_iters = 8\nlearning_rate = 3e-3\nmin_lr = 3e-4\n\
         warmup_iters = 2\neval_interval = 100\neval_iters = 1\nseed = 7\n\n\
         [model]\nvocab_size = 0\nblock_size = 32\nn_layer = 2\nn_head = 2\nn_embd = 64\npositions = {positions:?}\n",
        s(&data),
        s(&dir.join("run"))
    );
    let cfg = dir.join("tiny.toml");
    std::fs::write(&cfg, config).expect("write the config");
    yuanli(&["train", "--config", &s(&cfg)]);
    dir.join("run/checkpoint")
}

/// The greedy continuation of `prompt` by `model`.
fn greedy(model: &Path, prompt: &str) -> Vec<u64> {
    let out = yuanli(&[
        "generate",
        "--model",
        &model.display().to_string(),
        "--prompt",
        prompt,
        "--max-new-tokens",
        "5",
        "--temperature",
        "0",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("generate --json prints JSON");
    v["token_ids"].as_array().expect("token_ids").iter().map(|x| x.as_u64().expect("an id")).collect()
}

/// A GPT trained with ALiBi (or any scheme but learned positions) generates, and is refused by
/// the exports whose formats have learned positions only, with the reason named.
#[test]
fn a_gpt_with_alibi_generates_and_is_not_exported_as_gpt2() {
    let dir = scratch("alibi");
    let ckpt = tiny_checkpoint(&dir, "char", "alibi");
    assert_eq!(greedy(&ckpt, "ROMEO: ").len(), 5);
    let gguf = dir.join("alibi.gguf");
    let o = Command::new(env!("CARGO_BIN_EXE_yuanli"))
        .args(["quantize", "--in", &ckpt.display().to_string(), "--type", "f32", "--out", &gguf.display().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("positions = \"alibi\""), "{err}");
    assert!(!gguf.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Quantizes a checkpoint and checks greedy generation from the GGUF against the checkpoint;
/// returns how many of the 5 tokens agree.
fn roundtrip(tokenizer: &str, ty: &str, name: &str) -> usize {
    let dir = scratch(name);
    let ckpt = tiny_checkpoint(&dir, tokenizer, "learned");
    let gguf = dir.join(format!("tiny.{ty}.gguf"));
    let report =
        yuanli(&["quantize", "--in", &ckpt.display().to_string(), "--type", ty, "--out", &gguf.display().to_string()]);
    assert!(report.contains("bits per weight"), "{report}");
    let f = GgufFile::open(&gguf).expect("the output opens");
    assert_eq!(f.get_str("general.architecture").unwrap(), "gpt2");
    assert!(f.tensor_info("output.weight").is_err(), "the head is tied");
    // token_embd holds the real vocabulary only (V rows), not the padding to a multiple of 64.
    let v = f.get_strings("tokenizer.ggml.tokens").unwrap().len();
    assert_eq!(f.tensor_info("token_embd.weight").unwrap().shape(), vec![v, 64]);
    assert_eq!(f.tensor_info("blk.1.ffn_up.weight").unwrap().shape(), vec![256, 64]);
    assert_eq!(f.tensor_info("blk.1.ffn_up.bias").unwrap().ty, QuantType::F32);
    let want = greedy(&ckpt, "ROMEO: ");
    let got = greedy(&gguf, "ROMEO: ");
    assert_eq!(got.len(), 5);
    let same = want.iter().zip(&got).filter(|(a, b)| a == b).count();
    let _ = std::fs::remove_dir_all(&dir);
    same
}

#[test]
fn char_gpt_q8_0_generates_like_the_checkpoint() {
    // q8_0 keeps each weight within half a step of 1/127 of its block's largest magnitude;
    // on a tiny model that leaves the greedy choices unchanged.
    assert_eq!(roundtrip("char", "q8_0", "char"), 5);
}

#[test]
fn bpe_gpt_f32_generates_exactly_like_the_checkpoint() {
    // f32 is lossless, so this checks the layout and the byte-level BPE tokenizer's trip
    // through tokenizer.ggml.* exactly.
    let tiktoken = repo().join("data/gpt2.tiktoken");
    assert_eq!(roundtrip(&tiktoken.display().to_string(), "f32", "bpe"), 5);
}

#[test]
fn smollm2_q4_1_requantizes_to_q8_0() {
    let src = repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !src.exists() {
        // Under CI a missing model fails the test: .ci/run fetches it.
        assert!(std::env::var("CI").map_or(true, |v| v != "true"), "{} is absent under CI=true", src.display());
        println!("SKIPPED: {} is missing (tools/fetch_models.sh fetches it)", src.display());
        return;
    }
    let dir = scratch("smollm2");
    let out = dir.join("smollm2.q8_0.gguf");
    yuanli(&["quantize", "--in", &src.display().to_string(), "--type", "q8_0", "--out", &out.display().to_string()]);
    let (a, b) = (GgufFile::open(&src).unwrap(), GgufFile::open(&out).unwrap());
    assert_eq!(a.tensors().len(), b.tensors().len());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.shape(), y.shape(), "{}", x.name);
        let want = if x.shape().len() == 2 { QuantType::Q8_0 } else { QuantType::F32 };
        assert_eq!(y.ty, want, "{}", x.name);
    }
    let strip = |f: &GgufFile| -> Vec<(String, Value)> {
        f.metadata().iter().filter(|(k, _)| k != "general.file_type").cloned().collect()
    };
    assert!(strip(&a) == strip(&b), "metadata other than general.file_type must be copied unchanged");
    assert_eq!(b.get("general.file_type"), Some(&Value::U32(7)));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The xorshift32 values of tools/reference/quantize_reference.py: tensor `t` of `shape`.
fn reference_values(t: usize, shape: &[usize]) -> Vec<f32> {
    let (n, cols) = (shape.iter().product::<usize>(), shape[shape.len() - 1]);
    let mut s: u32 = 0x9E37_79B9 ^ (t as u32 + 1);
    (0..n)
        .map(|k| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let mut x = ((s >> 8) as f32 / 16_777_216.0 - 0.5) * (-((k / cols % 5) as f32)).exp2();
            if k % 97 == 0 {
                x *= 8.0;
            }
            if t.is_multiple_of(2) && k < 256 {
                x = 0.0;
            }
            x
        })
        .collect()
}

/// The reference script's tiny LLaMA as an F32 GGUF: hidden 256, 4 heads, 2 KV heads,
/// feed-forward 320, vocabulary 320; norms all ones.
fn reference_model(path: &Path, n_layer: usize, tied: bool) {
    let (d, kv, ff, vocab) = (256, 128, 320, 320);
    let mut names: Vec<(String, Vec<usize>)> =
        vec![("token_embd.weight".into(), vec![vocab, d]), ("output_norm.weight".into(), vec![d])];
    if !tied {
        names.push(("output.weight".into(), vec![vocab, d]));
    }
    for i in 0..n_layer {
        for (part, shape) in [
            ("attn_norm", vec![d]),
            ("attn_q", vec![d, d]),
            ("attn_k", vec![kv, d]),
            ("attn_v", vec![kv, d]),
            ("attn_output", vec![d, d]),
            ("ffn_norm", vec![d]),
            ("ffn_gate", vec![ff, d]),
            ("ffn_up", vec![ff, d]),
            ("ffn_down", vec![d, ff]),
        ] {
            names.push((format!("blk.{i}.{part}.weight"), shape));
        }
    }
    let mut w = GgufWriter::new();
    for (k, v) in [
        ("general.architecture", Value::String("llama".into())),
        ("llama.context_length", Value::U32(512)),
        ("llama.embedding_length", Value::U32(d as u32)),
        ("llama.block_count", Value::U32(n_layer as u32)),
        ("llama.feed_forward_length", Value::U32(ff as u32)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("general.file_type", Value::U32(0)),
    ] {
        w.set(k, v);
    }
    for (t, (name, shape)) in names.iter().enumerate() {
        let x = if shape.len() == 2 { reference_values(t, shape) } else { vec![1.0; shape[0]] };
        w.add_tensor(name, shape, QuantType::F32, x.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    w.write(path).expect("write the reference model");
}

#[test]
fn every_preset_writes_what_llama_cpp_writes() {
    let want: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("crates/cli/testdata/quantize_presets.json")).expect("testdata"),
    )
    .expect("JSON");
    let dir = scratch("presets");
    for (model, spec) in want["models"].as_object().expect("models") {
        let n_layer = spec["n_layer"].as_u64().expect("n_layer") as usize;
        let src = dir.join(format!("{model}.f32.gguf"));
        reference_model(&src, n_layer, spec["tied"].as_bool().expect("tied"));
        for (preset, rows) in spec["presets"].as_object().expect("presets") {
            let out = dir.join(format!("{model}.{preset}.gguf"));
            yuanli(&[
                "quantize",
                "--in",
                &src.display().to_string(),
                "--type",
                preset,
                "--out",
                &out.display().to_string(),
            ]);
            let f = GgufFile::open(&out).expect("the output opens");
            let rows = rows.as_array().expect("rows");
            assert_eq!(f.tensors().len(), rows.len(), "{model} {preset}: tensor count");
            for row in rows {
                let name = row["name"].as_str().expect("name");
                let info = f.tensor_info(name).unwrap_or_else(|_| panic!("{model} {preset}: no {name}"));
                assert_eq!(info.ty.name(), row["type"].as_str().expect("type"), "{model} {preset}: type of {name}");
                let digest: String = Sha256::digest(f.tensor_bytes(info)).iter().map(|b| format!("{b:02x}")).collect();
                assert_eq!(
                    digest,
                    row["sha256"].as_str().expect("sha256"),
                    "{model} {preset}: bytes of {name} ({})",
                    info.ty
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The exact-path logits of `m` for `ids`, `(T, V)` flat.
fn logits(m: &yuanli_models::Pretrained, ids: &[u32]) -> Vec<f32> {
    m.model.forward(&yuanli_tensor::Tensor::new(ids.to_vec(), &[1, ids.len()])).value().to_vec::<f32>()
}

/// The largest `|a − b|`.
fn max_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "logits shape");
    a.iter().zip(b).map(|(p, q)| (*p as f64 - q).abs()).fold(0.0, f64::max)
}

#[test]
fn a_hugging_face_directory_becomes_a_gguf_file_with_the_same_logits() {
    use yuanli_models::load::{load_pretrained_with, LoadOptions};
    let dir = scratch("hf");
    // LLaMA (q/k rows reordered for llama.cpp's interleaved RoPE, untied head), Qwen2
    // (biases, half-split RoPE kept) and Qwen3 (QK-norm)
    for name in ["llama", "qwen2", "qwen3"] {
        let src = repo().join("crates/models/testdata/tiny_hf").join(name);
        let out = dir.join(format!("{name}.f32.gguf"));
        yuanli(&["quantize", "--in", &src.display().to_string(), "--type", "f32", "--out", &out.display().to_string()]);
        let (a, b) = (
            load_pretrained_with(&src, LoadOptions::exact()).unwrap(),
            load_pretrained_with(&out, LoadOptions::exact()).unwrap(),
        );
        let ids = a.tokenizer.encode("To be, or not to be", yuanli_tokenizer::SpecialMode::AsText).unwrap();
        assert_eq!(b.tokenizer.encode("To be, or not to be", yuanli_tokenizer::SpecialMode::AsText).unwrap(), ids);
        assert_eq!((a.bos, &a.eos, a.add_bos), (b.bos, &b.eos, b.add_bos), "{name}: special ids");
        assert!(b.chat_template.is_some(), "{name}: the chat template is carried over");
        let want: Vec<f64> = logits(&a, &ids).into_iter().map(f64::from).collect();
        let worst = max_diff(&logits(&b, &ids), &want);
        assert!(worst < 1e-4, "{name}: logits differ by {worst}");
        if name == "llama" {
            // a PEFT adapter (Hugging Face row order) on the GGUF model (llama.cpp's q/k row
            // order) gives PEFT's logits: lora_B of q_proj and k_proj is reordered on loading
            let peft = repo().join("crates/models/testdata/peft/from_peft");
            let r: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(peft.join("reference.json")).unwrap()).unwrap();
            let mut b = b;
            b.store.set_trainable(|n, _| n.contains(".lora_"));
            yuanli_models::peft::load_adapter(&peft, &mut b.model, &mut b.store).unwrap();
            let ids: Vec<u32> = r["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let want: Vec<f64> = r["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()))
                .collect();
            let worst = max_diff(&logits(&b, &ids), &want);
            assert!(worst < 1e-4, "PEFT adapter on the GGUF model: logits differ from PEFT's by {worst}");
            // merged into the weights by `quantize --lora`, from the Hugging Face directory and
            // from the GGUF file: a standalone model with PEFT's logits
            for (input, tag) in [(&src, "hf"), (&out, "gguf")] {
                let merged = dir.join(format!("merged-{tag}.gguf"));
                let (i, a, o) = (input.display().to_string(), peft.display().to_string(), merged.display().to_string());
                yuanli(&["quantize", "--in", &i, "--lora", &a, "--type", "f32", "--out", &o]);
                let m = load_pretrained_with(&merged, LoadOptions::exact()).unwrap();
                let worst = max_diff(&logits(&m, &ids), &want);
                assert!(worst < 1e-4, "adapter merged from {tag}: logits differ from PEFT's by {worst}");
            }
        }
        // and a quantized preset of it loads and runs
        let q = dir.join(format!("{name}.q8_0.gguf"));
        yuanli(&["quantize", "--in", &src.display().to_string(), "--type", "q8_0", "--out", &q.display().to_string()]);
        assert_eq!(GgufFile::open(&q).unwrap().get("general.file_type"), Some(&Value::U32(7)));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The RoPE-scaled tiny models of `crates/models/testdata/rope_scaling` as GGUF files: `yuanli
/// quantize` writes each scaling as llama.cpp's own converter does (the `llama.rope.*` keys and
/// the `rope_freqs.weight` tensor recorded in llama_cpp_gguf.json by
/// tools/reference/rope_scaling_reference.py), and the file gives transformers' float64 logits
/// at every position — 64 of the 96 past the original context — on the exact path and in the
/// engine. Dynamic NTK has no GGUF form (llama.cpp's converter drops it in silence): refused.
#[test]
fn rope_scalings_travel_to_gguf_as_llama_cpp_writes_them() {
    use yuanli_models::load::{load_pretrained_with, LoadOptions};
    use yuanli_models::{Batch, CausalLm, KvType, Logits, SessionOpts};
    let data = repo().join("crates/models/testdata");
    let root = data.join("rope_scaling");
    let llama_cpp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("llama_cpp_gguf.json")).unwrap()).unwrap();
    let dir = scratch("rope");
    for variant in ["default", "linear", "dynamic", "yarn", "llama3"] {
        let src = dir.join(variant);
        std::fs::create_dir_all(&src).unwrap();
        std::fs::copy(root.join(format!("{variant}_v4/config.json")), src.join("config.json")).unwrap();
        std::fs::copy(root.join("weights.safetensors"), src.join("model.safetensors")).unwrap();
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            std::fs::copy(data.join("tiny_hf/llama").join(f), src.join(f)).unwrap();
        }
        let out = dir.join(format!("{variant}.gguf"));
        let args =
            ["quantize", "--in", &src.display().to_string(), "--type", "f32", "--out", &out.display().to_string()];
        if variant == "dynamic" {
            let o = Command::new(env!("CARGO_BIN_EXE_yuanli")).args(args).output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!o.status.success() && err.contains("dynamic NTK") && err.contains("no GGUF form"), "{err}");
            continue;
        }
        yuanli(&args);
        // the RoPE metadata and tensor, as llama.cpp's converter writes them
        let f = GgufFile::open(&out).unwrap();
        let want = &llama_cpp["variants"][variant];
        let ours: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).filter(|k| k.contains(".rope.")).collect();
        let theirs: Vec<&str> =
            want["metadata"].as_object().unwrap().keys().map(|k| k.as_str()).filter(|k| k.contains(".rope.")).collect();
        let (mut a, mut b) = (ours.clone(), theirs.clone());
        a.sort();
        b.sort();
        assert_eq!(a, b, "{variant}: RoPE keys");
        for (k, v) in want["metadata"].as_object().unwrap() {
            let got = f.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
            if let Some(x) = v.as_f64() {
                assert_eq!(got, x, "{variant}: {k}");
            } else {
                assert_eq!(f.get_str(k).unwrap(), v.as_str().unwrap(), "{variant}: {k}");
            }
        }
        match want["rope_freqs"].as_array() {
            Some(theirs) => {
                let (_, ours) = f.tensor_f32("rope_freqs.weight").unwrap();
                assert_eq!(ours.len(), theirs.len(), "{variant}: rope_freqs");
                for (a, b) in ours.iter().zip(theirs) {
                    let b = b.as_f64().unwrap();
                    assert!((*a as f64 - b).abs() <= 1e-6 * b, "{variant}: rope_freqs {ours:?} vs {theirs:?}");
                }
            }
            None => assert!(f.tensor_info("rope_freqs.weight").is_err(), "{variant}: no rope_freqs tensor"),
        }
        // transformers' logits, from the file
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(root.join(format!("{variant}_v4/reference.json"))).unwrap())
                .unwrap();
        let ids: Vec<u32> = r["input_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let rows: Vec<Vec<f64>> = r["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect())
            .collect();
        let worst = |ours: &[f32], v: usize| {
            let mut w = 0f64;
            for (t, row) in rows.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    w = w.max((ours[t * v + j] as f64 - x).abs());
                }
            }
            w
        };
        let exact = load_pretrained_with(&out, LoadOptions::exact()).unwrap();
        let v = exact.model.config.vocab_size;
        let w = worst(&logits(&exact, &ids), v);
        assert!(w < 1e-4, "{variant}: GGUF, exact path: largest |ours − float64 transformers| = {w}");
        // the engine on the weights read in place (f32 here), with f32 keys and values (the
        // fast path's default f16 cache alone moves logits by ~1e-3)
        let fast = load_pretrained_with(&out, LoadOptions::fast()).unwrap();
        let mut s = fast.model.new_session(SessionOpts { kv_type: KvType::F32, ..SessionOpts::tokens(256) });
        let seq = s.add_sequence();
        let (mut batch, mut got) = (Batch::new(), Vec::new());
        batch.add_seq(seq, 0, &ids, Logits::All);
        fast.model.forward_batch(&mut s, &batch, &mut got).unwrap();
        let w = worst(&got, v);
        assert!(w < 1e-4, "{variant}: GGUF, engine: largest |ours − float64 transformers| = {w}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `yuanli perplexity --llama-cpp-activations` runs a quantized model with its activations
/// rounded as llama.cpp rounds them: a nearby but different figure (F32 weights: the same).
#[test]
fn perplexity_with_llama_cpp_activation_rounding() {
    let dir = scratch("ggml-acts");
    let src = repo().join("crates/models/testdata/tiny_hf/llama");
    let text = repo().join("data/shakespeare/tempest_gut.txt");
    let ppl = |model: &Path, flag: bool| -> f64 {
        let (m, t) = (model.display().to_string(), text.display().to_string());
        let mut args = vec!["perplexity", "--model", &m, "--file", &t, "--ctx", "32", "--chunks", "4", "--json"];
        if flag {
            args.push("--llama-cpp-activations");
        }
        let v: serde_json::Value = serde_json::from_str(yuanli(&args).trim()).unwrap();
        v["perplexity"].as_f64().unwrap()
    };
    for (ty, same) in [("f32", true), ("q8_0", false)] {
        let out = dir.join(format!("tiny.{ty}.gguf"));
        yuanli(&["quantize", "--in", &src.display().to_string(), "--type", ty, "--out", &out.display().to_string()]);
        let (a, b) = (ppl(&out, false), ppl(&out, true));
        assert!(a.is_finite() && b.is_finite());
        if same {
            assert_eq!(a, b, "{ty}: F32 matrices meet the activations as they are");
        } else {
            assert!(a != b && (a / b - 1.0).abs() < 0.05, "{ty}: {a} vs {b}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
