//! The OpenAI wire format: requests read strictly (a wrong type names its field), checked
//! against the model, and turned into engine jobs; responses and stream chunks written.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use yuanli_infer::{Finish, Format};
use yuanli_models::{Message, SamplingParams};

use crate::scheduler::TokenLogprob;

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// What went wrong, for a person.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
    /// A machine-readable code (`context_length_exceeded`, `model_not_found`, …).
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: Some(param.to_string()),
            code: Some("invalid_value"),
        }
    }

    /// An error with `status` and no field.
    pub fn status(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), param: None, code: None }
    }

    /// OpenAI's `type` for the status.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            400..=499 => "invalid_request_error",
            _ => "server_error",
        }
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

/// Reads `T` from a JSON body; a type error names the field (`messages[0].content: invalid
/// type: integer …`).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::status(StatusCode::BAD_REQUEST, format!("the request body is not valid JSON: {inner}"));
        }
        if path == "." {
            ApiError::status(StatusCode::BAD_REQUEST, format!("the request body: {inner}"))
        } else {
            ApiError::invalid(&path, format!("{path}: {inner}"))
        }
    })
}

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which the text ones are read.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// `[{"type": "text", "text": …}, …]`.
    Parts(Vec<ContentPart>),
}

/// One part of a message's content.
#[derive(Debug, Deserialize)]
pub struct ContentPart {
    /// `text` (other kinds are refused).
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a text part.
    #[serde(default)]
    pub text: Option<String>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer` (read as system), `user` or `assistant`.
    pub role: String,
    /// What was said (`null` is empty).
    #[serde(default)]
    pub content: Option<Content>,
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// `logprobs`: a flag on chat, a count of alternatives on completions.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub enum LogprobsField {
    /// Chat: return log-probabilities.
    Flag(bool),
    /// Completions: return them with this many alternatives.
    Count(i64),
}

/// A completion prompt: text, one text in a list, or token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    /// Text.
    Text(String),
    /// Texts (only one is served).
    Texts(Vec<String>),
    /// Token ids.
    Ids(Vec<i64>),
}

/// The body of `POST /v1/chat/completions` (with `messages`) and `POST /v1/completions` (with
/// `prompt`): one struct, so that a field of the wrong type is reported by its name (serde's
/// flattening would lose the path). Fields OpenAI defines and we do not read are ignored.
#[derive(Debug, Deserialize)]
pub struct GenRequest {
    /// The conversation (chat).
    pub messages: Option<Vec<ChatMessage>>,
    /// The prompt (completions).
    pub prompt: Option<Prompt>,
    /// The model id (must be the one served).
    pub model: Option<String>,
    /// Tokens to generate at most.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature, 0–2 (0: greedy).
    pub temperature: Option<f64>,
    /// Nucleus sampling, (0, 1].
    pub top_p: Option<f64>,
    /// Keep only the `k` most likely tokens (an extension, as llama.cpp and vLLM accept it).
    pub top_k: Option<i64>,
    /// Stop strings (at most 4).
    pub stop: Option<Stop>,
    /// The random seed.
    pub seed: Option<i64>,
    /// Stream the answer as server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// Choices to generate (only 1).
    pub n: Option<i64>,
    /// Penalties (only 0 is supported).
    pub presence_penalty: Option<f64>,
    /// Penalties (only 0 is supported).
    pub frequency_penalty: Option<f64>,
    /// `{"type": "text"}` only, for now.
    pub response_format: Option<Value>,
    /// Chat: `true` for log-probabilities; completions: alternatives per position (0–5).
    pub logprobs: Option<LogprobsField>,
    /// Chat: alternatives per position (0–20; needs `logprobs: true`).
    pub top_logprobs: Option<i64>,
}

/// What a request asks of the engine, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Tokens to generate at most (`None`: until the context ends).
    pub max_tokens: Option<usize>,
    /// Sampling.
    pub params: SamplingParams,
    /// Seed.
    pub seed: u64,
    /// Stop strings.
    pub stops: Vec<String>,
    /// Streamed?
    pub stream: bool,
    /// Usage chunk at the end of a stream?
    pub include_usage: bool,
    /// Structured output: the document the reply must be.
    pub format: Option<Format>,
}

/// Checks the fields both endpoints share.
pub fn plan(c: &GenRequest, served: &str) -> Result<Plan, ApiError> {
    if let Some(m) = &c.model {
        if m != served {
            return Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("the model `{m}` does not exist; this server serves `{served}` (GET /v1/models)"),
                param: Some("model".into()),
                code: Some("model_not_found"),
            });
        }
    }
    let max_tokens = match (c.max_completion_tokens, c.max_tokens) {
        (Some(n), _) => Some(("max_completion_tokens", n)),
        (None, Some(n)) => Some(("max_tokens", n)),
        (None, None) => None,
    };
    let max_tokens = match max_tokens {
        Some((field, n)) if n < 1 => {
            return Err(ApiError::invalid(field, format!("{field} must be at least 1, not {n}")))
        }
        Some((_, n)) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
        None => None,
    };
    let temperature = c.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, not {temperature}"),
        ));
    }
    let top_p = c.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", format!("top_p must be in (0, 1], not {top_p}")));
    }
    let top_k = c.top_k.unwrap_or(0);
    if top_k < 0 {
        return Err(ApiError::invalid("top_k", format!("top_k must be 0 (off) or positive, not {top_k}")));
    }
    if let Some(n) = c.n {
        if n != 1 {
            return Err(ApiError::invalid("n", format!("only n = 1 is served, not {n}")));
        }
    }
    for (field, v) in [("presence_penalty", c.presence_penalty), ("frequency_penalty", c.frequency_penalty)] {
        if let Some(v) = v {
            if v != 0.0 {
                return Err(ApiError::invalid(field, format!("{field} is not supported (only 0), got {v}")));
            }
        }
    }
    let format = match &c.response_format {
        None => None,
        Some(rf) => response_format(rf)?,
    };
    let stops = match &c.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stops.len() > 4 {
        return Err(ApiError::invalid("stop", format!("at most 4 stop strings, not {}", stops.len())));
    }
    let seed = match c.seed {
        Some(s) => s as u64,
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
    };
    let stream = c.stream.unwrap_or(false);
    let include_usage = c.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if c.stream_options.is_some() && !stream {
        return Err(ApiError::invalid("stream_options", "stream_options needs stream: true"));
    }
    let params = SamplingParams { temperature, top_p, top_k: top_k as usize, ..SamplingParams::default() };
    Ok(Plan { max_tokens, params, seed, stops, stream, include_usage, format })
}

/// `response_format`: `{"type":"text"}`, `{"type":"json_object"}` or
/// `{"type":"json_schema","json_schema":{"name":…,"schema":{…},"strict":…}}`. Whether the schema
/// compiles is checked later, by the grammar compiler.
fn response_format(rf: &Value) -> Result<Option<Format>, ApiError> {
    let kind = rf.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Format::JsonObject)),
        Some("json_schema") => {
            let Some(js) = rf.get("json_schema").filter(|v| v.is_object()) else {
                return Err(ApiError::invalid(
                    "response_format.json_schema",
                    "response_format.json_schema is required (an object with `name` and `schema`)",
                ));
            };
            if let Some(name) = js.get("name") {
                if !name.is_string() {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "response_format.json_schema.name must be a string",
                    ));
                }
            }
            match js.get("schema") {
                Some(schema) if schema.is_object() || schema.is_boolean() => {
                    Ok(Some(Format::JsonSchema(schema.clone())))
                }
                Some(_) => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "response_format.json_schema.schema must be a JSON schema (an object)",
                )),
                None => Err(ApiError::invalid(
                    "response_format.json_schema.schema",
                    "response_format.json_schema.schema is required",
                )),
            }
        }
        _ => Err(ApiError::invalid(
            "response_format.type",
            "response_format.type must be \"text\", \"json_object\" or \"json_schema\"",
        )),
    }
}

/// Chat: the conversation as the chat template reads it, and the alternatives per position
/// when log-probabilities are asked for.
pub fn chat_parts(req: &GenRequest) -> Result<(Vec<Message>, Option<usize>), ApiError> {
    let want = match req.logprobs {
        None | Some(LogprobsField::Flag(false)) => false,
        Some(LogprobsField::Flag(true)) => true,
        Some(LogprobsField::Count(_)) => {
            return Err(ApiError::invalid("logprobs", "logprobs must be true or false in a chat request"))
        }
    };
    let top = match (want, req.top_logprobs) {
        (_, Some(n)) if !(0..=20).contains(&n) => {
            return Err(ApiError::invalid("top_logprobs", format!("top_logprobs must be between 0 and 20, not {n}")))
        }
        (false, Some(_)) => return Err(ApiError::invalid("top_logprobs", "top_logprobs needs logprobs: true")),
        (true, n) => Some(n.unwrap_or(0) as usize),
        (false, None) => None,
    };
    if req.prompt.is_some() {
        return Err(ApiError::invalid(
            "prompt",
            "a chat request takes messages, not a prompt (POST /v1/completions takes a prompt)",
        ));
    }
    let Some(msgs) = &req.messages else {
        return Err(ApiError::invalid("messages", "messages is required"));
    };
    if msgs.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    let messages = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].role"),
                        format!("messages[{i}].role: unknown role `{other}` (system, developer, user or assistant)"),
                    ))
                }
            };
            let content = match &m.content {
                None => String::new(),
                Some(Content::Text(t)) => t.clone(),
                Some(Content::Parts(parts)) => {
                    let mut s = String::new();
                    for (j, p) in parts.iter().enumerate() {
                        match (p.kind.as_str(), &p.text) {
                            ("text", Some(t)) => s.push_str(t),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("messages[{i}].content[{j}]"),
                                    format!("messages[{i}].content[{j}]: only text parts are read (type \"text\" with \"text\")"),
                                ))
                            }
                        }
                    }
                    s
                }
            };
            Ok(Message { role: role.to_string(), content })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((messages, top))
}

/// Completions: the alternatives per position when log-probabilities are asked for.
pub fn completion_top(req: &GenRequest) -> Result<Option<usize>, ApiError> {
    if req.messages.is_some() {
        return Err(ApiError::invalid(
            "messages",
            "a completion request takes a prompt, not messages (POST /v1/chat/completions takes messages)",
        ));
    }
    match req.logprobs {
        None => Ok(None),
        Some(LogprobsField::Count(n)) if (0..=5).contains(&n) => Ok(Some(n as usize)),
        Some(LogprobsField::Count(n)) => {
            Err(ApiError::invalid("logprobs", format!("logprobs must be between 0 and 5, not {n}")))
        }
        Some(LogprobsField::Flag(_)) => {
            Err(ApiError::invalid("logprobs", "logprobs is a number (0–5) in a completion request"))
        }
    }
}

/// OpenAI's `finish_reason`.
pub fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Eos | Finish::Stop | Finish::Cancelled => "stop",
        Finish::Length => "length",
    }
}

/// `usage`, with the prompt tokens the prefix cache supplied as `prompt_tokens_details.cached_tokens`.
pub fn usage(prompt: usize, completion: usize, cached: usize) -> Value {
    json!({
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// Chat `logprobs.content` entries.
pub fn chat_logprobs(lps: &[TokenLogprob]) -> Vec<Value> {
    lps.iter()
        .map(|l| {
            json!({
                "token": l.token, "logprob": l.logprob, "bytes": l.bytes,
                "top_logprobs": l.top.iter().map(|(t, b, lp)| json!({"token": t, "logprob": lp, "bytes": b})).collect::<Vec<_>>(),
            })
        })
        .collect()
}

/// Legacy completion `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`),
/// `offset` the text length before these tokens.
pub fn completion_logprobs(lps: &[TokenLogprob], offset: usize) -> Value {
    let mut at = offset;
    let mut offsets = Vec::new();
    for l in lps {
        offsets.push(at);
        at += l.token.len();
    }
    json!({
        "tokens": lps.iter().map(|l| l.token.clone()).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|l| l.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|l| l.top.iter().map(|(t, _, lp)| (t.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}
