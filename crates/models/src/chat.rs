//! Chat templates: the Jinja program, shipped inside a model (GGUF `tokenizer.chat_template`,
//! Hugging Face `tokenizer_config.json`), that turns a conversation into the exact text the
//! model was fine-tuned on — for SmolLM2, `<|im_start|>user\n…<|im_end|>\n` turns.
//!
//! Rendered with `minijinja`, a Rust implementation of Jinja2; the template sees `messages`,
//! `add_generation_prompt`, `bos_token` and `eos_token`, as Hugging Face's renderer gives them.

use serde::Serialize;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// A model's chat template.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A template with the special tokens it may refer to.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> ChatTemplate {
        ChatTemplate { source: source.to_string(), bos_token: bos_token.to_string(), eos_token: eos_token.to_string() }
    }

    /// The Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders a conversation; with `add_generation_prompt` the text ends where the assistant's
    /// reply should begin.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, String> {
        let mut env = minijinja::Environment::new();
        env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
        });
        env.add_template("chat", &self.source).map_err(|e| format!("chat template does not parse: {e}"))?;
        let tmpl = env.get_template("chat").map_err(|e| e.to_string())?;
        tmpl.render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
        })
        .map_err(|e| format!("chat template failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chatml_template_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::new(
            "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}\
             {% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
            "",
            "<|im_end|>",
        );
        let s = t.render(&[Message::new("user", "你好")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n");
        let bad = ChatTemplate::new("{% if %}", "", "");
        assert!(bad.render(&[], true).unwrap_err().starts_with("chat template does not parse"));
    }
}
