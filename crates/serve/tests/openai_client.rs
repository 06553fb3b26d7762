//! The official `openai` Python client (from PyPI, in `bench/.venv`) runs
//! tools/reference/openai_suite.py against `yuanli serve` on SmolLM2-135M-Instruct: chat and
//! completions, streamed and not, usage, stop strings, seeds, log-probabilities, and the error
//! statuses the client maps to its exceptions (400, 401, 404, 429).
//!
//! Skips locally without the model or the client; fails under `CI=true`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use yuanli_infer::{Model, OpenOptions};
use yuanli_serve::{SchedulerOpts, ServeOpts, Server};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "cannot run under CI=true: {why}");
    eprintln!("SKIP: {why}");
}

/// A Python that can import `openai`: `$YUANLI_SERVE_PYTHON` or `bench/.venv`.
fn python_with_openai() -> Option<String> {
    let mut candidates: Vec<String> = std::env::var("YUANLI_SERVE_PYTHON").into_iter().collect();
    candidates.push(root().join("bench/.venv/bin/python").display().to_string());
    candidates.into_iter().find(|py| {
        std::process::Command::new(py).args(["-c", "import openai"]).output().is_ok_and(|o| o.status.success())
    })
}

/// Serves `model` on a free port from a runtime thread of its own.
fn start(model: Arc<Model>, opts: ServeOpts) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            Server::new(model, opts).run(listener, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}

#[test]
fn the_official_openai_client_runs_its_suite() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return skip("models/SmolLM2-135M-Instruct.Q4_1.gguf is missing (bash tools/fetch_models.sh)");
    }
    let Some(python) = python_with_openai() else {
        return skip("no Python with `openai` (bench/.venv: pip install -r bench/requirements-serve.txt)");
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
