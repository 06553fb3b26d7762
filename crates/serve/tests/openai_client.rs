//! The official `openai` Python client (from PyPI, in `bench/.venv`) runs
//! tools/reference/openai_suite.py against `yuanli serve` on SmolLM2-135M-Instruct: chat and
//! completions, streamed and not, usage, stop strings, seeds, log-probabilities, structured
//! output (json_schema replies validated by the `jsonschema` package, the client's pydantic
//! `parse`, json_object), and the error statuses the client maps to its exceptions (400, 401,
//! 404, 429).
//!
//! Skips locally without the model or the client; fails under `CI=true`.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use common::{root, skip, start};
use yuanli_infer::{Model, OpenOptions};
use yuanli_serve::{SchedulerOpts, ServeOpts};

/// A Python that can import `openai` and `jsonschema`: `$YUANLI_SERVE_PYTHON` or `bench/.venv`.
fn python_with_openai() -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("YUANLI_SERVE_PYTHON").into_iter().collect();
    candidates.push(root().join("bench/.venv/bin/python").display().to_string());
    candidates.into_iter().find(|py| {
        std::process::Command::new(py)
            .args(["-c", "import openai, jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn the_official_openai_client_runs_its_suite() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return skip("models/SmolLM2-135M-Instruct.Q4_1.gguf is missing (bash tools/fetch_models.sh)");
    }
    let Some(python) = python_with_openai() else {
        return skip(
            "no Python with `openai` and `jsonschema` (bench/.venv: pip install -r bench/requirements-serve.txt)",
        );
    };
    let model = Arc::new(Model::open(&path, OpenOptions::default()).unwrap());
    let opts = ServeOpts {
        model_id: "SmolLM2-135M-Instruct.Q4_1".into(),
        scheduler: SchedulerOpts { parallel: 4, kv_tokens: 16_384, ..SchedulerOpts::default() },
        ..ServeOpts::default()
    };
    let open = start(model.clone(), opts.clone());
    let keyed = start(model.clone(), ServeOpts { api_key: Some("k-123".into()), ..opts.clone() });
    let mut full = opts;
    full.scheduler.max_waiting = 0;
    let full = start(model, full);
    let url = |a: SocketAddr| format!("http://{a}/v1");
    let out = std::process::Command::new(python)
        .arg(root().join("tools/reference/openai_suite.py"))
        .args(["--base", &url(open), "--keyed", &url(keyed), "--key", "k-123", "--full", &url(full)])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai_suite.py failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
