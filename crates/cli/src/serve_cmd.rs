//! `yuanli serve`: an OpenAI-compatible HTTP server over one model (crates/serve).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use yuanli_serve::{SchedulerOpts, ServeOpts};

/// Serve a model over HTTP with OpenAI's API: `/v1/chat/completions`, `/v1/completions`
/// (streamed or not), `/v1/models`, `/tokenize`, `/detokenize`, `/metrics`, `/health`.
///
/// Every request is a sequence of one continuously batched engine: each step decodes one token
/// of every running request and reads chunks of waiting prompts in the same batch, so many
/// clients share each pass over the weights; a prompt that begins like an earlier one (a shared
/// system prompt) reuses its cached keys and values. Replies are batch-invariant by default: a
/// greedy reply is the same however many others are served beside it. `response_format`
/// (`json_schema`, `json_object`) constrains sampling so the reply parses and follows the
/// schema. A web chat page is at `http://HOST:PORT/`. Point the official `openai` client at
/// `http://HOST:PORT/v1` (any API key unless --api-key is set).
///
/// Example:
///   yuanli serve --model models/SmolLM2-135M-Instruct.Q4_1.gguf --port 8080
///   curl localhost:8080/v1/chat/completions -H 'content-type: application/json' \
///     -d '{"messages":[{"role":"user","content":"Hello!"}],"max_tokens":32}'
#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    /// A .gguf file, a Hugging Face directory or a yuanli checkpoint.
    #[arg(long)]
    model: PathBuf,
    /// A LoRA adapter (PEFT directory) to apply.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Run a GGUF file's weights dequantized to f32 instead of in place.
    #[arg(long)]
    exact: bool,
    /// Address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests generating at once at most (more wait in the queue).
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Requests allowed to wait for a slot; beyond it requests get 429.
    #[arg(long, default_value_t = 64)]
    max_waiting: usize,
    /// Positions in the KV cache pool, all requests together.
    #[arg(long, default_value_t = 32_768)]
    kv_tokens: usize,
    /// Positions fed to the model per engine step at most (decodes plus prompt chunks).
    #[arg(long, default_value_t = 512)]
    step_tokens: usize,
    /// Require `Authorization: Bearer KEY` (also read from YUANLI_API_KEY).
    #[arg(long, env = "YUANLI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model id clients use (default: the file or directory name).
    #[arg(long)]
    name: Option<String>,
    /// Largest request body, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    max_body_bytes: usize,
    /// Batch-invariant arithmetic (on by default): every reply is bitwise what the same request
    /// gets when it is served alone, however many others share its steps, so a greedy reply
    /// never changes with the load. `--batch-invariant false` lets each matrix product pick
    /// its fastest kernel for the batch size instead (a GEMM for long prompts: a 500-token
    /// prompt is read ~1.7× faster; bf16 tiles for batches on AVX-512 BF16 CPUs), but a reply
    /// may then differ in its last bits — and after a near-tie, in its words — with the load.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    batch_invariant: bool,
}

pub(crate) fn run(a: &ServeArgs) -> Result<()> {
    anyhow::ensure!(a.parallel > 0, "--parallel must be at least 1");
    anyhow::ensure!(a.step_tokens > 0, "--step-tokens must be at least 1");
    anyhow::ensure!(a.kv_tokens > 0, "--kv-tokens must be at least 1");
    let model = crate::llm_cmd::open_model_with(&a.model, a.exact, a.lora.as_deref())?;
    let name = a.name.clone().unwrap_or_else(|| {
        let stem = a.model.file_stem().or(a.model.file_name()).map(|s| s.to_string_lossy().into_owned());
        stem.unwrap_or_else(|| "model".into())
    });
    let opts = ServeOpts {
        model_id: name.clone(),
        api_key: a.api_key.clone(),
        max_body_bytes: a.max_body_bytes,
        scheduler: SchedulerOpts {
            parallel: a.parallel,
            kv_tokens: a.kv_tokens,
            step_tokens: a.step_tokens,
            max_waiting: a.max_waiting,
            batch_invariant: a.batch_invariant,
        },
    };
    if !model.description.is_empty() {
        eprintln!("model: {}", model.description);
    }
    let addr = SocketAddr::new(a.host, a.port);
    yuanli_serve::serve_blocking(Arc::new(model), opts, addr, |at| {
        eprintln!("serving `{name}` on http://{at}/v1 (OpenAI API; GET /health, /metrics); Ctrl-C stops");
    })
    .with_context(|| format!("serving on {addr}"))
}
