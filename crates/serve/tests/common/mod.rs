//! What the server tests share: the workspace root, the skip rule, a server on a free port.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use yuanli_infer::Model;
use yuanli_serve::{ServeOpts, Server};

/// The workspace root.
pub(crate) fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Skips locally; under `CI=true` a skip is a failure.
pub(crate) fn skip(why: &str) {
    assert!(std::env::var("CI").map_or(true, |v| v != "true"), "cannot run under CI=true: {why}");
    eprintln!("SKIP: {why}");
}

/// Serves `model` on a free port of 127.0.0.1 from a runtime thread of its own (it lives as
/// long as the test process).
pub(crate) fn start(model: Arc<Model>, opts: ServeOpts) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            Server::new(model, opts).unwrap().run(listener, std::future::pending()).await.unwrap();
        });
    });
    rx.recv().unwrap()
}
