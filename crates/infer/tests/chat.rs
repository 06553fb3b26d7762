//! A chat keeps its KV cache between turns and drops its oldest turns when the context fills —
//! and either way answers exactly what a fresh generation on the whole rendered conversation
//! answers. On a small random LLaMA with a character vocabulary and a toy chat template.

use std::ops::ControlFlow;
use yuanli_infer::{Chat, GenerateOptions, Model};
use yuanli_models::{Message, SamplingParams};

/// Printable ASCII as the vocabulary, a random model with a context of `ctx`.
fn model(ctx: usize) -> Model {
    yuanli_infer::testing::char_model(ctx, &[])
}

fn opts() -> GenerateOptions {
    GenerateOptions { max_new_tokens: 8, params: SamplingParams::greedy(), seed: 1, stops: Vec::new() }
}

/// What a fresh generation answers to `system` + `history` + the user saying `text`.
fn fresh_reply(m: &Model, history: &[Message], text: &str) -> String {
    let mut msgs = history.to_vec();
    msgs.push(Message::new("user", text));
    let ids = m.encode(&m.render_chat(&msgs).unwrap(), true).unwrap();
    m.generate_text(&ids, &opts(), &mut |_| ControlFlow::Continue(())).unwrap().text
}

#[test]
fn later_turns_reuse_the_cache_and_answer_as_a_fresh_run_does() {
    let m = model(256);
    let mut chat = Chat::new(&m, None).unwrap();
    let mut streamed = String::new();
    let first = chat.send("hello there", &opts(), &mut |s| {
        streamed.push_str(s);
        ControlFlow::Continue(())
    });
    let first = first.unwrap();
    assert_eq!(streamed, first.reply.text, "the streamed text is the reply");
    assert_eq!(first.reused_tokens, 0);
    for (turn, text) in ["and now?", "tell me more", "ok"].iter().enumerate() {
        let history = chat.history().to_vec();
        let want = fresh_reply(&m, &history, text);
        let r = chat.send(text, &opts(), &mut |_| ControlFlow::Continue(())).unwrap();
        assert_eq!(r.reply.text, want, "turn {}: the cached conversation answers differently", turn + 2);
        assert_eq!(r.dropped_turns, 0);
        // Everything before the new user turn came from the cache, up to where the template's
        // rendering of the last reply departs from the generated tokens (at most the reply).
        let before: usize = history.iter().map(|msg| msg.role.len() + msg.content.len() + 3).sum();
        assert!(r.reused_tokens + 9 >= before, "turn {}: reused {} of {before}", turn + 2, r.reused_tokens);
    }
}

#[test]
fn a_full_context_drops_the_oldest_turns_not_the_conversation() {
    let m = model(96);
    let mut chat = Chat::new(&m, Some("be brief".into())).unwrap();
    let mut dropped = 0;
    for i in 0..8 {
        let text = format!("message number {i}");
        let history = chat.history().to_vec();
        let r = chat.send(&text, &opts(), &mut |_| ControlFlow::Continue(())).unwrap();
        dropped += r.dropped_turns;
        assert!(r.prompt_tokens + 8 <= 96, "the rendered conversation fits with room for the reply");
        // The answer is a fresh generation's on what was kept.
        let kept = &history[history.len() - (chat.history().len() - 2)..];
        let mut with_system = vec![Message::new("system", "be brief")];
        with_system.extend_from_slice(kept);
        assert_eq!(r.reply.text, fresh_reply(&m, &with_system, &text), "turn {i}");
    }
    assert!(dropped >= 3, "{dropped} turns dropped over 8 turns in a context of 96");
    assert_eq!(chat.history()[0].role, "user", "whole turns are dropped");
    // A message too long for the context is an error, and the chat goes on.
    let long = "x".repeat(200);
    assert!(chat.send(&long, &opts(), &mut |_| ControlFlow::Continue(())).is_err());
    assert!(chat.send("hi", &opts(), &mut |_| ControlFlow::Continue(())).is_ok());
}
