//! # yuanli-serve — one model, many clients
//!
//! An OpenAI-compatible HTTP server (`axum` on `tokio`) in front of one engine loop
//! ([`scheduler`]): every request becomes a sequence of one continuously batched, paged-KV
//! session. HTTP handlers only parse, check, tokenize and format; the engine thread runs the
//! model. Endpoints:
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the web chat page (no key needed to load it; it sends the key you type) |
//! | `GET /health` | `{"status": "ok"}` (no key needed) |
//! | `GET /v1/models` | the model served |
//! | `POST /v1/chat/completions` | chat, streamed (SSE) or not, with usage and log-probabilities |
//! | `POST /v1/completions` | plain completion, likewise |
//! | `POST /tokenize`, `POST /detokenize` | text ↔ ids with the model's tokenizer |
//! | `GET /metrics` | Prometheus text: running/waiting, tokens, time to first token, KV blocks |
//!
//! Errors come in OpenAI's shape with the right status: 400 for a bad field (named), 401
//! without the API key, 404 for an unknown model or route, 413 for a body over the limit,
//! 429 when the waiting queue is full, 503 while shutting down.

pub mod api;
mod prefix;
pub mod scheduler;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};
use yuanli_infer::{Constraint, Format, Grammars, Model};

use api::{ApiError, Plan};
pub use scheduler::{Event, Job, Scheduler, SchedulerOpts, Stats, SubmitError, TokenLogprob};

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServeOpts {
    /// The id clients name the model by (`/v1/models`).
    pub model_id: String,
    /// Required as `Authorization: Bearer …` when set.
    pub api_key: Option<String>,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// The engine loop's settings.
    pub scheduler: SchedulerOpts,
}

impl Default for ServeOpts {
    fn default() -> Self {
        ServeOpts {
            model_id: "model".into(),
            api_key: None,
            max_body_bytes: 4 << 20,
            scheduler: SchedulerOpts::default(),
        }
    }
}

/// The web chat served at `/`: one self-contained page (no build step) that streams replies
/// from `/v1/chat/completions`, with a stop button, a system prompt and the sampling settings.
pub const CHAT_PAGE: &str = include_str!("chat.html");

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body())).into_response()
    }
}

struct AppState {
    model: Arc<Model>,
    scheduler: Scheduler,
    grammars: Result<Arc<Grammars>, String>,
    opts: ServeOpts,
    created: u64,
}

type Shared = Arc<AppState>;

/// The server: the router and the engine loop behind it.
pub struct Server {
    router: Router,
    scheduler: Scheduler,
}

impl Server {
    /// Starts the engine loop for `model` and builds the routes; fails only when the operating
    /// system refuses the engine thread.
    pub fn new(model: Arc<Model>, opts: ServeOpts) -> std::io::Result<Server> {
        let scheduler = Scheduler::start(model.clone(), opts.scheduler.clone())?;
        // The token trie for structured output, built once (a model without a byte-level
        // vocabulary serves everything else and refuses `response_format` with the reason).
        let grammars = Grammars::new(&model).map(Arc::new).map_err(|e| e.to_string());
        let created = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let state: Shared =
            Arc::new(AppState { model, scheduler: scheduler.clone(), grammars, opts: opts.clone(), created });
        let v1 = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat_completions))
            .route("/v1/completions", post(completions))
            .route("/tokenize", post(tokenize))
            .route("/detokenize", post(detokenize))
            .route("/metrics", get(metrics))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), require_key));
        let router = Router::new()
            .route("/", get(|| async { Html(CHAT_PAGE) }))
            .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
            .merge(v1)
            .fallback(|| async { ApiError::status(StatusCode::NOT_FOUND, "no such route") })
            .layer(DefaultBodyLimit::max(opts.max_body_bytes))
            .with_state(state);
        Ok(Server { router, scheduler })
    }

    /// The routes (for tests that drive them without a socket).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The engine loop.
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Serves on `listener` until `shutdown` resolves, then lets the open responses finish and
    /// stops the engine loop.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let result = axum::serve(listener, self.router).with_graceful_shutdown(shutdown).await;
        let s = self.scheduler.clone();
        let _ = tokio::task::spawn_blocking(move || s.shutdown()).await;
        result
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Binds `addr` and serves until Ctrl-C or SIGTERM (a blocking call with its own runtime).
pub fn serve_blocking(
    model: Arc<Model>,
    opts: ServeOpts,
    addr: SocketAddr,
    on_ready: impl FnOnce(SocketAddr),
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        on_ready(listener.local_addr()?);
        Server::new(model, opts)?.run(listener, shutdown_signal()).await
    })
}

async fn require_key(State(s): State<Shared>, headers: HeaderMap, req: Request, next: Next) -> Response {
    if let Some(key) = &s.opts.api_key {
        let given =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            let mut e =
                ApiError::status(StatusCode::UNAUTHORIZED, "a valid API key is required (Authorization: Bearer …)");
            e.code = Some("invalid_api_key");
            return e.into_response();
        }
    }
    next.run(req).await
}

/// The body, or the error a too-large or unreadable one deserves.
fn body(b: Result<Bytes, axum::extract::rejection::BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|r| ApiError::status(r.status(), format!("the request body could not be read: {}", r.body_text())))
}

async fn models(State(s): State<Shared>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": s.opts.model_id, "object": "model", "created": s.created, "owned_by": "yuanli",
        "context_length": s.model.lm().context_len(),
    }]}))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::AtomicU64;
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{:x}{:04x}", now(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Checks the prompt against the context and queues the job.
/// Compiles a request's structured-output format (off the async threads: a large schema takes
/// a while); a schema that does not compile is the client's error.
async fn constraint(s: &Shared, format: &Format) -> Result<Constraint, ApiError> {
    let grammars = s.grammars.clone().map_err(|why| {
        ApiError::invalid("response_format", format!("structured output is not available for this model: {why}"))
    })?;
    let param = match format {
        Format::JsonObject => "response_format",
        Format::JsonSchema(_) => "response_format.json_schema.schema",
    };
    let format = format.clone();
    tokio::task::spawn_blocking(move || grammars.constraint(&format))
        .await
        .map_err(|e| ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, format!("compiling the schema failed: {e}")))?
        .map_err(|msg| ApiError::invalid(param, format!("{param} is not a schema this server can follow: {msg}")))
}

async fn submit(
    s: &Shared,
    prompt: Vec<u32>,
    plan: &Plan,
    top_logprobs: Option<usize>,
) -> Result<(UnboundedReceiver<Event>, usize), ApiError> {
    let ctx = s.model.lm().context_len();
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "the prompt is empty"));
    }
    let room = ctx.saturating_sub(prompt.len());
    if room == 0 {
        let mut e = ApiError::invalid(
            "messages",
            format!("the prompt has {} tokens but the model's context is {ctx}; shorten it", prompt.len()),
        );
        e.code = Some("context_length_exceeded");
        return Err(e);
    }
    let max_tokens = match plan.max_tokens {
        Some(n) if n > room => {
            let mut e = ApiError::invalid(
                "max_tokens",
                format!(
                    "max_tokens is {n} but the prompt ({} tokens) leaves room for {room} in the context of {ctx}",
                    prompt.len()
                ),
            );
            e.code = Some("context_length_exceeded");
            return Err(e);
        }
        Some(n) => n,
        None => room,
    };
    let constraint = match &plan.format {
        Some(f) => Some(constraint(s, f).await?),
        None => None,
    };
    let (tx, rx) = unbounded_channel();
    let prompt_len = prompt.len();
    let job = Job {
        prompt,
        max_tokens,
        params: plan.params,
        seed: plan.seed,
        stops: plan.stops.clone(),
        top_logprobs,
        constraint,
        events: tx,
    };
    match s.scheduler.submit(job) {
        Ok(()) => Ok((rx, prompt_len)),
        Err(e @ SubmitError::Busy(_)) => Err(ApiError::status(StatusCode::TOO_MANY_REQUESTS, e.to_string())),
        Err(e @ SubmitError::ShuttingDown) => Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e @ SubmitError::TooLong { .. }) => {
            let mut err = ApiError::invalid("messages", e.to_string());
            err.code = Some("context_length_exceeded");
            Err(err)
        }
    }
}

/// Everything a non-streamed reply needs, gathered from the events.
struct Collected {
    text: String,
    logprobs: Vec<TokenLogprob>,
    finish: &'static str,
    prompt_tokens: usize,
    completion_tokens: usize,
    cached_tokens: usize,
}

async fn collect(mut rx: UnboundedReceiver<Event>) -> Result<Collected, ApiError> {
    let mut c = Collected {
        text: String::new(),
        logprobs: Vec::new(),
        finish: "stop",
        prompt_tokens: 0,
        completion_tokens: 0,
        cached_tokens: 0,
    };
    while let Some(e) = rx.recv().await {
        match e {
            Event::Text { text, logprobs } => {
                c.text.push_str(&text);
                c.logprobs.extend(logprobs);
            }
            Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                c.finish = api::finish_reason(finish);
                c.prompt_tokens = prompt_tokens;
                c.completion_tokens = completion_tokens;
                c.cached_tokens = cached_tokens;
                return Ok(c);
            }
            Event::Failed(m) => return Err(ApiError::status(StatusCode::SERVICE_UNAVAILABLE, m)),
        }
    }
    Err(ApiError::status(StatusCode::INTERNAL_SERVER_ERROR, "the engine ended the request without an answer"))
}

fn sse(v: &Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

/// Streams events as SSE chunks: `first` opens, `piece` wraps text and log-probabilities,
/// `last` closes with the finish reason; then the usage chunk when asked, then `[DONE]`.
fn stream_response(
    rx: UnboundedReceiver<Event>,
    include_usage: bool,
    first: Option<Value>,
    piece: impl Fn(&str, &[TokenLogprob], usize) -> Value + Send + Sync + 'static,
    last: impl Fn(&'static str) -> Value + Send + Sync + 'static,
    usage_chunk: impl Fn(Value) -> Value + Send + Sync + 'static,
) -> Response {
    struct Fmt<P, L, U> {
        piece: P,
        last: L,
        usage: U,
        include_usage: bool,
    }
    let fmt = Arc::new(Fmt { piece, last, usage: usage_chunk, include_usage });
    // State: the channel, the opening chunk still to send, the text length so far, done.
    let stream = futures_util::stream::unfold(
        (rx, first, 0usize, false, fmt),
        |(mut rx, first, offset, done, fmt)| async move {
            if done {
                return None;
            }
            if let Some(f) = first {
                return Some((vec![sse(&f)], (rx, None, offset, false, fmt)));
            }
            match rx.recv().await? {
                Event::Text { text, logprobs } => {
                    let out = vec![sse(&(fmt.piece)(&text, &logprobs, offset))];
                    Some((out, (rx, None, offset + text.len(), false, fmt)))
                }
                Event::Done { finish, prompt_tokens, completion_tokens, cached_tokens } => {
                    let mut out = vec![sse(&(fmt.last)(api::finish_reason(finish)))];
                    if fmt.include_usage {
                        out.push(sse(&(fmt.usage)(api::usage(prompt_tokens, completion_tokens, cached_tokens))));
                    }
                    out.push(Ok(SseEvent::default().data("[DONE]")));
                    Some((out, (rx, None, offset, true, fmt)))
                }
                Event::Failed(m) => {
                    let e = ApiError::status(StatusCode::SERVICE_UNAVAILABLE, m);
                    let out = vec![sse(&e.body()), Ok(SseEvent::default().data("[DONE]"))];
                    Some((out, (rx, None, offset, true, fmt)))
                }
            }
        },
    );
    use futures_util::StreamExt;
    let flat = stream.flat_map(futures_util::stream::iter);
    Sse::new(flat).keep_alive(KeepAlive::default()).into_response()
}

async fn chat_completions(
    State(s): State<Shared>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: api::GenRequest = api::parse(&b)?;
    let plan = api::plan(&req, &s.opts.model_id)?;
    let (messages, top) = api::chat_parts(&req)?;
    let text = s.model.render_chat(&messages).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let prompt = s.model.encode(&text, true).map_err(|e| ApiError::invalid("messages", e.to_string()))?;
    let (rx, _) = submit(&s, prompt, &plan, top).await?;
    let (id, created, model) = (request_id("chatcmpl"), now(), s.opts.model_id.clone());
    if plan.stream {
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |choices: Value| json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": model, "choices": choices})
        };
        let (c1, c2, c3, c4) = (chunk.clone(), chunk.clone(), chunk.clone(), chunk);
        let want_lp = top.is_some();
        return Ok(stream_response(
            rx,
            plan.include_usage,
            Some(c1(
                json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]),
            )),
            move |text, lps, _| {
                let lp = if want_lp { json!({"content": api::chat_logprobs(lps)}) } else { Value::Null };
                c2(json!([{"index": 0, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]))
            },
            move |finish| c3(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": finish}])),
            move |usage| {
                let mut v = c4(json!([]));
                v["usage"] = usage;
                v
            },
        ));
    }
    let c = collect(rx).await?;
    let logprobs = if top.is_some() { json!({"content": api::chat_logprobs(&c.logprobs)}) } else { Value::Null };
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "logprobs": logprobs, "finish_reason": c.finish}],
        "usage": api::usage(c.prompt_tokens, c.completion_tokens, c.cached_tokens),
    }))
    .into_response())
}

async fn completions(
    State(s): State<Shared>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let b = body(b)?;
    let req: api::GenRequest = api::parse(&b)?;
    let plan = api::plan(&req, &s.opts.model_id)?;
    let top = api::completion_top(&req)?;
    let vocab = s.model.lm().vocab_size();
    let Some(prompt) = &req.prompt else {
        return Err(ApiError::invalid("prompt", "prompt is required"));
    };
    let prompt = match prompt {
        api::Prompt::Text(t) => s.model.encode(t, false),
        api::Prompt::Texts(v) if v.len() == 1 => s.model.encode(&v[0], false),
        api::Prompt::Texts(v) => {
            return Err(ApiError::invalid("prompt", format!("one prompt per request is served, not {}", v.len())))
        }
        api::Prompt::Ids(ids) => {
            let mut out = Vec::with_capacity(ids.len());
            for (i, &id) in ids.iter().enumerate() {
                if id < 0 || id as usize >= vocab {
                    return Err(ApiError::invalid(
                        &format!("prompt[{i}]"),
                        format!("prompt[{i}]: token id {id} is outside the vocabulary (0..{vocab})"),
                    ));
                }
                out.push(id as u32);
            }
            Ok(out)
        }
    }
    .map_err(|e| ApiError::invalid("prompt", e.to_string()))?;
    let (rx, _) = submit(&s, prompt, &plan, top).await?;
    let (id, created, model) = (request_id("cmpl"), now(), s.opts.model_id.clone());
    if plan.stream {
        let chunk = {
            let (id, model) = (id.clone(), model.clone());
            move |choices: Value| json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices})
        };
        let (c2, c3, c4) = (chunk.clone(), chunk.clone(), chunk);
        let want_lp = top.is_some();
        return Ok(stream_response(
            rx,
            plan.include_usage,
            None,
            move |text, lps, offset| {
                let lp = if want_lp { api::completion_logprobs(lps, offset) } else { Value::Null };
                c2(json!([{"index": 0, "text": text, "logprobs": lp, "finish_reason": null}]))
            },
            move |finish| c3(json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": finish}])),
            move |usage| {
                let mut v = c4(json!([]));
                v["usage"] = usage;
                v
            },
        ));
    }
    let c = collect(rx).await?;
    let logprobs = if top.is_some() { api::completion_logprobs(&c.logprobs, 0) } else { Value::Null };
    Ok(Json(json!({
        "id": id, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": c.text, "logprobs": logprobs, "finish_reason": c.finish}],
        "usage": api::usage(c.prompt_tokens, c.completion_tokens, c.cached_tokens),
    }))
    .into_response())
}

#[derive(Deserialize)]
struct TokenizeRequest {
    /// The text (llama.cpp's name).
    content: Option<String>,
    /// The text (vLLM's name).
    prompt: Option<String>,
    /// Parse special tokens written in the text and put BOS first.
    #[serde(default)]
    add_special: bool,
}

async fn tokenize(
    State(s): State<Shared>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let req: TokenizeRequest = api::parse(&b)?;
    let Some(text) = req.content.or(req.prompt) else {
        return Err(ApiError::invalid("content", "content (the text to tokenize) is required"));
    };
    let ids = if req.add_special { s.model.encode(&text, true) } else { s.model.vocab.encode(&text, false) }
        .map_err(|e| ApiError::invalid("content", e.to_string()))?;
    Ok(Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": s.model.lm().context_len()})))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<i64>,
}

async fn detokenize(
    State(s): State<Shared>,
    b: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let b = body(b)?;
    let req: DetokenizeRequest = api::parse(&b)?;
    let vocab = s.model.lm().vocab_size();
    let mut ids = Vec::with_capacity(req.tokens.len());
    for (i, &t) in req.tokens.iter().enumerate() {
        if t < 0 || t as usize >= vocab {
            return Err(ApiError::invalid(
                &format!("tokens[{i}]"),
                format!("tokens[{i}]: id {t} is outside the vocabulary (0..{vocab})"),
            ));
        }
        ids.push(t as u32);
    }
    let text = s.model.vocab.decode(&ids).map_err(|e| ApiError::invalid("tokens", e.to_string()))?;
    Ok(Json(json!({"content": text, "prompt": text})))
}

async fn metrics(State(s): State<Shared>) -> impl IntoResponse {
    let st = s.scheduler.stats();
    let g = |a: &std::sync::atomic::AtomicUsize| a.load(Ordering::Relaxed);
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP yuanli_{name} {help}\n# TYPE yuanli_{name} {kind}\nyuanli_{name} {value}\n"));
    };
    metric("requests_running", "gauge", "Sequences in the running batch.", g(&st.running).to_string());
    metric(
        "requests_waiting",
        "gauge",
        "Requests waiting for a slot (preempted ones included).",
        g(&st.waiting).to_string(),
    );
    metric("requests_finished_total", "counter", "Requests that ended (any way).", c(&st.finished).to_string());
    metric("prompt_tokens_total", "counter", "Prompt tokens read.", c(&st.prompt_tokens).to_string());
    metric("generation_tokens_total", "counter", "Tokens generated.", c(&st.generated_tokens).to_string());
    metric("kv_blocks_used", "gauge", "KV cache blocks in use.", g(&st.kv_blocks_used).to_string());
    metric("kv_blocks_total", "gauge", "KV cache blocks in the pool.", g(&st.kv_blocks_total).to_string());
    metric("preemptions_total", "counter", "Sequences preempted for KV room.", c(&st.preemptions).to_string());
    metric(
        "prefix_cache_hit_tokens_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        c(&st.prefix_hit_tokens).to_string(),
    );
    metric("prefix_cache_blocks", "gauge", "KV blocks held by the prefix cache.", g(&st.prefix_blocks).to_string());
    metric("engine_steps_total", "counter", "Batched engine steps.", c(&st.steps).to_string());
    out.push_str("# HELP yuanli_time_to_first_token_seconds From request arrival to its first generated token.\n");
    out.push_str("# TYPE yuanli_time_to_first_token_seconds histogram\n");
    for (b, le) in st.ttft_buckets.iter().zip(scheduler::TTFT_BUCKETS) {
        out.push_str(&format!("yuanli_time_to_first_token_seconds_bucket{{le=\"{le}\"}} {}\n", c(b)));
    }
    out.push_str(&format!("yuanli_time_to_first_token_seconds_bucket{{le=\"+Inf\"}} {}\n", c(&st.ttft_count)));
    out.push_str(&format!("yuanli_time_to_first_token_seconds_sum {}\n", c(&st.ttft_sum_us) as f64 / 1e6));
    out.push_str(&format!("yuanli_time_to_first_token_seconds_count {}\n", c(&st.ttft_count)));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
