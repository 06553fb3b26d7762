//! The web chat at `/` in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! Selenium from PyPI in `bench/.venv`): tools/reference/browser_chat.py types a message,
//! sees the answer stream in and stops a long one. Skips locally without the model, the
//! browser or Selenium; fails under `CI=true`. `YUANLI_SCREENSHOT=PATH` keeps a screenshot.

mod common;

use std::sync::Arc;

use common::{root, skip, start};
use yuanli_infer::{Model, OpenOptions};
use yuanli_serve::ServeOpts;

fn python_with_selenium() -> Option<String> {
    let py = root().join("bench/.venv/bin/python").display().to_string();
    let ok = std::process::Command::new(&py).args(["-c", "import selenium"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

#[test]
fn the_web_chat_streams_an_answer_in_a_real_browser() {
    let path = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        return skip("models/SmolLM2-135M-Instruct.Q4_1.gguf is missing (bash tools/fetch_models.sh)");
    }
    let has = |bin: &str| std::process::Command::new("which").arg(bin).output().is_ok_and(|o| o.status.success());
    if !(has("chromium") && has("chromedriver")) {
        return skip("no chromium/chromedriver (apt-get install chromium chromium-driver)");
    }
    let Some(python) = python_with_selenium() else {
        return skip("no Selenium in bench/.venv (pip install -r bench/requirements-serve.txt)");
    };
    let model = Arc::new(Model::open(&path, OpenOptions::default()).unwrap());
    let opts = ServeOpts { model_id: "SmolLM2-135M-Instruct.Q4_1".into(), ..ServeOpts::default() };
    let addr = start(model, opts);
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root().join("tools/reference/browser_chat.py")).arg(format!("http://{addr}/"));
    if let Ok(shot) = std::env::var("YUANLI_SCREENSHOT") {
        cmd.args(["--screenshot", &shot]);
    }
    let out = cmd.output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "browser_chat.py failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("all checks passed"), "{stdout}");
}
