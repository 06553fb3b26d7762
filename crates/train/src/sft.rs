//! Supervised fine-tuning data: conversations in, token ids and a loss mask out.
//!
//! A data file is JSONL, one example per line, in either of the two forms Hugging Face TRL
//! reads:
//!
//! ```text
//! {"messages": [{"role": "system", "content": "…"}, {"role": "user", "content": "…"},
//!               {"role": "assistant", "content": "…"}, …]}
//! {"prompt": "…", "completion": "…"}          (a user turn and the assistant's answer)
//! ```
//!
//! Each conversation is rendered with the model's own chat template, and the loss counts only
//! what the assistant says: the tokens of each assistant turn, its end-of-turn marker
//! included (`<|im_end|>`, `<end_of_turn>`), and nothing of the system prompt, the user's
//! turns or the template's scaffolding. The model still *reads* all of it; it is only not
//! asked to *predict* it.
//!
//! **Finding the assistant's tokens.** The template is a program, so instead of guessing its
//! format we ask it: for assistant turn `k`, `render(messages[..k], generation prompt)` is the
//! text before the reply and `render(messages[..=k])` the text through it. Their difference is
//! the reply, as characters; the token ids of the whole rendered text, laid end to end, tell
//! which tokens fall inside it. A template that does not render conversations prefix by prefix
//! is an error, not a silent guess.

use std::path::Path;
use yuanli_models::{ChatTemplate, Message};
use yuanli_tokenizer::{SpecialMode, Tokenizer};

/// What can be wrong with fine-tuning data; every variant names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum SftError {
    /// The file cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// What happened.
        message: String,
    },
    /// A line is not a valid example.
    #[error("{path}:{line}: {message}")]
    Line {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The chat template cannot be used to find the assistant's tokens.
    #[error("{0}")]
    Template(String),
}

/// The roles a message may have.
pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

/// Reads a JSONL file of conversations (`messages`, or `prompt` + `completion`). Blank lines
/// are skipped; every conversation needs at least one assistant turn.
pub fn read_conversations(path: &Path) -> Result<Vec<Vec<Message>>, SftError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SftError::Io { path: p.clone(), message: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |message: String| SftError::Line { path: p.clone(), line: i + 1, message };
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| err(format!("not JSON: {e}")))?;
        out.push(conversation(&v).map_err(err)?);
    }
    if out.is_empty() {
        return Err(SftError::Io { path: p, message: "no examples in the file".into() });
    }
    Ok(out)
}

/// One example's conversation.
fn conversation(v: &serde_json::Value) -> Result<Vec<Message>, String> {
    let str_field = |o: &serde_json::Value, k: &str| -> Result<String, String> {
        o.get(k)
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .ok_or_else(|| format!("\"{k}\" is missing or not a string"))
    };
    let msgs = if let Some(m) = v.get("messages") {
        let arr = m.as_array().ok_or("\"messages\" is not an array")?;
        let mut msgs = Vec::with_capacity(arr.len());
        for (j, m) in arr.iter().enumerate() {
            let role = str_field(m, "role").map_err(|e| format!("message {j}: {e}"))?;
            if !ROLES.contains(&role.as_str()) {
                return Err(format!("message {j}: unknown role {role:?} (roles are {})", ROLES.join(", ")));
            }
            msgs.push(Message::new(&role, &str_field(m, "content").map_err(|e| format!("message {j}: {e}"))?));
        }
        msgs
    } else if v.get("prompt").is_some() || v.get("completion").is_some() {
        vec![Message::new("user", &str_field(v, "prompt")?), Message::new("assistant", &str_field(v, "completion")?)]
    } else {
        return Err("an example needs \"messages\", or \"prompt\" and \"completion\"".into());
    };
    if !msgs.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant turn (nothing to learn from)".into());
    }
    Ok(msgs)
}

/// A tokenized example: `ids`, and for each position whether the loss counts the prediction
/// *of* that token (from the tokens before it).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Token ids of the rendered conversation (BOS first when the model takes one).
    pub ids: Vec<u32>,
    /// `target[i]`: `ids[i]` is part of an assistant turn.
    pub target: Vec<bool>,
}

impl Example {
    /// How many tokens the loss counts.
    pub fn n_targets(&self) -> usize {
        self.target.iter().filter(|&&t| t).count()
    }
}

/// How to turn conversations into examples for one model.
pub struct Formatter<'a> {
    /// The model's chat template.
    pub template: &'a ChatTemplate,
    /// Its tokenizer.
    pub tokenizer: &'a Tokenizer,
    /// The BOS token to put first, unless the template writes it itself.
    pub bos: Option<u32>,
    /// The text that ends a turn (`<|im_end|>`): the reply's span ends after it.
    pub end_of_turn: Option<String>,
}

impl Formatter<'_> {
    /// Renders and tokenizes one conversation, marking the assistant's tokens.
    pub fn example(&self, msgs: &[Message]) -> Result<Example, SftError> {
        let t = SftError::Template;
        let full = self.template.render(msgs, false).map_err(t)?;
        // Byte spans of the assistant's replies in `full`.
        let mut spans = Vec::new();
        for (k, _) in msgs.iter().enumerate().filter(|(_, m)| m.role == "assistant") {
            let before = self.template.render(&msgs[..k], true).map_err(t)?;
            let through = self.template.render(&msgs[..=k], false).map_err(t)?;
            if !through.starts_with(&before) || !full.starts_with(&through) {
                return Err(SftError::Template(
                    "the chat template does not render a conversation prefix by prefix, so the \
                     assistant's tokens cannot be found"
                        .into(),
                ));
            }
            let mut end = through.len();
            if let Some(eot) = &self.end_of_turn {
                if let Some(at) = through[before.len()..].find(eot.as_str()) {
                    end = before.len() + at + eot.len();
                }
            }
            spans.push((before.len(), end));
        }
        let ids = self.tokenizer.encode(&full, SpecialMode::Allow).map_err(|e| SftError::Template(e.to_string()))?;
        // Token i covers bytes [start, start + len) of `full`: its bytes laid end to end must
        // give the text back, or the spans would not line up.
        let mut target = Vec::with_capacity(ids.len() + 1);
        let mut at = 0;
        for &id in &ids {
            let len = self.tokenizer.token_bytes(id).map_or(0, <[u8]>::len);
            target.push(spans.iter().any(|&(s, e)| at >= s && at < e));
            at += len;
        }
        if at != full.len() {
            return Err(SftError::Template(format!(
                "the tokens of a rendered conversation give {at} bytes back for its {}: cannot align the loss mask",
                full.len()
            )));
        }
        let bos_in_text = self.bos.is_some_and(|b| ids.first() == Some(&b));
        let (ids, target) = match self.bos {
            Some(b) if !bos_in_text => ([vec![b], ids].concat(), [vec![false], target].concat()),
            _ => (ids, target),
        };
        Ok(Example { ids, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/gpt2.tiktoken");
        let mut t = yuanli_tokenizer::formats::load(&path, None).unwrap();
        let n = t.vocab_size() as u32;
        let specials: Vec<(String, u32)> = ["<|im_start|>", "<|im_end|>", "<bos>", "<start_of_turn>", "<end_of_turn>"]
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), n + i as u32))
            .collect();
        t.add_specials(&specials).unwrap();
        t
    }

    /// The text of the tokens the mask counts.
    fn counted(tok: &Tokenizer, ex: &Example) -> String {
        let ids: Vec<u32> = ex.ids.iter().zip(&ex.target).filter(|(_, &t)| t).map(|(&i, _)| i).collect();
        tok.decode(&ids).unwrap()
    }

    fn conversation() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "What is 2+2?"),
            Message::new("assistant", "4."),
            Message::new("user", "And 3+3?"),
            Message::new("assistant", "6, of course."),
        ]
    }

    #[test]
    fn the_mask_counts_only_the_assistants_turns_in_chatml() {
        let tok = tokenizer();
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "",
            "<|im_end|>",
        );
        let f = Formatter { template: &t, tokenizer: &tok, bos: None, end_of_turn: Some("<|im_end|>".into()) };
        let ex = f.example(&conversation()).unwrap();
        // the replies and their end-of-turn markers, nothing else
        assert_eq!(counted(&tok, &ex), "4.<|im_end|>6, of course.<|im_end|>");
        assert_eq!(ex.ids.len(), ex.target.len());
    }

    #[test]
    fn the_mask_counts_only_the_assistants_turns_in_a_gemma_template() {
        let tok = tokenizer();
        // Gemma's shape: BOS written by the template, the assistant called "model", the
        // system prompt folded into the first user turn
        let t = ChatTemplate::new(
            "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set sys = messages[0]['content'] + '\n\n' %}\
             {% set msgs = messages[1:] %}{% else %}{% set sys = '' %}{% set msgs = messages %}{% endif %}\
             {% for m in msgs %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n\
             {{ sys if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}\
             {% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
            "<bos>",
            "<eos>",
        );
        let bos = tok.special_id("<bos>");
        let f = Formatter { template: &t, tokenizer: &tok, bos, end_of_turn: Some("<end_of_turn>".into()) };
        let ex = f.example(&conversation()).unwrap();
        assert_eq!(counted(&tok, &ex), "4.<end_of_turn>6, of course.<end_of_turn>");
        assert_eq!(ex.ids.iter().filter(|&&i| Some(i) == bos).count(), 1, "the template's BOS is not doubled");
        assert_eq!(ex.ids[0], bos.unwrap());
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_file_and_line() {
        let dir = std::env::temp_dir().join(format!("yuanli-sft-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cases = [
            ("{\"messages\": [", "not JSON"),
            ("{\"messages\": [{\"role\": \"robot\", \"content\": \"hi\"}]}", "unknown role \"robot\""),
            ("{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}", "no assistant turn"),
            ("{\"text\": \"hi\"}", "needs \"messages\""),
            ("{\"prompt\": \"hi\"}", "\"completion\" is missing"),
        ];
        for (k, (line, want)) in cases.iter().enumerate() {
            let p = dir.join(format!("{k}.jsonl"));
            std::fs::write(&p, format!("{{\"prompt\": \"a\", \"completion\": \"b\"}}\n\n{line}\n")).unwrap();
            let err = read_conversations(&p).unwrap_err().to_string();
            assert!(err.contains(&format!("{k}.jsonl:3:")) && err.contains(want), "{err}");
        }
        let ok = dir.join("ok.jsonl");
        std::fs::write(&ok, "{\"prompt\": \"2+2=\", \"completion\": \"4\"}\n").unwrap();
        let c = read_conversations(&ok).unwrap();
        assert_eq!(c[0], vec![Message::new("user", "2+2="), Message::new("assistant", "4")]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
