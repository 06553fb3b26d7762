//! Structured output: sampling that can only produce text a grammar accepts.
//!
//! A JSON schema (or "any JSON object") is compiled by [`llguidance`] into a grammar over
//! *bytes*; llguidance also knows every token's bytes (a trie of the vocabulary), so at each
//! step it can say which tokens keep the text a prefix of some valid document. The sampling
//! integration is ours and small:
//!
//! ```text
//! logits z ∈ ℝ^V,  allowed set A_t ⊆ V from the grammar state after tokens y_<t
//! z'_i = z_i  if i ∈ A_t,  −∞ otherwise          (Constraint::mask)
//! y_t ~ sampler(z')                                (greedy, temperature, top-p: unchanged)
//! grammar state ← advance(y_t)                      (Constraint::commit)
//! ```
//!
//! Masking before the sampler means temperature and top-p renormalise over the allowed tokens
//! only — the constrained distribution is p(y_t | y_<t, y_t ∈ A_t). Once the document is
//! complete the grammar allows only the end-of-sequence tokens, so generation ends there.
//!
//! [`Grammars`] is built once per model (the token trie takes a moment for a 50k vocabulary);
//! each request gets its own [`Constraint`].

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{InferenceCapabilities, TokEnv, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;

use crate::{InferError, Model, Result, Vocab};

/// Which documents a constrained generation may produce.
#[derive(Clone, Debug, PartialEq)]
pub enum Format {
    /// Any JSON object (OpenAI's `{"type":"json_object"}`).
    JsonObject,
    /// A JSON document valid under this JSON schema.
    JsonSchema(Value),
}

/// The model's vocabulary as llguidance sees it: a trie of token bytes, special tokens marked.
struct VocabEnv {
    trie: TokTrie,
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Greedy longest-match tokenization; llguidance uses it only for text a grammar forces,
    /// and any tokenization of that text is acceptable there.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        self.trie.greedy_tokenize(s)
    }
}

/// Compiles formats into per-request constraints for one model.
pub struct Grammars {
    factory: ParserFactory,
}

impl Grammars {
    /// Builds the token trie for `model`'s vocabulary. Tokens the tokenizer does not know
    /// (padding rows of the output layer) can never be chosen under a constraint.
    pub fn new(model: &Model) -> Result<Grammars> {
        let vocab = model.lm().vocab_size();
        let eos = *model.eos.first().ok_or_else(|| {
            InferError::Usage("structured output needs an end-of-sequence token and the model has none".into())
        })?;
        // llguidance's convention: a special token's bytes start with 0xff, a byte that never
        // occurs in UTF-8 text, so no grammar can spell it by accident. End-of-sequence tokens
        // are special here even in a character vocabulary.
        let special = |b: &[u8]| [&[TokTrie::SPECIAL_TOKEN_MARKER][..], b].concat();
        let words: Vec<Vec<u8>> = (0..vocab as u32)
            .map(|id| {
                let eos = model.eos.contains(&id);
                match &model.vocab {
                    Vocab::Bpe(tok) => match tok.token_bytes(id) {
                        Some(b) if eos || tok.is_special(id) => special(b),
                        Some(b) => b.to_vec(),
                        None => Vec::new(),
                    },
                    Vocab::Chars(chars) => match chars.get(id as usize) {
                        Some(c) if eos => special(c.to_string().as_bytes()),
                        Some(c) => c.to_string().into_bytes(),
                        None => Vec::new(),
                    },
                }
            })
            .collect();
        let trie = TokTrie::from(&TokRxInfo::new(vocab as u32, eos), &words).with_eos_tokens(&model.eos);
        let env: TokEnv = Arc::new(VocabEnv { trie });
        let mut factory = ParserFactory::new(
            &env,
            InferenceCapabilities::default(),
            &llguidance::earley::SlicedBiasComputer::general_slices(),
        )
        .map_err(|e| InferError::Usage(format!("building the structured-output token trie: {e}")))?;
        factory.quiet();
        Ok(Grammars { factory })
    }

    /// A fresh constraint for one generation, or an error (to show the user) when the schema
    /// cannot be compiled: not an object, an unknown type, an unsatisfiable combination, a
    /// `$ref` that points nowhere.
    ///
    /// Unless the schema says otherwise (llguidance's `x-guidance` key), the JSON is written
    /// compactly (`", "` and `": "` between items, no other whitespace): small models left free
    /// to add whitespace can indent forever.
    pub fn constraint(&self, format: &Format) -> Result<Constraint, String> {
        let mut schema = match format {
            Format::JsonObject => serde_json::json!({"type": "object"}),
            Format::JsonSchema(s) => s.clone(),
        };
        if !(schema.is_object() || schema.is_boolean()) {
            return Err("a JSON schema must be an object (or true/false)".into());
        }
        if let Some(obj) = schema.as_object_mut() {
            obj.entry("x-guidance").or_insert_with(
                || serde_json::json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
            );
        }
        let parser =
            self.factory.create_parser(TopLevelGrammar::from_json_schema(schema)).map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint { matcher, allowed: None })
    }
}

/// The grammar state of one generation.
pub struct Constraint {
    matcher: Matcher,
    /// The last mask (kept to check committed tokens).
    allowed: Option<llguidance::toktrie::SimpleVob>,
}

impl Constraint {
    /// Sets every logit the grammar forbids at this step to −∞. At least one token (an
    /// end-of-sequence token once the document is complete) stays allowed.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| format!("structured output: {e}"))?;
        for (id, z) in logits.iter_mut().enumerate() {
            if !allowed.is_allowed(id as u32) {
                *z = f32::NEG_INFINITY;
            }
        }
        self.allowed = Some(allowed);
        Ok(())
    }

    /// Advances the grammar past the sampled token (which must have been allowed by the last
    /// [`Constraint::mask`]).
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        if let Some(a) = &self.allowed {
            if !a.is_allowed(token) {
                return Err(format!("structured output: token {token} was not allowed by the grammar"));
            }
        }
        if self.matcher.is_stopped() {
            // Only end-of-sequence tokens were allowed; nothing to advance.
            return Ok(());
        }
        self.matcher.consume_token(token).map_err(|e| format!("structured output: {e}"))
    }

    /// Whether the text so far is a complete document.
    pub fn is_complete(&mut self) -> bool {
        self.matcher.is_stopped() || self.matcher.is_accepting().unwrap_or(false)
    }
}
