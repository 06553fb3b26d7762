//! `yuanli quantize`: rewrite a model as a GGUF file in one of llama.cpp's quantization
//! presets (q8_0, q6_k, q5_k_m, q5_1, q5_0, q4_k_m, q4_1, q4_0), or in f16 / f32 (f32 turns a
//! checkpoint into a GGUF file as it is, or dequantizes a quantized one).
//!
//! Three inputs:
//! - a `.gguf` file of any architecture: every metadata key is copied in order (only
//!   `general.file_type`, and `general.quantization_version` when quantizing, change) and
//!   every tensor is rewritten;
//! - a Hugging Face LLaMA-family directory: written as llama.cpp's converter writes it
//!   (`llama`, `qwen2` or `qwen3`, the q/k rows reordered for llama.cpp's RoPE in `llama`);
//! - a checkpoint directory from `yuanli train` (a GPT): written in llama.cpp's `gpt2` layout
//!   ([`yuanli_models::load::gpt_gguf_name_map`]) with its vocabulary in `tokenizer.ggml.*`.
//!
//! Which tensor gets which type is llama.cpp's rule ([`storage_type`]): only 2-D weights are
//! quantized; the output matrix keeps more bits (Q6_K, or Q8_0); the "_M" mixes give `attn_v`
//! and `ffn_down` Q6_K in the first and last eighth of the layers and every third between;
//! K-quants fall back to 32-weight types where a row is not whole 256-weight blocks. With the
//! encoders of `yuanli_tensor::quant` (llama.cpp's reference quantizers, written out) the
//! result is byte for byte the file llama.cpp's `llama-quantize` writes from the same input —
//! `crates/cli/tests/quantize.rs` checks every preset against it. Each row is quantized
//! independently, so a row is a whole number of blocks. A tensor already in its target type is
//! copied byte for byte (dequantizing and quantizing again could only add error).
//!
//! Bits per weight = 8 · (tensor bytes) / (weights): f32 32, f16 16, q8_0 8.5 (32 int8 + an
//! f16 scale per block), q6_k 6.56, q5_1 6, q5_k 5.5, q5_0 5.5 (a fifth bit per weight), q4_1
//! 5 (32 nibbles + f16 scale and minimum), q4_k 4.5, q4_0 4.5; a preset's file is a mix (see
//! the report `yuanli quantize` prints).

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use yuanli_infer::Vocab;
use yuanli_models::gguf::{GgufFile, GgufWriter, Value};
use yuanli_models::load::{gguf_name_map, gpt_gguf_name_map, llama_config_from_gguf, CHAR_TOKENIZER_MODEL, GPT2_ARCH};
use yuanli_models::peft::adapter_deltas;
use yuanli_tensor::quant::{quantize_row, QuantType};
use yuanli_tokenizer::{byte_level::encode_bytes, Pattern, Tokenizer};
use yuanli_train::pretrain::Trainee;

/// `yuanli quantize`
#[derive(Args, Debug)]
pub(crate) struct QuantizeArgs {
    /// A .gguf file (any architecture), a Hugging Face LLaMA/Qwen2/Mistral directory, or a
    /// checkpoint directory from `yuanli train`.
    #[arg(long = "in", value_name = "PATH")]
    input: PathBuf,
    /// llama.cpp's preset: q8_0, q6_k, q5_k_m, q5_1, q5_0, q4_k_m, q4_1, q4_0 (the output
    /// matrix gets Q6_K or Q8_0; the _m mixes give attn_v and ffn_down Q6_K in some layers;
    /// K-quants fall back to Q5_0/Q5_1/Q8_0 where rows are not whole 256-weight blocks), or
    /// f16 / f32 for every matrix.
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_preset)]
    ty: Preset,
    /// Every matrix in the preset's base type (no extra bits for the output, attn_v, ffn_down),
    /// as llama-quantize --pure.
    #[arg(long)]
    pure: bool,
    /// Merge this LoRA adapter (a PEFT directory) into the weights before writing them: the
    /// output is the fine-tuned model, standalone.
    #[arg(long, value_name = "DIR")]
    lora: Option<PathBuf>,
    /// The GGUF file to write.
    #[arg(long, value_name = "FILE.gguf")]
    out: PathBuf,
    /// A UTF-8 text file: measure the perplexity of the input and of the output on it.
    #[arg(long, value_name = "TEXT")]
    eval_file: Option<PathBuf>,
    /// Context length of each perplexity chunk (the second half of each is scored).
    #[arg(long, default_value_t = 512)]
    ctx: usize,
    /// Perplexity chunks to score (0 = the whole file).
    #[arg(long, default_value_t = 4)]
    chunks: usize,
}

/// What `--type` names: llama.cpp's presets (`enum llama_ftype`, whose code goes into
/// `general.file_type`). `base` is the type of most matrices; the K-quant "_M" mixes give some
/// tensors more bits (see [`storage_type`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Preset {
    name: &'static str,
    base: QuantType,
    file_type: u32,
    mixed: bool,
}

const PRESETS: [Preset; 10] = [
    Preset { name: "f32", base: QuantType::F32, file_type: 0, mixed: false },
    Preset { name: "f16", base: QuantType::F16, file_type: 1, mixed: false },
    Preset { name: "q8_0", base: QuantType::Q8_0, file_type: 7, mixed: false },
    Preset { name: "q6_k", base: QuantType::Q6K, file_type: 18, mixed: false },
    Preset { name: "q5_k_m", base: QuantType::Q5K, file_type: 17, mixed: true },
    Preset { name: "q5_1", base: QuantType::Q5_1, file_type: 9, mixed: false },
    Preset { name: "q5_0", base: QuantType::Q5_0, file_type: 8, mixed: false },
    Preset { name: "q4_k_m", base: QuantType::Q4K, file_type: 15, mixed: true },
    Preset { name: "q4_1", base: QuantType::Q4_1, file_type: 3, mixed: false },
    Preset { name: "q4_0", base: QuantType::Q4_0, file_type: 2, mixed: false },
];

fn parse_preset(s: &str) -> Result<Preset, String> {
    PRESETS.iter().find(|p| p.name.eq_ignore_ascii_case(s)).copied().ok_or_else(|| {
        format!("unknown type {s:?}; one of {}", PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "))
    })
}

/// Where a tensor sits among its kind, for the "_M" mixes: which of the `n` `attn_v` (or
/// `ffn_down`) matrices it is, counted in layer order.
#[derive(Clone, Copy, Debug, Default)]
struct Position {
    i: usize,
    n: usize,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third one
/// between, get more bits in `attn_v` and `ffn_down` (where quantization error hurts most).
fn use_more_bits(p: Position) -> bool {
    let (i, n) = (p.i, p.n);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama.cpp's quantizer (`llama_tensor_get_type`, no importance matrix) gives a
/// tensor `name` of row-major `shape`:
/// - only 2-D `…weight` tensors are quantized (norms, biases and 1-D tensors keep `input`);
/// - f32/f16 targets store every matrix in that type;
/// - the output matrix (`output.weight`, or `token_embd.weight` when the head is tied to it)
///   is Q6_K, or Q8_0 where its rows are not whole blocks of the target or the target is Q8_0;
/// - in `q4_k_m`/`q5_k_m`, `attn_v` and `ffn_down` are Q6_K in the layers [`use_more_bits`]
///   picks (a fused `attn_qkv` gets one step more: Q5_K / Q6_K);
/// - unless `pure`, which skips the two rules above;
/// - finally, a K-quant whose 256-weight blocks do not fit the rows (`cols % 256 ≠ 0`, e.g.
///   SmolLM2's 576) falls back to a 32-weight type of about the same size — Q4_K → Q5_0,
///   Q5_K → Q5_1, Q6_K → Q8_0 — and a matrix that does not fit that either is stored f16.
fn storage_type(
    p: Preset,
    name: &str,
    shape: &[usize],
    input: QuantType,
    tied: bool,
    pos: Position,
    pure: bool,
) -> QuantType {
    let cols = match shape {
        [_, cols] if name.ends_with("weight") && !name.contains("_norm.weight") => *cols,
        _ => return input,
    };
    let mut ty = p.base;
    if matches!(p.base, QuantType::F32 | QuantType::F16) {
        return ty;
    }
    if !pure {
        let is_output = name == "output.weight" || (tied && name == "token_embd.weight");
        if is_output {
            ty = if !cols.is_multiple_of(ty.block_len()) || ty == QuantType::Q8_0 {
                QuantType::Q8_0
            } else {
                QuantType::Q6K
            };
        } else if p.mixed && name.contains("attn_qkv.weight") {
            ty = if p.base == QuantType::Q4K { QuantType::Q5K } else { QuantType::Q6K };
        } else if p.mixed && (name.contains("attn_v.weight") || name.contains("ffn_down")) && use_more_bits(pos) {
            ty = QuantType::Q6K;
        }
    }
    if !cols.is_multiple_of(ty.block_len()) {
        ty = match ty {
            QuantType::Q4K => QuantType::Q5_0,
            QuantType::Q5K => QuantType::Q5_1,
            QuantType::Q6K => QuantType::Q8_0,
            other => other,
        };
    }
    if !cols.is_multiple_of(ty.block_len()) {
        ty = QuantType::F16;
    }
    ty
}

/// The layer number in a GGUF tensor name `blk.N.…`.
fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// [`Position`] of each tensor (by index): `attn_v`/`attn_qkv` and `ffn_down` matrices counted
/// separately, in layer order, as llama.cpp counts them.
fn positions(names: &[&str]) -> Vec<Position> {
    let kind = |n: &str| {
        if n.contains("attn_v.weight") || n.contains("attn_qkv.weight") {
            Some(0)
        } else if n.contains("ffn_down") && n.ends_with("weight") {
            Some(1)
        } else {
            None
        }
    };
    let mut out = vec![Position::default(); names.len()];
    for k in 0..2 {
        let mut idx: Vec<usize> = (0..names.len()).filter(|&i| kind(names[i]) == Some(k)).collect();
        idx.sort_by_key(|&i| (layer_of(names[i]).unwrap_or(0), i));
        let n = idx.len();
        for (rank, &i) in idx.iter().enumerate() {
            out[i] = Position { i: rank, n };
        }
    }
    out
}

/// Metadata entries in file order.
type Metadata = Vec<(String, Value)>;

/// One tensor as written: name, row-major shape, type, bytes.
struct Written {
    name: String,
    shape: Vec<usize>,
    ty: QuantType,
    bytes: Vec<u8>,
}

/// Encodes `values` (row-major `shape`) as `ty`.
fn encode(name: &str, shape: &[usize], values: &[f32], ty: QuantType) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(ty.bytes_for(values.len()).unwrap_or(0));
    if !values.len().is_multiple_of(ty.block_len()) || quantize_row(ty, values, &mut bytes).is_none() {
        bail!("tensor {name} {shape:?}: cannot be stored as {ty}");
    }
    Ok(bytes)
}

fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} tensor {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    bar
}

/// Sets `key` to `v`, in place if present, else at the end.
fn set(meta: &mut Metadata, key: &str, v: Value) {
    match meta.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = v,
        None => meta.push((key.into(), v)),
    }
}

/// Rewrites every tensor of a GGUF file; copies the metadata, changing `general.file_type`
/// (and `general.quantization_version`, 2 as llama.cpp writes, when quantizing).
fn from_gguf(path: &Path, target: Preset, pure: bool, lora: Option<&Path>) -> Result<(Metadata, Vec<Written>)> {
    let f = GgufFile::open(path).with_context(|| format!("opening {}", path.display()))?;
    // An adapter to merge: its updates by GGUF tensor name.
    let deltas: HashMap<String, Vec<f32>> = match lora {
        None => HashMap::new(),
        Some(dir) => {
            let c =
                llama_config_from_gguf(&f).with_context(|| format!("{}: merging a LoRA adapter", path.display()))?;
            let names: HashMap<String, String> = gguf_name_map(&c).into_iter().collect();
            let interleaved = c.rope_layout == yuanli_tensor::RopeLayout::Interleaved;
            let d = adapter_deltas(dir, &c, interleaved).with_context(|| format!("reading {}", dir.display()))?;
            d.into_iter().map(|(ours, v)| (names.get(&ours).cloned().unwrap_or(ours), v)).collect()
        }
    };
    let mut meta: Metadata = f.metadata().to_vec();
    if target.base.block_len() > 1 {
        set(&mut meta, "general.quantization_version", Value::U32(2));
    }
    set(&mut meta, "general.file_type", Value::U32(target.file_type));
    let names: Vec<&str> = f.tensors().iter().map(|t| t.name.as_str()).collect();
    let tied = !names.contains(&"output.weight");
    let pos = positions(&names);
    let bar = progress(f.tensors().len());
    let mut out = Vec::with_capacity(f.tensors().len());
    for (info, &pos) in f.tensors().iter().zip(&pos) {
        bar.set_message(info.name.clone());
        let shape = info.shape();
        let ty = storage_type(target, &info.name, &shape, info.ty, tied, pos, pure);
        let delta = deltas.get(&info.name);
        let bytes = if info.ty == ty && delta.is_none() {
            f.tensor_bytes(info).to_vec()
        } else {
            let (_, mut values) = f.tensor_f32(&info.name)?;
            if let Some(d) = delta {
                values.iter_mut().zip(d).for_each(|(w, d)| *w += d);
            }
            encode(&info.name, &shape, &values, ty)?
        };
        out.push(Written { name: info.name.clone(), shape, ty, bytes });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok((meta, out))
}

/// A string array value.
fn strings(v: Vec<String>) -> Value {
    Value::Array(8, v.into_iter().map(Value::String).collect())
}

/// llama.cpp's `tokenizer.ggml.*` keys for a byte-level BPE tokenizer: tokens as GPT-2
/// characters (a special as its text), types (1 normal, 3 control), merges `"a b"`.
fn bpe_metadata(t: &Tokenizer, origin: &str) -> Result<Vec<(String, Value)>> {
    let pre = match t.pattern() {
        Pattern::Gpt2 => "gpt-2",
        Pattern::Smollm => "smollm",
        other => bail!("{origin}: pre-tokenizer {other:?} has no llama.cpp name (GPT-2's and SmolLM2's do)"),
    };
    let n = t.vocab_size() as u32;
    let bytes = |id: u32| t.token_bytes(id).unwrap_or_default();
    let text = |id: u32| match t.is_special(id) {
        true => String::from_utf8_lossy(bytes(id)).into_owned(),
        false => encode_bytes(bytes(id)),
    };
    let tokens: Vec<String> = (0..n).map(text).collect();
    let types: Vec<Value> = (0..n).map(|id| Value::I32(if t.is_special(id) { 3 } else { 1 })).collect();
    let merges = t.recover_merges().with_context(|| format!("{origin}: the tokenizer's merges cannot be recovered"))?;
    let merges: Vec<String> =
        merges.iter().map(|&(a, b)| format!("{} {}", encode_bytes(bytes(a)), encode_bytes(bytes(b)))).collect();
    Ok(vec![
        ("tokenizer.ggml.model".to_string(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(5, types)),
        ("tokenizer.ggml.merges".to_string(), strings(merges)),
    ])
}

/// `tokenizer.ggml.bos_token_id`, `eos_token_id` and `add_bos_token`.
fn special_ids_metadata(bos: Option<u32>, eos: Option<u32>, add_bos: bool) -> Vec<(String, Value)> {
    let mut m = Vec::new();
    if let Some(b) = bos {
        m.push(("tokenizer.ggml.bos_token_id".to_string(), Value::U32(b)));
    }
    if let Some(e) = eos {
        m.push(("tokenizer.ggml.eos_token_id".to_string(), Value::U32(e)));
    }
    m.push(("tokenizer.ggml.add_bos_token".to_string(), Value::Bool(add_bos)));
    m
}

/// A `yuanli train` checkpoint as a llama.cpp `gpt2` GGUF file.
fn from_checkpoint(dir: &Path, target: Preset, pure: bool) -> Result<(Metadata, Vec<Written>)> {
    let (t, cfg) = Trainee::load(dir).with_context(|| format!("{} is not a yuanli checkpoint", dir.display()))?;
    let m = &cfg.model;
    let origin = dir.display().to_string();
    let vocab = Vocab::of_data(&cfg.data_dir)?;
    let name = dir.file_name().map_or_else(|| "yuanli-gpt".into(), |n| n.to_string_lossy().into_owned());
    let mut meta: Metadata = vec![
        ("general.architecture".into(), Value::String(GPT2_ARCH.into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(target.file_type)),
        ("gpt2.context_length".into(), Value::U32(m.block_size as u32)),
        ("gpt2.embedding_length".into(), Value::U32(m.n_embd as u32)),
        ("gpt2.block_count".into(), Value::U32(m.n_layer as u32)),
        ("gpt2.feed_forward_length".into(), Value::U32(4 * m.n_embd as u32)),
        ("gpt2.attention.head_count".into(), Value::U32(m.n_head as u32)),
        ("gpt2.attention.layer_norm_epsilon".into(), Value::F32(1e-5)),
    ];
    let n_tokens = match &vocab {
        Vocab::Chars(chars) => {
            meta.push(("tokenizer.ggml.model".into(), Value::String(CHAR_TOKENIZER_MODEL.into())));
            meta.push(("tokenizer.ggml.tokens".into(), strings(chars.iter().map(char::to_string).collect())));
            chars.len()
        }
        Vocab::Bpe(tok) => {
            meta.extend(bpe_metadata(tok, &origin)?);
            let eot = tok.special_id("<|endoftext|>");
            meta.extend(special_ids_metadata(eot, eot, false));
            tok.vocab_size()
        }
    };
    if n_tokens != m.vocab_size {
        bail!("{origin}: the model has vocab_size {} but its data's vocabulary has {n_tokens} tokens", m.vocab_size);
    }
    let all: Vec<f32> = t.store.value_arena().to_vec::<f32>();
    if target.base.block_len() > 1 {
        meta.push(("general.quantization_version".into(), Value::U32(2)));
    }
    if m.positions != yuanli_models::Positions::Learned {
        bail!(
            "{origin}: positions = {:?}; llama.cpp's gpt2 architecture has learned positions only",
            m.positions.name()
        );
    }
    let names = gpt_gguf_name_map(m);
    let out = write_f32_tensors(&names, target, pure, &mut |ours| {
        let p = t.store.get(ours).with_context(|| format!("{origin}: no parameter {ours}"))?;
        let mut shape = p.shape.clone();
        if ours == "wte.weight" {
            shape[0] = m.vocab_size; // the real rows; the padding up to Vp is never used
        }
        let values = all[p.offset..p.offset + shape.iter().product::<usize>()].to_vec();
        Ok((shape, values))
    })?;
    Ok((meta, out))
}

/// A tensor's row-major shape and values.
type ShapedValues = (Vec<usize>, Vec<f32>);

/// The f32 tensors of a model under their GGUF names (`names`: ours → llama.cpp's), each stored
/// in the type the preset gives it; `tensor(ours)` gives a tensor's shape and values.
fn write_f32_tensors(
    names: &[(String, String)],
    target: Preset,
    pure: bool,
    tensor: &mut dyn FnMut(&str) -> Result<ShapedValues>,
) -> Result<Vec<Written>> {
    let theirs_names: Vec<&str> = names.iter().map(|(_, t)| t.as_str()).collect();
    let tied = !theirs_names.contains(&"output.weight");
    let pos = positions(&theirs_names);
    let bar = progress(names.len());
    let mut out = Vec::with_capacity(names.len());
    for ((ours, theirs), &pos) in names.iter().zip(&pos) {
        bar.set_message(theirs.clone());
        let (shape, values) = tensor(ours)?;
        let ty = storage_type(target, theirs, &shape, QuantType::F32, tied, pos, pure);
        let bytes = encode(theirs, &shape, &values, ty)?;
        out.push(Written { name: theirs.clone(), shape, ty, bytes });
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Whether `dir` is a Hugging Face model directory (a `config.json` naming a `model_type`).
fn is_hf_dir(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("config.json")).is_ok_and(|s| s.contains("\"model_type\""))
}

/// A Hugging Face LLaMA-family directory (safetensors + `config.json` + `tokenizer.json`) as the
/// GGUF file llama.cpp's converter would write: architecture `llama` (LLaMA, Mistral; the q/k
/// rows reordered for its interleaved RoPE) or `qwen2`, hyper-parameters under `{arch}.*`,
/// the byte-level BPE vocabulary, special ids and chat template under `tokenizer.*`.
fn from_hf_dir(dir: &Path, target: Preset, pure: bool, lora: Option<&Path>) -> Result<(Metadata, Vec<Written>)> {
    use yuanli_models::load::{interleave_rope_rows, load_pretrained_with, LoadOptions};
    let origin = dir.display().to_string();
    let p = load_pretrained_with(dir, LoadOptions::exact()).with_context(|| format!("loading {origin}"))?;
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let c = &p.model.config;
    let arch = match config["model_type"].as_str().unwrap_or_default() {
        "qwen2" => "qwen2",
        "qwen3" => "qwen3",
        _ => "llama",
    };
    let name = dir.file_name().map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned());
    let u = |x: usize| Value::U32(x as u32);
    let mut meta: Metadata = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name)),
        ("general.file_type".into(), Value::U32(target.file_type)),
    ];
    if target.base.block_len() > 1 {
        meta.push(("general.quantization_version".into(), Value::U32(2)));
    }
    for (k, v) in [
        ("context_length", u(c.max_seq_len)),
        ("embedding_length", u(c.hidden_size)),
        ("block_count", u(c.n_layer)),
        ("feed_forward_length", u(c.intermediate_size)),
        ("attention.head_count", u(c.n_head)),
        ("attention.head_count_kv", u(c.n_kv_head)),
        ("attention.key_length", u(c.head_dim)),
        ("attention.value_length", u(c.head_dim)),
        ("rope.dimension_count", u(c.head_dim)),
        ("rope.freq_base", Value::F32(c.rope_theta as f32)),
        ("attention.layer_norm_rms_epsilon", Value::F32(c.rms_norm_eps as f32)),
        ("vocab_size", u(c.vocab_size)),
    ] {
        meta.push((format!("{arch}.{k}"), v));
    }
    let (rope_meta, rope_freqs) =
        yuanli_models::load::gguf_rope_form(c, arch).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    meta.extend(rope_meta);
    if p.tokenizer.vocab_size() != c.vocab_size {
        bail!(
            "{origin}: tokenizer.json has {} tokens, config.json says vocab_size {}",
            p.tokenizer.vocab_size(),
            c.vocab_size
        );
    }
    meta.extend(bpe_metadata(&p.tokenizer, &origin)?);
    meta.extend(special_ids_metadata(p.bos, p.eos.first().copied(), p.add_bos));
    let tc = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok();
    let tc: serde_json::Value = tc.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    if let Some(t) = tc["chat_template"].as_str() {
        meta.push(("tokenizer.chat_template".into(), Value::String(t.into())));
    }
    let deltas: HashMap<String, Vec<f32>> = match lora {
        Some(a) => {
            adapter_deltas(a, c, false).with_context(|| format!("reading {}", a.display()))?.into_iter().collect()
        }
        None => HashMap::new(),
    };
    let mut names = gguf_name_map(c);
    // LLaMA 3's scaling travels as a tensor, first as in llama.cpp's converter.
    const FREQS: &str = "rope_freqs.weight";
    if rope_freqs.is_some() {
        names.insert(0, (FREQS.to_string(), FREQS.to_string()));
    }
    let out = write_f32_tensors(&names, target, pure, &mut |ours| {
        if let (FREQS, Some(f)) = (ours, &rope_freqs) {
            return Ok((vec![f.len()], f.clone()));
        }
        let param = p.store.get(ours).with_context(|| format!("{origin}: no parameter {ours}"))?;
        let shape = param.shape.clone();
        let mut values: Vec<f32> = p.store.value_of(param).contiguous().to_vec::<f32>();
        if let Some(d) = deltas.get(ours) {
            values.iter_mut().zip(d).for_each(|(w, d)| *w += d);
        }
        if let (true, Some(heads)) = (arch == "llama", yuanli_models::load::rope_row_heads(c, ours)) {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            values = interleave_rope_rows(&values, heads, c.head_dim, cols, false);
        }
        Ok((shape, values))
    })?;
    Ok((meta, out))
}

/// Bytes on disk of the input: the GGUF file, or a directory's safetensors files.
fn input_size(path: &Path) -> u64 {
    if !path.is_dir() {
        return std::fs::metadata(path).map_or(0, |m| m.len());
    }
    let files = std::fs::read_dir(path).into_iter().flatten().flatten();
    files
        .filter(|e| e.path().extension().is_some_and(|x| x == "safetensors"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Weights and tensor bytes of a GGUF file, and how many tensors of each type it has.
fn census(f: &GgufFile) -> (usize, usize, BTreeMap<String, usize>) {
    let mut types = BTreeMap::new();
    let (mut weights, mut bytes) = (0, 0);
    for info in f.tensors() {
        weights += info.numel();
        bytes += info.size;
        *types.entry(info.ty.name().to_string()).or_insert(0) += 1;
    }
    (weights, bytes, types)
}

/// Perplexity of the model at `path` on `text` (in its own tokens), and the chunks scored.
fn perplexity(path: &Path, text: &str, ctx: usize, chunks: usize) -> Result<(f64, usize)> {
    let model = crate::llm_cmd::open_model(path, false)?;
    if ctx > model.lm().context_len() {
        bail!("--ctx {ctx} exceeds the context of {} ({})", path.display(), model.lm().context_len());
    }
    let ids = model.encode(text, false)?;
    if ids.len() < ctx {
        bail!("the eval file has {} tokens, fewer than one chunk of --ctx {ctx}", ids.len());
    }
    let n = if chunks > 0 { (ids.len() / ctx).min(chunks) } else { ids.len() / ctx };
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} chunk {pos}/{len} {msg} [{elapsed} < {eta}]")
            .expect("a valid progress template"),
    );
    let p = yuanli_models::eval::perplexity(model.lm(), &ids, model.bos_token(), ctx, chunks, &mut |_, ppl| {
        bar.inc(1);
        bar.set_message(format!("ppl {ppl:.4}"));
    })?;
    bar.finish_and_clear();
    Ok((p.ppl, p.chunk_nll.len()))
}

pub(crate) fn run(args: &QuantizeArgs) -> Result<()> {
    if args.ctx < 4 {
        bail!("--ctx must be at least 4");
    }
    let text = match &args.eval_file {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("reading {} as UTF-8 text", p.display()))?),
        None => None,
    };
    if args.input.canonicalize().ok().is_some_and(|i| args.out.canonicalize().ok() == Some(i)) {
        bail!("--out {} is the input; write to another file", args.out.display());
    }
    let lora = args.lora.as_deref();
    let (meta, tensors) = if is_hf_dir(&args.input) {
        from_hf_dir(&args.input, args.ty, args.pure, lora)?
    } else if args.input.is_dir() {
        if lora.is_some() {
            bail!("--lora merges into a LLaMA-family model (GGUF or Hugging Face), not a GPT checkpoint");
        }
        from_checkpoint(&args.input, args.ty, args.pure)?
    } else {
        from_gguf(&args.input, args.ty, args.pure, lora)?
    };
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.set(&k, v);
    }
    for t in &tensors {
        w.add_tensor(&t.name, &t.shape, t.ty, t.bytes.clone());
    }
    w.write(&args.out).with_context(|| format!("writing {}", args.out.display()))?;
    drop(w);

    // Read it back: every tensor must come back with the name, shape, type and bytes written.
    let back = GgufFile::open(&args.out).with_context(|| format!("reopening {}", args.out.display()))?;
    if back.tensors().len() != tensors.len() {
        bail!("{}: {} tensors read back, {} written", args.out.display(), back.tensors().len(), tensors.len());
    }
    for (t, info) in tensors.iter().zip(back.tensors()) {
        if info.name != t.name || info.shape() != t.shape || info.ty != t.ty || back.tensor_bytes(info) != t.bytes {
            bail!("{}: tensor {} does not read back as written", args.out.display(), t.name);
        }
    }
    drop(tensors);

    let mb = |b: u64| b as f64 / 1e6;
    let (in_size, out_size) = (input_size(&args.input), std::fs::metadata(&args.out)?.len());
    let (weights, bytes, types) = census(&back);
    println!(
        "{} ({:.2} MB) -> {} ({:.2} MB): {:.1}% of the size",
        args.input.display(),
        mb(in_size),
        args.out.display(),
        mb(out_size),
        100.0 * out_size as f64 / in_size.max(1) as f64
    );
    println!(
        "{:.2} M weights, {:.3} bits per weight; tensors: {}",
        weights as f64 / 1e6,
        8.0 * bytes as f64 / weights.max(1) as f64,
        types.iter().map(|(t, n)| format!("{n} × {t}")).collect::<Vec<_>>().join(", ")
    );
    if let Some(text) = text {
        let (before, n) = perplexity(&args.input, &text, args.ctx, args.chunks)
            .with_context(|| format!("perplexity of {}", args.input.display()))?;
        let (after, _) = perplexity(&args.out, &text, args.ctx, args.chunks)
            .with_context(|| format!("perplexity of {}", args.out.display()))?;
        println!(
            "perplexity ({n} chunks of {}, second halves scored): input {before:.4}, {} {after:.4} ({:+.3}%)",
            args.ctx,
            args.ty.name,
            100.0 * (after - before) / before
        );
    }
    Ok(())
}
