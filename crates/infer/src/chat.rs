//! A conversation that keeps its KV cache between turns.

use crate::model::{GenerateOptions, Model, TextDriver, TextGeneration};
use crate::{InferError, Result};
use std::ops::ControlFlow;
use yuanli_models::{generate_in, Message, SeqId, Session, SessionOpts};

/// The longest conversation a [`Chat`] keeps (positions): its KV cache is allocated up front,
/// and a 128k-token context of a large model would take gigabytes.
pub const CHAT_CONTEXT: usize = 8192;

/// A chat with a model. Each turn renders the whole conversation with the model's template,
/// but only the part the KV cache does not already hold is fed to the model: the longest
/// common prefix of the new rendering and the cached tokens stays, the rest is dropped and
/// recomputed. In a growing conversation that is just the new user turn (and the template's
/// wrapping of the last reply).
///
/// When the conversation no longer fits the context (with room for a reply), the oldest turns
/// are dropped — the system message stays — and the conversation is re-rendered; positions
/// then shift, so the cache is reused only up to where the text changed.
pub struct Chat<'m> {
    model: &'m Model,
    /// Positions the conversation may take: the model's context, at most [`CHAT_CONTEXT`].
    context: usize,
    session: Session,
    seq: SeqId,
    /// The tokens whose keys and values the cache holds (positions `0..len`).
    cached: Vec<u32>,
    /// The system message, if any.
    system: Option<String>,
    /// User and assistant turns, oldest first.
    history: Vec<Message>,
}

/// What one turn produced.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatReply {
    /// The assistant's reply (text, ids, timings, why it ended).
    pub reply: TextGeneration,
    /// Tokens of the rendered conversation this turn.
    pub prompt_tokens: usize,
    /// How many of them came from the cache (not recomputed).
    pub reused_tokens: usize,
    /// Oldest turns (a user message and its reply count as one) dropped to fit the context.
    pub dropped_turns: usize,
}

impl<'m> Chat<'m> {
    /// A new conversation (the model must have a chat template). The KV cache is allocated
    /// now for the model's context, or [`CHAT_CONTEXT`] positions if that is shorter.
    pub fn new(model: &'m Model, system: Option<String>) -> Result<Chat<'m>> {
        model.render_chat(&[Message::new("user", "")])?; // fail now if there is no template
        let context = model.lm().context_len().min(CHAT_CONTEXT);
        let mut session = model.lm().new_session(SessionOpts::tokens(context));
        let seq = session.add_sequence();
        Ok(Chat { model, context, session, seq, cached: Vec::new(), system, history: Vec::new() })
    }

    /// Forgets the conversation (the system message stays).
    pub fn reset(&mut self) {
        self.history.clear();
    }

    /// Sets (or removes) the system message and forgets the conversation.
    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system;
        self.history.clear();
    }

    /// The turns so far.
    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.session.kv_bytes()
    }

    fn render(&self) -> Result<Vec<u32>> {
        let mut msgs: Vec<Message> = self.system.iter().map(|s| Message::new("system", s)).collect();
        msgs.extend(self.history.iter().cloned());
        self.model.encode(&self.model.render_chat(&msgs)?, true)
    }

    /// The user says `text`; the model answers, streaming its text to `on_text`.
    pub fn send(
        &mut self,
        text: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<ChatReply> {
        let ctx = self.context;
        let room = opts.max_new_tokens.clamp(1, ctx / 2);
        let before = self.history.clone();
        self.history.push(Message::new("user", text));
        let mut dropped = 0;
        let ids = loop {
            let ids = match self.render() {
                Ok(ids) => ids,
                Err(e) => {
                    self.history = before;
                    return Err(e);
                }
            };
            if ids.len() + room <= ctx {
                break ids;
            }
            if self.history.len() <= 1 {
                self.history = before; // the conversation stays as it was
                return Err(InferError::Usage(format!(
                    "the message takes {} tokens with the template; with room for a reply of {room} the context of \
                     {ctx} is too small",
                    ids.len()
                )));
            }
            // Drop the oldest turn: a user message and the reply that follows it.
            let n = if self.history.len() > 2 && self.history[1].role == "assistant" { 2 } else { 1 };
            self.history.drain(..n);
            dropped += 1;
        };
        // Keep what the cache holds of this rendering; feed the rest.
        let keep = self.cached.iter().zip(&ids).take_while(|(a, b)| a == b).count().min(ids.len() - 1);
        self.session.truncate(self.seq, keep)?;
        self.cached.truncate(keep);
        let mut driver = TextDriver::new(self.model, &opts.stops);
        let n = opts.max_new_tokens.min(ctx - ids.len());
        let model = self.model.lm();
        let generated = generate_in(model, &mut self.session, self.seq, &ids, n, opts.params, opts.seed, &mut |id| {
            driver.push(id, on_text)
        });
        let generation = match generated {
            Ok(g) => g,
            Err(e) => {
                // Back to the state before the turn: the cache holds `keep` tokens of it.
                self.session.truncate(self.seq, keep)?;
                self.history = before;
                return Err(e.into());
            }
        };
        let reply = driver.finish(generation, on_text);
        // The cache now holds the prompt and every generated token but the last (never fed).
        let held = self.session.len(self.seq)?;
        self.cached.clone_from(&ids);
        self.cached.extend(&reply.generation.tokens);
        self.cached.truncate(held);
        self.history.push(Message::new("assistant", reply.text.trim()));
        Ok(ChatReply { prompt_tokens: ids.len(), reused_tokens: keep, dropped_turns: dropped, reply })
    }
}
