//! Loading any model, and one text generation with EOS, stop strings and streaming.

use crate::stream::TextStream;
use crate::{InferError, Result};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use yuanli_data::Shard;
use yuanli_models::gguf::GgufFile;
use yuanli_models::load::{load_gguf_file, load_pretrained_with, LoadOptions, GPT2_ARCH};
use yuanli_models::{generate, CausalLm, ChatTemplate, Generation, GptVocab, Message, SamplingParams};
use yuanli_tokenizer::{SpecialMode, Tokenizer};
use yuanli_train::pretrain::Trainee;

/// How text becomes a model's token ids.
pub enum Vocab {
    /// A byte-level BPE tokenizer.
    Bpe(Box<Tokenizer>),
    /// A character-level vocabulary (id → char), as `yuanli prepare --tokenizer char` makes.
    Chars(Vec<char>),
}

impl Vocab {
    /// The vocabulary of a prepared data directory (what a `yuanli train` checkpoint was
    /// trained on).
    pub fn of_data(dir: &Path) -> Result<Vocab> {
        let meta = Shard::meta(dir)?;
        if meta.tokenizer == "char" {
            return Ok(Vocab::Chars(meta.chars));
        }
        let path = dir.join(&meta.tokenizer);
        Ok(Vocab::Bpe(Box::new(yuanli_tokenizer::formats::load(&path, None)?)))
    }

    /// Token ids of `text`; with `specials`, special tokens such as `<|im_start|>` written in
    /// the text are parsed as such (a rendered chat), else they are plain text.
    pub fn encode(&self, text: &str, specials: bool) -> Result<Vec<u32>> {
        match self {
            Vocab::Bpe(t) => {
                let mode = if specials { SpecialMode::Allow } else { SpecialMode::AsText };
                Ok(t.encode(text, mode)?)
            }
            Vocab::Chars(chars) => {
                let index: std::collections::HashMap<char, u32> =
                    chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
                text.chars()
                    .map(|c| {
                        index.get(&c).copied().ok_or_else(|| {
                            InferError::Usage(format!("character {c:?} is not in the model's vocabulary"))
                        })
                    })
                    .collect()
            }
        }
    }

    /// The text of `ids` (invalid UTF-8 as U+FFFD; unknown ids are an error).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match self {
            Vocab::Bpe(t) => Ok(t.decode_lossy(ids)?),
            Vocab::Chars(chars) => ids
                .iter()
                .map(|&i| chars.get(i as usize).copied().ok_or_else(|| InferError::Usage(format!("no token id {i}"))))
                .collect(),
        }
    }
}

/// Which kind of model was loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A LLaMA-family GGUF read in place: the fast quantized path.
    Quantized,
    /// A LLaMA-family model with f32 weights (a Hugging Face directory, or a GGUF with `exact`).
    F32,
    /// A GPT from `yuanli train` (or a GPT-2 GGUF written by `yuanli quantize`).
    Gpt,
}

/// How to open a model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenOptions {
    /// Dequantize a GGUF file's weights to f32 (the path checked token for token against
    /// float64 transformers and llama.cpp) instead of reading them in place.
    pub exact: bool,
    /// A LoRA adapter in PEFT's format (a directory with `adapter_config.json`) to apply.
    pub lora: Option<PathBuf>,
}

/// A loaded model and everything needed to talk to it.
pub struct Model {
    lm: Box<dyn CausalLm>,
    /// Its vocabulary.
    pub vocab: Vocab,
    /// The chat template, if it has one.
    pub chat_template: Option<ChatTemplate>,
    /// The token that begins a sequence, if any.
    pub bos: Option<u32>,
    /// Whether [`Model::encode`] puts `bos` first.
    pub add_bos: bool,
    /// Tokens that end generation.
    pub eos: Vec<u32>,
    /// A one-line description (architecture, name, weight types), empty for checkpoints.
    pub description: String,
    /// What was loaded.
    pub kind: ModelKind,
}

/// How a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finish {
    /// The model produced an end-of-sequence token.
    Eos,
    /// A stop string appeared.
    Stop,
    /// `max_new_tokens` were generated.
    Length,
    /// The caller stopped it.
    Cancelled,
}

/// Options of one generation.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// How to sample.
    pub params: SamplingParams,
    /// The random seed.
    pub seed: u64,
    /// Stop when any of these appears in the text (it is not returned).
    pub stops: Vec<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 256, params: SamplingParams::default(), seed: 42, stops: Vec::new() }
    }
}

/// What [`Model::generate_text`] produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TextGeneration {
    /// Generated ids, without an end-of-sequence token.
    pub ids: Vec<u32>,
    /// Their text, cut before a stop string.
    pub text: String,
    /// Ids and timings as the engine reported them.
    pub generation: Generation,
    /// Why it ended.
    pub finish: Finish,
}

/// LoRA adapters apply to LLaMA-family models only.
fn no_adapter(opts: &OpenOptions, path: &Path) -> Result<()> {
    match &opts.lora {
        Some(dir) => Err(InferError::Usage(format!(
            "{}: a LoRA adapter ({}) needs a LLaMA-family model (GGUF or Hugging Face), not a GPT",
            path.display(),
            dir.display()
        ))),
        None => Ok(()),
    }
}

impl Model {
    /// Loads `path`: a `.gguf` file (LLaMA-family, or a GPT-2 written by `yuanli quantize`), a
    /// Hugging Face directory (`config.json` with a `model_type`), or a checkpoint directory
    /// from `yuanli train` (its vocabulary comes from the data directory it was trained on);
    /// with `opts.lora`, a PEFT LoRA adapter on top (LLaMA-family models).
    pub fn open(path: &Path, opts: OpenOptions) -> Result<Model> {
        let is_hf = path.is_dir()
            && std::fs::read_to_string(path.join("config.json")).is_ok_and(|s| s.contains("\"model_type\""));
        if path.is_dir() && !is_hf {
            no_adapter(&opts, path)?;
            let (t, cfg) = Trainee::load(path)?;
            let vocab = Vocab::of_data(&cfg.data_dir)?;
            return Ok(Model::gpt(Box::new(t.model), vocab));
        }
        let load = if opts.exact || path.is_dir() { LoadOptions::exact() } else { LoadOptions::fast() };
        let p = if path.is_file() {
            let f = GgufFile::open(path).map_err(yuanli_models::LoadError::from)?;
            if f.get("general.architecture").and_then(|v| v.as_str()) == Some(GPT2_ARCH) {
                no_adapter(&opts, path)?;
                let (model, _store) = yuanli_models::gpt_from_gguf(&f)?;
                let vocab = match yuanli_models::gpt_vocab_from_gguf(&f)? {
                    GptVocab::Chars(c) => Vocab::Chars(c),
                    GptVocab::Bpe(t) => Vocab::Bpe(t),
                };
                return Ok(Model::gpt(Box::new(model), vocab));
            }
            load_gguf_file(Arc::new(f), load)?
        } else {
            load_pretrained_with(path, load)?
        };
        let kind = if load == LoadOptions::fast() { ModelKind::Quantized } else { ModelKind::F32 };
        let mut p = p;
        if let Some(dir) = &opts.lora {
            p.store.set_trainable(|_, _| false);
            let a = yuanli_models::peft::load_adapter(dir, &mut p.model, &mut p.store)?;
            p.description += &format!(" + LoRA {} (r {}, {})", dir.display(), a.lora.r, a.targets.join(" "));
        }
        Ok(Model {
            lm: Box::new(p.model),
            vocab: Vocab::Bpe(Box::new(p.tokenizer)),
            chat_template: p.chat_template,
            bos: p.bos,
            add_bos: p.add_bos,
            eos: p.eos,
            description: p.description,
            kind,
        })
    }

    fn gpt(lm: Box<dyn CausalLm>, vocab: Vocab) -> Model {
        let description = String::new();
        Model {
            lm,
            vocab,
            chat_template: None,
            bos: None,
            add_bos: false,
            eos: Vec::new(),
            description,
            kind: ModelKind::Gpt,
        }
    }

    /// A model from parts (tests, programs that build their own).
    pub fn from_parts(
        lm: Box<dyn CausalLm>,
        vocab: Vocab,
        chat_template: Option<ChatTemplate>,
        eos: Vec<u32>,
    ) -> Model {
        Model { chat_template, eos, ..Model::gpt(lm, vocab) }
    }

    /// The network, for the engine's API (sessions, batches).
    pub fn lm(&self) -> &dyn CausalLm {
        &*self.lm
    }

    /// The BOS token [`Model::encode`] puts first, if it puts one.
    pub fn bos_token(&self) -> Option<u32> {
        self.bos.filter(|_| self.add_bos)
    }

    /// Token ids of `text`, with the BOS token first when the model asks for it; `specials`
    /// parses special tokens written in the text (for a rendered chat).
    pub fn encode(&self, text: &str, specials: bool) -> Result<Vec<u32>> {
        let mut ids: Vec<u32> = self.bos_token().into_iter().collect();
        ids.extend(self.vocab.encode(text, specials)?);
        Ok(ids)
    }

    /// Renders a conversation with the model's chat template, ready for the assistant's turn.
    pub fn render_chat(&self, messages: &[Message]) -> Result<String> {
        match &self.chat_template {
            Some(t) => t.render(messages, true).map_err(InferError::Usage),
            None => Err(InferError::Usage("this model has no chat template".into())),
        }
    }

    /// A text stream over this model's vocabulary.
    pub fn text_stream(&self, stops: &[String]) -> TextStream<'_> {
        TextStream::new(&self.vocab, stops)
    }

    /// Generates after `prompt_ids` (non-empty, shorter than the context), calling `on_text`
    /// with each piece of text as soon as it is safe to show (whole characters, no part of a
    /// stop string); `on_text` may stop the generation. Ends at an end-of-sequence token, a
    /// stop string or `max_new_tokens`.
    pub fn generate_text(
        &self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<TextGeneration> {
        self.check_prompt(prompt_ids)?;
        let mut text = TextDriver::new(self, &opts.stops);
        let generation = generate(self.lm(), prompt_ids, opts.max_new_tokens, opts.params, opts.seed, &mut |id| {
            text.push(id, on_text)
        })?;
        Ok(text.finish(generation, on_text))
    }

    /// Errors unless `ids` is a prompt the model can take.
    pub(crate) fn check_prompt(&self, ids: &[u32]) -> Result<()> {
        let ctx = self.lm.context_len();
        if ids.is_empty() {
            return Err(InferError::Usage("the prompt is empty".into()));
        }
        if ids.len() >= ctx {
            return Err(InferError::Usage(format!(
                "the prompt has {} tokens but the model's context is {ctx}; shorten it",
                ids.len()
            )));
        }
        Ok(())
    }
}

/// The text side of a generation: EOS, stop strings, streaming (shared by
/// [`Model::generate_text`] and the chat).
pub(crate) struct TextDriver<'m> {
    eos: &'m [u32],
    stream: TextStream<'m>,
    ids: Vec<u32>,
    text: String,
    finish: Finish,
}

impl<'m> TextDriver<'m> {
    pub(crate) fn new(model: &'m Model, stops: &[String]) -> Self {
        TextDriver {
            eos: &model.eos,
            stream: model.text_stream(stops),
            ids: Vec::new(),
            text: String::new(),
            finish: Finish::Length,
        }
    }

    /// Takes one generated id; says whether to go on.
    pub(crate) fn push(&mut self, id: u32, on_text: &mut dyn FnMut(&str) -> ControlFlow<()>) -> ControlFlow<()> {
        if self.eos.contains(&id) {
            self.finish = Finish::Eos;
            return ControlFlow::Break(());
        }
        self.ids.push(id);
        let (piece, stop) = self.stream.push(id);
        self.text.push_str(&piece);
        if !piece.is_empty() && on_text(&piece).is_break() {
            self.finish = Finish::Cancelled;
            return ControlFlow::Break(());
        }
        if stop {
            self.finish = Finish::Stop;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The rest of the text, and the result.
    pub(crate) fn finish(
        mut self,
        generation: Generation,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> TextGeneration {
        if self.finish != Finish::Stop {
            let tail = self.stream.finish();
            if !tail.is_empty() {
                let _ = on_text(&tail);
            }
            self.text.push_str(&tail);
        }
        TextGeneration { ids: self.ids, text: self.text, generation, finish: self.finish }
    }
}
