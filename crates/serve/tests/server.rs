//! `yuanli serve` over a real socket, on a small random LLaMA with a character vocabulary:
//! OpenAI's response shapes, streaming, stop strings, log-probabilities, every error status,
//! and continuous batching (with preemption) answering each request exactly as it would be
//! answered alone.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::sync::Arc;

use serde_json::{json, Value};
use yuanli_infer::{GenerateOptions, Model};
use yuanli_models::{Message, SamplingParams};
use yuanli_serve::{SchedulerOpts, ServeOpts};

fn model(ctx: usize) -> Model {
    yuanli_infer::testing::char_model(ctx, &[])
}

/// The tiny model served on a free port.
fn start(opts: ServeOpts) -> (SocketAddr, Arc<Model>) {
    let m = Arc::new(model(256));
    (common::start(m.clone(), opts), m)
}

fn opts() -> ServeOpts {
    ServeOpts { model_id: "tiny".into(), ..ServeOpts::default() }
}

/// One HTTP/1.1 request; the status and the body (de-chunked).
fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut out = String::new();
        let mut r = rest;
        loop {
            let (size, after) = r.split_once("\r\n").unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            r = &after[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let (st, b) = http(addr, "POST", path, &[], body.to_string().as_bytes());
    (st, serde_json::from_str(&b).unwrap_or(Value::String(b)))
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: ").or_else(|| l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

/// What the model answers alone, greedily (the reference for every batched answer).
fn alone(m: &Model, prompt_ids: &[u32], n: usize, stops: &[&str]) -> String {
    let o = GenerateOptions {
        max_new_tokens: n,
        params: SamplingParams::greedy(),
        seed: 1,
        stops: stops.iter().map(|s| s.to_string()).collect(),
    };
    m.generate_text(prompt_ids, &o, &mut |_| ControlFlow::Continue(())).unwrap().text
}

fn chat_ids(m: &Model, user: &str) -> Vec<u32> {
    m.encode(&m.render_chat(&[Message::new("user", user)]).unwrap(), true).unwrap()
}

#[test]
fn chat_completion_has_openai_shape_and_equals_the_model_alone() {
    let (addr, m) = start(opts());
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 12, "temperature": 0});
    let (st, v) = post(addr, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let ids = chat_ids(&m, "hello");
    assert_eq!(v["choices"][0]["message"]["content"], alone(&m, &ids, 12, &[]));
    assert_eq!(v["usage"]["prompt_tokens"], ids.len());
    assert_eq!(v["usage"]["completion_tokens"], 12);
    assert_eq!(v["usage"]["total_tokens"], ids.len() + 12);

    // Streamed: a role chunk, content chunks that add up to the same text, a finish chunk, the
    // usage chunk (asked for), then [DONE].
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let (st, body) = http(addr, "POST", "/v1/chat/completions", &[], sreq.to_string().as_bytes());
    assert_eq!(st, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(text, v["choices"][0]["message"]["content"].as_str().unwrap());
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 12);
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
}

#[test]
fn stop_strings_seeds_logprobs_and_completions() {
    let (addr, m) = start(opts());
    let ids = chat_ids(&m, "abc");
    let full = alone(&m, &ids, 20, &[]);
    // A stop string taken from the middle of the greedy answer cuts it there.
    let stop: String = full.chars().skip(5).take(2).collect();
    let req =
        json!({"messages": [{"role": "user", "content": "abc"}], "max_tokens": 20, "temperature": 0, "stop": [stop]});
    let (st, v) = post(addr, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], alone(&m, &ids, 20, &[&stop]));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // The same seed gives the same sample; temperature 1.5 with two seeds differs somewhere.
    let sample = |seed: u64| {
        let r = json!({"messages": [{"role": "user", "content": "abc"}], "max_tokens": 24, "temperature": 1.5, "seed": seed});
        post(addr, "/v1/chat/completions", &r).1["choices"][0]["message"]["content"].as_str().unwrap().to_string()
    };
    assert_eq!(sample(7), sample(7));
    assert_ne!(sample(7), sample(8));

    // Log-probabilities: one entry per token, alternatives sorted, the greedy token first.
    let r = json!({"messages": [{"role": "user", "content": "abc"}], "max_tokens": 5, "temperature": 0, "logprobs": true, "top_logprobs": 3});
    let (st, v) = post(addr, "/v1/chat/completions", &r);
    assert_eq!(st, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    for t in content {
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        assert_eq!(top[0]["token"], t["token"]);
        assert!((top[0]["logprob"].as_f64().unwrap() - t["logprob"].as_f64().unwrap()).abs() < 1e-6);
        assert!(top[0]["logprob"].as_f64() >= top[1]["logprob"].as_f64());
        assert!(t["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Plain completions, on text and on token ids.
    let prompt_ids = m.encode("The cat", false).unwrap();
    let r = json!({"prompt": "The cat", "max_tokens": 10, "temperature": 0});
    let (st, v) = post(addr, "/v1/completions", &r);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], alone(&m, &prompt_ids, 10, &[]));
    let r = json!({"prompt": prompt_ids, "max_tokens": 10, "temperature": 0, "logprobs": 2});
    let (_, w) = post(addr, "/v1/completions", &r);
    assert_eq!(w["choices"][0]["text"], v["choices"][0]["text"]);
    assert_eq!(w["choices"][0]["logprobs"]["tokens"].as_array().unwrap().len(), 10);
}

#[test]
fn concurrent_requests_with_preemption_each_equal_the_request_alone() {
    // A pool of 96 positions for 6 requests of ~50 positions each, 4 at a time: requests wait,
    // and running ones are preempted and recomputed when the pool runs out.
    let mut o = opts();
    o.scheduler = SchedulerOpts { parallel: 4, kv_tokens: 96, step_tokens: 16, ..SchedulerOpts::default() };
    let (addr, m) = start(o);
    let users = ["one", "second prompt", "3", "fourth, longer prompt here", "v", "sixth"];
    let handles: Vec<_> = users
        .iter()
        .map(|u| {
            let u = u.to_string();
            std::thread::spawn(move || {
                let r = json!({"messages": [{"role": "user", "content": u}], "max_tokens": 30, "temperature": 0, "stream": true});
                let (st, body) = http(addr, "POST", "/v1/chat/completions", &[], r.to_string().as_bytes());
                assert_eq!(st, 200, "{body}");
                let data = sse_data(&body);
                data[..data.len() - 1]
                    .iter()
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
                    .collect::<String>()
            })
        })
        .collect();
    for (u, h) in users.iter().zip(handles) {
        let got = h.join().unwrap();
        assert_eq!(got, alone(&m, &chat_ids(&m, u), 30, &[]), "request {u:?}");
    }
    let (st, metrics) = http(addr, "GET", "/metrics", &[], b"");
    assert_eq!(st, 200);
    let value = |name: &str| -> f64 {
        metrics.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).unwrap().parse().unwrap()
    };
    assert_eq!(value("yuanli_generation_tokens_total"), 180.0);
    assert!(value("yuanli_preemptions_total") >= 1.0, "{metrics}");
    assert_eq!(value("yuanli_requests_running"), 0.0);
    assert_eq!(value("yuanli_time_to_first_token_seconds_count"), 6.0);
}

#[test]
fn every_bad_request_gets_its_status_and_names_the_field() {
    let mut o = opts();
    o.max_body_bytes = 2000;
    let (addr, _) = start(o);
    let chat = |body: &str| {
        let (st, b) = http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes());
        (st, serde_json::from_str::<Value>(&b).unwrap_or(Value::String(b)))
    };
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (format!(r#"{{{msgs},"max_tokens":"many"}}"#), 400, Some("max_tokens")),
        (format!(r#"{{{msgs},"max_tokens":-3}}"#), 400, Some("max_tokens")),
        (format!(r#"{{{msgs},"max_tokens":100000000000}}"#), 400, Some("max_tokens")),
        (format!(r#"{{{msgs},"temperature":7}}"#), 400, Some("temperature")),
        (format!(r#"{{{msgs},"top_logprobs":3}}"#), 400, Some("top_logprobs")),
        (format!(r#"{{{msgs},"n":2}}"#), 400, Some("n")),
        (format!(r#"{{{msgs},"model":"gpt-9"}}"#), 404, Some("model")),
        (format!(r#"{{{msgs},"response_format":{{"type":"json_object"}}}}"#), 400, Some("response_format")), // no EOS
        (r#"{"messages":[{"role":"wizard","content":"hi"}]}"#.into(), 400, Some("messages[0].role")),
        (r#"{"messages":[{"role":"user","content":5}]}"#.into(), 400, Some("messages[0].content")),
        (r#"{"messages":[]}"#.into(), 400, Some("messages")),
        (format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(300)), 400, Some("messages")),
        (format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(3000)), 413, None),
    ];
    for (body, status, param) in cases {
        let (st, v) = chat(&body);
        assert_eq!(st, status, "{body:.80}: {v}");
        let err = &v["error"];
        assert!(err["message"].as_str().is_some_and(|m| !m.is_empty()), "{body:.80}: {v}");
        assert!(err["type"].is_string(), "{v}");
        if let Some(p) = param {
            assert_eq!(err["param"], p, "{body:.80}: {v}");
        }
    }
    let long = format!(r#"{{"messages":[{{"role":"user","content":"{}"}}]}}"#, "x".repeat(300));
    assert_eq!(chat(&long).1["error"]["code"], "context_length_exceeded");
    let (st, v) = post(addr, "/nope", &json!({}));
    assert_eq!((st, v["error"]["type"].as_str()), (404, Some("not_found_error")));
    // The server still answers after all that.
    let (st, _) = chat(&format!(r#"{{{msgs},"max_tokens":3}}"#));
    assert_eq!(st, 200);
}

#[test]
fn api_key_queue_limit_tokenizer_and_models() {
    let mut o = opts();
    o.api_key = Some("sekrit".into());
    let (addr, m) = start(o);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
    let (st, b) = http(addr, "POST", "/v1/chat/completions", &[], body.as_bytes());
    assert_eq!(st, 401, "{b}");
    let (st, b) = http(addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer wrong")], body.as_bytes());
    assert_eq!(st, 401, "{b}");
    let (st, _) = http(addr, "POST", "/v1/chat/completions", &[("Authorization", "Bearer sekrit")], body.as_bytes());
    assert_eq!(st, 200);
    let (st, _) = http(addr, "GET", "/health", &[], b"");
    assert_eq!(st, 200, "health needs no key");
    let key = [("Authorization", "Bearer sekrit")];
    let (st, b) = http(addr, "GET", "/v1/models", &key, b"");
    assert_eq!(st, 200);
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["data"][0]["id"], "tiny");
    let (_, b) = http(addr, "POST", "/tokenize", &key, json!({"content": "hey"}).to_string().as_bytes());
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["tokens"], json!(m.encode("hey", false).unwrap()));
    let (_, b) = http(addr, "POST", "/detokenize", &key, json!({"tokens": v["tokens"]}).to_string().as_bytes());
    assert_eq!(serde_json::from_str::<Value>(&b).unwrap()["content"], "hey");
    let (st, _) = http(addr, "POST", "/detokenize", &key, json!({"tokens": [100000]}).to_string().as_bytes());
    assert_eq!(st, 400);

    // No room to wait: 429.
    let mut o = opts();
    o.scheduler.max_waiting = 0;
    let (addr, _) = start(o);
    let (st, v) = post(addr, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(st, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[test]
fn a_shared_system_prompt_is_read_once_and_answers_stay_the_same() {
    let (addr, m) = start(opts());
    let system = "You are a terse assistant. ".repeat(5); // 135 characters: 8 full blocks of 16
    let ask = |user: &str| {
        let r = json!({"messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                       "max_tokens": 8, "temperature": 0});
        let (st, v) = post(addr, "/v1/chat/completions", &r);
        assert_eq!(st, 200, "{v}");
        v
    };
    let reference = |user: &str| {
        let msgs = [Message::new("system", &system), Message::new("user", user)];
        let ids = m.encode(&m.render_chat(&msgs).unwrap(), true).unwrap();
        alone(&m, &ids, 8, &[])
    };
    let first = ask("first question");
    assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let second = ask("another one");
    let cached = second["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
    // "<system>" + 135 characters + "|<user>a" share the first 9 blocks (144 positions).
    assert_eq!(cached, 144, "{second}");
    assert_eq!(second["choices"][0]["message"]["content"], reference("another one"));
    assert_eq!(first["choices"][0]["message"]["content"], reference("first question"));
    // The same request again reuses all but its last block.
    let again = ask("another one");
    assert_eq!(again["choices"][0]["message"]["content"], second["choices"][0]["message"]["content"]);
    assert!(again["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap() >= cached);
    let (_, metrics) = http(addr, "GET", "/metrics", &[], b"");
    assert!(metrics.contains("yuanli_prefix_cache_hit_tokens_total"), "{metrics}");
}

#[test]
fn bad_requests_do_not_disturb_a_running_stream() {
    let (addr, m) = start(opts());
    let body =
        json!({"messages": [{"role": "user", "content": "long"}], "max_tokens": 120, "temperature": 0, "stream": true});
    let stream =
        std::thread::spawn(move || http(addr, "POST", "/v1/chat/completions", &[], body.to_string().as_bytes()));
    for bad in [
        "{oops".to_string(),
        json!({"messages": [{"role": "user", "content": "x".repeat(400)}]}).to_string(),
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}).to_string(),
        json!({"messages": "nope"}).to_string(),
    ] {
        let (st, _) = http(addr, "POST", "/v1/chat/completions", &[], bad.as_bytes());
        assert_eq!(st, 400);
    }
    let (st, body) = stream.join().unwrap();
    assert_eq!(st, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, alone(&m, &chat_ids(&m, "long"), 120, &[]));
}

/// Graceful shutdown (what SIGTERM triggers): a stream already running ends complete, and the
/// server stops taking connections.
#[test]
fn shutdown_lets_running_streams_finish() {
    // A long answer (3,000 tokens), so that the shutdown comes while it is being generated.
    let m = Arc::new(model(4096));
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = m.clone();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let stop = async move {
                let _ = stop_rx.await;
            };
            yuanli_serve::Server::new(served, opts()).unwrap().run(listener, stop).await.unwrap();
        });
    });
    let addr = rx.recv().unwrap();
    // Open a stream and read its first chunk, so that it is surely running.
    let mut s = TcpStream::connect(addr).unwrap();
    let body =
        json!({"messages": [{"role": "user", "content": "bye"}], "max_tokens": 3000, "temperature": 0, "stream": true})
            .to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut first = [0u8; 64];
    let n = s.read(&mut first).unwrap();
    assert!(n > 0);
    stop_tx.send(()).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let all = String::from_utf8_lossy(&first[..n]).to_string() + &String::from_utf8_lossy(&rest);
    assert!(all.contains("data: [DONE]"), "the running stream ended complete: {all:.300}");
    assert!(all.contains("\"finish_reason\":\"length\""), "{all:.300}");
    assert!(all.matches("\"content\":").count() > 2000, "every token was streamed");
    server.join().unwrap();
    assert!(TcpStream::connect(addr).is_err(), "no new connections after shutdown");
}

/// Structured output on the random model (`~` ends a sequence): whatever it samples, the reply
/// parses and follows the schema; an object-only request gives an object; schemas that do not
/// compile are 400s naming the schema, and the server goes on.
#[test]
fn structured_output_always_parses_and_follows_the_schema() {
    let m = Arc::new(yuanli_infer::testing::char_model(256, &['~']));
    let addr = common::start(m, opts());
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"enum": ["ada", "bob", "cy"]},
            "ok": {"type": "boolean"},
            "n": {"type": "integer", "minimum": 0, "maximum": 99},
            "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}
        },
        "required": ["name", "ok", "n", "tags"],
        "additionalProperties": false
    });
    let rf = json!({"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": true}});
    let mut texts = std::collections::HashSet::new();
    for seed in 0..6 {
        let stream = seed % 2 == 1;
        let req = json!({"messages": [{"role": "user", "content": "who?"}], "max_tokens": 120,
                         "temperature": 1.0, "seed": seed, "response_format": rf, "stream": stream});
        let text = if stream {
            let (st, body) = http(addr, "POST", "/v1/chat/completions", &[], req.to_string().as_bytes());
            assert_eq!(st, 200, "{body}");
            let data = sse_data(&body);
            let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
            let finish = chunks.iter().filter_map(|c| c["choices"][0]["finish_reason"].as_str()).next_back();
            assert_eq!(finish, Some("stop"), "seed {seed}: the document ends with the end-of-sequence token");
            chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<String>()
        } else {
            let (st, v) = post(addr, "/v1/chat/completions", &req);
            assert_eq!(st, 200, "{v}");
            assert_eq!(v["choices"][0]["finish_reason"], "stop", "seed {seed}: {v}");
            v["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        };
        let doc: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("seed {seed}: {text:?} does not parse: {e}"));
        let obj = doc.as_object().unwrap_or_else(|| panic!("seed {seed}: {text} is not an object"));
        let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 4, "seed {seed}: {text}");
        assert!(["ada", "bob", "cy"].contains(&obj["name"].as_str().unwrap_or("")), "seed {seed}: {text}");
        assert!(obj["ok"].is_boolean(), "seed {seed}: {text}");
        assert!(obj["n"].as_u64().is_some_and(|n| n <= 99), "seed {seed}: {text}");
        let tags = obj["tags"].as_array().unwrap_or_else(|| panic!("seed {seed}: {text}"));
        assert!(tags.len() <= 3 && tags.iter().all(|t| t == "x" || t == "y"), "seed {seed}: {text}");
        texts.insert(text);
    }
    assert!(texts.len() > 1, "different seeds sample different documents: {texts:?}");

    // json_object: any object; on a random model it may run out of tokens before closing.
    let req = json!({"messages": [{"role": "user", "content": "obj"}], "max_tokens": 60, "temperature": 0,
                     "response_format": {"type": "json_object"}});
    let (st, v) = post(addr, "/v1/chat/completions", &req);
    assert_eq!(st, 200, "{v}");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.starts_with('{'), "{text}");
    if v["choices"][0]["finish_reason"] == "stop" {
        assert!(serde_json::from_str::<Value>(text).is_ok_and(|d| d.is_object()), "{text}");
    }

    // Schemas that cannot be followed, and malformed response_format fields.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frog"}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": 5, "maximum": 1}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"type": "json_schema", "json_schema": {"name": "x", "schema": [1, 2]}}),
            "response_format.json_schema.schema",
        ),
        (json!({"type": "json_schema", "json_schema": {"name": "x"}}), "response_format.json_schema.schema"),
        (json!({"type": "json_schema"}), "response_format.json_schema"),
        (json!({"type": "yaml"}), "response_format.type"),
    ];
    for (rf, param) in bad {
        let req = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "response_format": rf});
        let (st, v) = post(addr, "/v1/chat/completions", &req);
        assert_eq!(st, 400, "{rf}: {v}");
        assert_eq!(v["error"]["param"], param, "{rf}: {v}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| m.contains(param)), "{rf}: {v}");
    }
    let (st, _) =
        post(addr, "/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}));
    assert_eq!(st, 200);
}
