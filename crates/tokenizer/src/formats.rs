//! Reading and writing tokenizer files.
//!
//! * **yuanli** (`.json`, written by `yuanli tokenizer train`):
//!   ```json
//!   {"format": "yuanli-bpe", "version": 1, "pattern": "gpt2",
//!    "merges": [[32, 116], [104, 101], ...], "specials": {"<|endoftext|>": 512}}
//!   ```
//!   Ids 0..=255 are the bytes, merge `i` (a pair of ids) creates id `256 + i`; `pattern` is
//!   `gpt2`, `gpt4`, `none` or a regex.
//! * **tiktoken** (`.tiktoken`): one line per token, `base64(bytes) rank`. The file holds
//!   neither the pattern nor the specials; the caller names them.
//! * **Hugging Face** `tokenizer.json` with a byte-level BPE model: tokens are written with
//!   GPT-2's byte ↔ character table ([`crate::byte_level`]), merges as `"a b"`.
//!
//! [`load`] picks the format from the file itself; every malformed file gives a
//! [`TokenizerError::Format`] naming the file and the problem.

use crate::byte_level;
use crate::error::{Result, TokenizerError};
use crate::pretokenize::Pattern;
use crate::tokenizer::Tokenizer;
use base64::Engine;
use serde_json::{json, Map, Value};
use std::path::Path;

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|error| TokenizerError::Io { path: path.to_path_buf(), error })
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|error| TokenizerError::Io { path: path.to_path_buf(), error })
}

fn bad(origin: &str, problem: impl Into<String>) -> TokenizerError {
    TokenizerError::Format { origin: origin.to_string(), problem: problem.into() }
}

/// Loads any supported file: `.tiktoken` files by extension (with `pattern`, default GPT-2's,
/// and `<|endoftext|>` as the id after the last rank, as in GPT-2), JSON files by content
/// (yuanli's format, or a Hugging Face `tokenizer.json`).
pub fn load(path: &Path, pattern: Option<Pattern>) -> Result<Tokenizer> {
    if path.extension().is_some_and(|e| e == "tiktoken") {
        return load_tiktoken_gpt2_style(path, pattern.unwrap_or(Pattern::Gpt2));
    }
    let text = read(path)?;
    let origin = path.display().to_string();
    let value: Value = serde_json::from_str(&text).map_err(|e| bad(&origin, format!("not valid JSON: {e}")))?;
    if value.get("format").and_then(Value::as_str) == Some("yuanli-bpe") {
        from_yuanli_json(&value, &origin)
    } else if value.get("model").is_some() {
        from_hf_json(&value, &origin)
    } else {
        Err(bad(
            &origin,
            "neither a yuanli tokenizer (\"format\": \"yuanli-bpe\") nor a Hugging Face \
             tokenizer.json (no \"model\")",
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// yuanli's own format
// ---------------------------------------------------------------------------------------------

/// The yuanli JSON document for a tokenizer (fails unless it has yuanli's layout, which
/// trained tokenizers have; save others as `tokenizer.json`).
pub fn to_yuanli_json(t: &Tokenizer) -> Result<Value> {
    let merges = match t.merge_list() {
        Some(m) if t.has_yuanli_layout() => m,
        _ => {
            return Err(TokenizerError::Invalid(
                "this tokenizer does not have yuanli's layout (ids 0..=255 the bytes, merge i \
                 making id 256+i); save it as a Hugging Face tokenizer.json instead"
                    .into(),
            ))
        }
    };
    let mut specials: Vec<&(String, u32)> = t.specials().iter().collect();
    specials.sort_by_key(|s| s.1);
    let specials: Map<String, Value> = specials.into_iter().map(|(name, id)| (name.clone(), json!(id))).collect();
    Ok(json!({
        "format": "yuanli-bpe",
        "version": 1,
        "pattern": t.pattern().name(),
        "merges": merges.iter().map(|&(a, b)| json!([a, b])).collect::<Vec<_>>(),
        "specials": specials,
    }))
}

/// Saves in yuanli's format (one merge per line, so the file reads and diffs well).
pub fn save_yuanli(t: &Tokenizer, path: &Path) -> Result<()> {
    let v = to_yuanli_json(t)?;
    let merges = v["merges"].as_array().map(Vec::as_slice).unwrap_or_default();
    let mut s = String::from("{\n");
    s += "  \"format\": \"yuanli-bpe\",\n  \"version\": 1,\n";
    s += &format!("  \"pattern\": {},\n", v["pattern"]);
    s += &format!("  \"specials\": {},\n", v["specials"]);
    s += "  \"merges\": [\n";
    for (i, m) in merges.iter().enumerate() {
        let comma = if i + 1 < merges.len() { "," } else { "" };
        s += &format!("    {m}{comma}\n");
    }
    s += "  ]\n}\n";
    write(path, &s)
}

/// Reads yuanli's format from a parsed JSON document (`origin` names it in errors).
pub fn from_yuanli_json(v: &Value, origin: &str) -> Result<Tokenizer> {
    let version = v.get("version").and_then(Value::as_u64);
    if version != Some(1) {
        return Err(bad(origin, format!("unsupported version {version:?} (expected 1)")));
    }
    let pattern =
        v.get("pattern").and_then(Value::as_str).ok_or_else(|| bad(origin, "missing \"pattern\" (a string)"))?;
    let list = v
        .get("merges")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(origin, "missing \"merges\" (an array of [id, id] pairs)"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let pair = m.as_array().filter(|p| p.len() == 2).and_then(|p| {
            let a = u32::try_from(p[0].as_u64()?).ok()?;
            let b = u32::try_from(p[1].as_u64()?).ok()?;
            Some((a, b))
        });
        merges.push(pair.ok_or_else(|| bad(origin, format!("merge {i} is not a pair of ids: {m}")))?);
    }
    let mut specials = Vec::new();
    if let Some(obj) = v.get("specials") {
        let obj = obj.as_object().ok_or_else(|| bad(origin, "\"specials\" must be an object {token: id}"))?;
        for (name, id) in obj {
            let id = id
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .ok_or_else(|| bad(origin, format!("special {name:?} has no valid id")))?;
            specials.push((name.clone(), id));
        }
    }
    Tokenizer::from_merges(&merges, Pattern::parse(pattern), &specials).map_err(|e| bad(origin, e.to_string()))
}

// ---------------------------------------------------------------------------------------------
// tiktoken
// ---------------------------------------------------------------------------------------------

/// Reads a `.tiktoken` ranks file: `ranks[r]` = the bytes of rank `r`.
pub fn read_tiktoken_ranks(path: &Path) -> Result<Vec<Vec<u8>>> {
    let text = read(path)?;
    parse_tiktoken_ranks(&text, &path.display().to_string())
}

/// Parses the text of a `.tiktoken` file (`origin` names it in errors).
pub fn parse_tiktoken_ranks(text: &str, origin: &str) -> Result<Vec<Vec<u8>>> {
    let mut ranks: Vec<Option<Vec<u8>>> = Vec::new();
    // ranks run from 0 without gaps, so none can reach the number of lines
    let n_lines = text.lines().count();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let lineno = n + 1;
        let mut parts = line.split_whitespace();
        let (Some(b64), Some(rank), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad(origin, format!("line {lineno}: expected \"base64 rank\"")));
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| bad(origin, format!("line {lineno}: bad base64 {b64:?}: {e}")))?;
        let rank: usize = rank.parse().map_err(|_| bad(origin, format!("line {lineno}: bad rank {rank:?}")))?;
        if rank >= n_lines {
            return Err(bad(origin, format!("line {lineno}: rank {rank}, but the file has only {n_lines} lines")));
        }
        if rank >= ranks.len() {
            ranks.resize(rank + 1, None);
        }
        if ranks[rank].replace(bytes).is_some() {
            return Err(bad(origin, format!("line {lineno}: rank {rank} appears twice")));
        }
    }
    ranks.into_iter().enumerate().map(|(r, b)| b.ok_or_else(|| bad(origin, format!("rank {r} is missing")))).collect()
}

/// Loads a `.tiktoken` file with the given pattern and specials.
pub fn load_tiktoken(path: &Path, pattern: Pattern, specials: &[(String, u32)]) -> Result<Tokenizer> {
    let ranks = read_tiktoken_ranks(path)?;
    let origin = path.display().to_string();
    Tokenizer::from_ranks(ranks, pattern, specials).map_err(|e| bad(&origin, e.to_string()))
}

/// Loads a `.tiktoken` file the way GPT-2 uses one: `<|endoftext|>` is the id after the
/// last rank (50256 for `gpt2.tiktoken`).
pub fn load_tiktoken_gpt2_style(path: &Path, pattern: Pattern) -> Result<Tokenizer> {
    let ranks = read_tiktoken_ranks(path)?;
    let eot = vec![("<|endoftext|>".to_string(), ranks.len() as u32)];
    let origin = path.display().to_string();
    Tokenizer::from_ranks(ranks, pattern, &eot).map_err(|e| bad(&origin, e.to_string()))
}

/// Writes a `.tiktoken` ranks file (ordinary tokens; ids are the ranks).
pub fn save_tiktoken(t: &Tokenizer, path: &Path) -> Result<()> {
    let mut s = String::new();
    for id in 0..t.vocab_size() as u32 {
        if t.is_special(id) {
            continue;
        }
        let bytes = t.token_bytes(id).unwrap_or_default();
        s += &base64::engine::general_purpose::STANDARD.encode(bytes);
        s += &format!(" {id}\n");
    }
    write(path, &s)
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json
// ---------------------------------------------------------------------------------------------

/// The Hugging Face `tokenizer.json` document for a tokenizer (a tiktoken tokenizer's merges
/// are recovered from its ranks, see [`Tokenizer::recover_merges`]).
pub fn to_hf_json(t: &Tokenizer) -> Result<Value> {
    let merges = t.recover_merges().ok_or_else(|| {
        TokenizerError::Invalid("no merge list reproduces this tokenizer's ranks; it cannot be a tokenizer.json".into())
    })?;
    let name = |id: u32| byte_level::encode_bytes(t.token_bytes(id).unwrap_or_default());
    let mut vocab = Map::new();
    for id in 0..t.vocab_size() as u32 {
        if !t.is_special(id) {
            vocab.insert(name(id), json!(id));
        }
    }
    let merges: Vec<Value> = merges.iter().map(|&(a, b)| json!(format!("{} {}", name(a), name(b)))).collect();
    let mut specials: Vec<&(String, u32)> = t.specials().iter().collect();
    specials.sort_by_key(|s| s.1);
    let added: Vec<Value> = specials
        .into_iter()
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = |use_regex: bool| {
        json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true,
               "use_regex": use_regex})
    };
    let pre_tokenizer = match t.pattern() {
        Pattern::Gpt2 => byte_level(true),
        Pattern::None => byte_level(false),
        Pattern::Smollm => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        p => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": p.regex().unwrap_or_default()},
             "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]}),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": byte_level(true),
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": t.ignore_merges(),
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// Saves as a Hugging Face `tokenizer.json`.
pub fn save_hf(t: &Tokenizer, path: &Path) -> Result<()> {
    let v = to_hf_json(t)?;
    let s = serde_json::to_string_pretty(&v).map_err(|e| TokenizerError::Invalid(format!("cannot write JSON: {e}")))?;
    write(path, &s)
}

/// Which pattern a Hugging Face pre-tokenizer stands for.
fn hf_pattern(pre: &Value, origin: &str) -> Result<Pattern> {
    let kind = pre.get("type").and_then(Value::as_str);
    let use_regex = |v: &Value| v.get("use_regex").and_then(Value::as_bool).unwrap_or(true);
    let prefix = |v: &Value| v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false);
    match kind {
        Some("ByteLevel") if prefix(pre) => Err(bad(origin, "ByteLevel with add_prefix_space = true is not supported")),
        Some("ByteLevel") => Ok(if use_regex(pre) { Pattern::Gpt2 } else { Pattern::None }),
        Some("Sequence") => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(origin, "Sequence pre-tokenizer without \"pretokenizers\""))?;
            let mut pattern = None;
            let mut saw_byte_level = false;
            let mut digits_first = false;
            for p in parts {
                match p.get("type").and_then(Value::as_str) {
                    Some("Digits")
                        if pattern.is_none()
                            && !saw_byte_level
                            && p.get("individual_digits").and_then(Value::as_bool) == Some(true) =>
                    {
                        digits_first = true;
                    }
                    Some("Split") if pattern.is_none() => {
                        let re = p
                            .pointer("/pattern/Regex")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad(origin, "Split pre-tokenizer without a Regex"))?;
                        let behavior = p.get("behavior").and_then(Value::as_str);
                        let invert = p.get("invert").and_then(Value::as_bool).unwrap_or(false);
                        if behavior != Some("Isolated") || invert {
                            return Err(bad(origin, "only Split with behavior Isolated and invert false is supported"));
                        }
                        pattern = Some(Pattern::parse(re));
                    }
                    Some("ByteLevel") if !saw_byte_level && !prefix(p) => {
                        saw_byte_level = true;
                        if use_regex(p) {
                            if pattern.is_some() {
                                return Err(bad(origin, "two regex splits are not supported"));
                            }
                            pattern = Some(if digits_first { Pattern::Smollm } else { Pattern::Gpt2 });
                        }
                    }
                    other => return Err(bad(origin, format!("unsupported pre-tokenizer in Sequence: {other:?}"))),
                }
            }
            if !saw_byte_level {
                return Err(bad(origin, "not a byte-level tokenizer (no ByteLevel step)"));
            }
            Ok(pattern.unwrap_or(Pattern::None))
        }
        other => Err(bad(origin, format!("unsupported pre_tokenizer {other:?}; byte-level BPE needs ByteLevel"))),
    }
}

/// Reads a Hugging Face `tokenizer.json` (byte-level BPE models only).
pub fn from_hf_json(v: &Value, origin: &str) -> Result<Tokenizer> {
    let model = v.get("model").ok_or_else(|| bad(origin, "missing \"model\""))?;
    if model.get("type").and_then(Value::as_str) != Some("BPE") {
        return Err(bad(origin, "model.type is not \"BPE\""));
    }
    if v.get("normalizer").is_some_and(|n| !n.is_null()) {
        return Err(bad(origin, "normalizers are not supported"));
    }
    let pattern = match v.get("pre_tokenizer") {
        Some(p) if !p.is_null() => hf_pattern(p, origin)?,
        _ => return Err(bad(origin, "no pre_tokenizer: not a byte-level tokenizer")),
    };
    // specials (added tokens)
    let mut specials = Vec::new();
    for a in v.get("added_tokens").and_then(Value::as_array).into_iter().flatten() {
        let content = a.get("content").and_then(Value::as_str);
        let id = a.get("id").and_then(Value::as_u64).and_then(|x| u32::try_from(x).ok());
        match (content, id) {
            (Some(c), Some(id)) => specials.push((c.to_string(), id)),
            _ => return Err(bad(origin, format!("added token without content or id: {a}"))),
        }
    }
    // vocabulary
    let vocab_obj =
        model.get("vocab").and_then(Value::as_object).ok_or_else(|| bad(origin, "model.vocab is not an object"))?;
    let mut vocab: Vec<Option<Vec<u8>>> = Vec::new();
    let mut by_name = std::collections::HashMap::with_capacity(vocab_obj.len());
    for (name, id) in vocab_obj {
        let id = id
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .filter(|&x| (x as usize) < vocab_obj.len() + specials.len())
            .ok_or_else(|| bad(origin, format!("vocab entry {name:?} has no valid id")))?;
        by_name.insert(name.as_str(), id);
        if specials.iter().any(|s| s.1 == id) {
            continue; // a special that is also listed in the vocab
        }
        let bytes = byte_level::decode_str(name)
            .ok_or_else(|| bad(origin, format!("vocab entry {name:?} is not in GPT-2's byte-level alphabet")))?;
        if vocab.len() <= id as usize {
            vocab.resize(id as usize + 1, None);
        }
        vocab[id as usize] = Some(bytes);
    }
    // merges: "a b" strings or ["a", "b"] arrays
    let list =
        model.get("merges").and_then(Value::as_array).ok_or_else(|| bad(origin, "model.merges is not an array"))?;
    let mut merges = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => s.split_once(' ').unwrap_or((s.as_str(), "")),
            Value::Array(p) if p.len() == 2 => (p[0].as_str().unwrap_or_default(), p[1].as_str().unwrap_or_default()),
            _ => return Err(bad(origin, format!("merge {i} is malformed: {m}"))),
        };
        let (Some(&x), Some(&y)) = (by_name.get(a), by_name.get(b)) else {
            return Err(bad(origin, format!("merge {i} ({m}) names a token not in the vocab")));
        };
        merges.push((x, y));
    }
    let mut t =
        Tokenizer::from_vocab_merges(vocab, merges, pattern, &specials).map_err(|e| bad(origin, e.to_string()))?;
    t.set_ignore_merges(model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false));
    Ok(t)
}

/// Builds a tokenizer from a byte-level vocabulary and merge list written as strings, as
/// GGUF files and `vocab.json` + `merges.txt` store them: `tokens[id]` in GPT-2's byte
/// alphabet (`"Ġthe"`), `merges[i]` = `"Ġ t"`. Tokens listed in `specials` by id are taken
/// as written (not byte-level decoded).
pub fn from_byte_level_strings(
    tokens: &[String],
    merges: &[String],
    pattern: Pattern,
    specials: &[(String, u32)],
) -> Result<Tokenizer> {
    let mut vocab = Vec::with_capacity(tokens.len());
    let mut by_name = std::collections::HashMap::with_capacity(tokens.len());
    for (id, tok) in tokens.iter().enumerate() {
        by_name.insert(tok.as_str(), id as u32);
        if specials.iter().any(|s| s.1 as usize == id) {
            vocab.push(None);
            continue;
        }
        let bytes = byte_level::decode_str(tok).ok_or_else(|| {
            TokenizerError::Invalid(format!(
                "token {id} {tok:?} is not in GPT-2's byte-level alphabet (mark it special?)"
            ))
        })?;
        vocab.push(Some(bytes));
    }
    let mut pairs = Vec::with_capacity(merges.len());
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').unwrap_or((m.as_str(), ""));
        match (by_name.get(a), by_name.get(b)) {
            (Some(&x), Some(&y)) => pairs.push((x, y)),
            _ => return Err(TokenizerError::Invalid(format!("merge {i} {m:?} names a token not in the vocabulary"))),
        }
    }
    Tokenizer::from_vocab_merges(vocab, pairs, pattern, specials)
}
