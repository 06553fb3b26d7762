"""Load test of `yuanli serve` on loopback (and of llama.cpp's `llama-server` on the same load,
when given one): N concurrent streaming chat clients, greedy, M tokens each.

Reports, per server: aggregate generated tokens/s, one client alone (the median of the requests
run one at a time), time to first token p50/p95,
whether every concurrent reply equals the same request served alone, errors, the server's peak
memory (VmHWM); and the prefix cache: time to first token of a request with a ~500-token system
prompt, then of a second request sharing it.

Usage: python3 bench/serve.py [--binary target/release/yuanli] [--model M.gguf] [--clients 16]
       [--tokens 64] [--threads 2] [--also-variant] [--llama-server PATH [--llama-arg=--no-repack]]
(stdlib only; bounded: every request has a timeout and the run a fixed number of requests.)
"""
import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time

TOPICS = ["the sea", "mountains", "a city at night", "bread", "rain", "a library", "trains", "winter",
          "bees", "the moon", "a garden", "music", "rivers", "clocks", "deserts", "friendship",
          "snow", "a market", "birds", "the sun", "forests", "a bridge", "tea", "stars"]


def stream_chat(port, messages, max_tokens, timeout=300):
    """One streaming request: (text, time to first token, seconds, completion tokens, error)."""
    body = json.dumps({"messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            return "", None, 0, 0, f"status {r.status}: {r.read()[:200]!r}"
        text, ttft, tokens = [], None, 0
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            for ch in chunk.get("choices", []):
                piece = ch.get("delta", {}).get("content")
                if piece:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    text.append(piece)
        return "".join(text), ttft, time.perf_counter() - t0, tokens, None
    except Exception as e:  # noqa: BLE001 - reported as an error of the run
        return "", None, time.perf_counter() - t0, 0, repr(e)


def wait_ready(port, proc, secs=120):
    t = time.time()
    while time.time() - t < secs:
        if proc.poll() is not None:
            sys.exit(f"the server exited: {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    sys.exit("the server did not start")


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def run_load(name, port, pid, clients, tokens):
    prompts = [[{"role": "user", "content": f"Write a short poem about {TOPICS[i % len(TOPICS)]}."}]
               for i in range(clients)]
    alone = [stream_chat(port, p, tokens) for p in prompts]
    one = alone[0]
    results = [None] * clients

    def worker(i):
        results[i] = stream_chat(port, prompts[i], tokens)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [r[4] for r in results if r[4]] + [a[4] for a in alone if a[4]]
    same = sum(1 for r, a in zip(results, alone) if r[0] == a[0])
    total = sum(r[3] for r in results)
    ttfts = [r[1] for r in results if r[1] is not None]
    # One client alone: the median over the requests run one at a time (each a fresh prompt).
    single = statistics.median(a[3] / a[2] for a in alone if a[2] and not a[4])
    agg = total / wall
    print(f"{name}: {clients} clients x {tokens} tokens: aggregate {agg:.1f} tok/s ({total} tokens in {wall:.1f} s); "
          f"one client alone {single:.1f} tok/s (median of {len(alone)}; first ttft {one[1] or float('nan'):.2f} s); "
          f"ttft p50 {pct(ttfts, 50):.2f} s p95 {pct(ttfts, 95):.2f} s; "
          f"replies equal to alone {same}/{clients}; errors {len(errors)}; peak RSS {peak_rss_mb(pid):.0f} MB")
    for e in errors[:3]:
        print("  error:", e)
    return {"aggregate_tok_s": agg, "single_tok_s": single, "ttft_p50": pct(ttfts, 50), "ttft_p95": pct(ttfts, 95),
            "same": same, "errors": len(errors), "peak_rss_mb": peak_rss_mb(pid)}


def prefix_hits(port):
    """`yuanli_prefix_cache_hit_tokens_total` from the server's /metrics (None where it has none)."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/metrics")
        r = c.getresponse()
        text = r.read().decode("utf-8", "replace") if r.status == 200 else ""
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("yuanli_prefix_cache_hit_tokens_total "):
            return int(float(line.split()[1]))
    return None


def run_prefix(name, port):
    system = ("You are a helpful assistant for a public library. " +
              "Answer questions about opening hours, borrowing rules, late fees, events and the catalogue. " * 40)
    ask = lambda q: stream_chat(port, [{"role": "system", "content": system}, {"role": "user", "content": q}], 4)
    first = ask("When do you open on Saturdays?")
    hits = prefix_hits(port)
    second = ask("How many books can I borrow?")
    if first[1] and second[1]:
        after = prefix_hits(port)
        shown = f"; /metrics: prompt tokens from the prefix cache +{after - hits}" if None not in (hits, after) else ""
        print(f"{name}: shared system prompt: ttft first {first[1]:.3f} s, second {second[1]:.3f} s "
              f"= {second[1] / first[1]:.2f}x{shown}")
        return second[1] / first[1]
    print(f"{name}: prefix test failed: {first[4] or second[4]}")
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/yuanli")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--port", type=int, default=8089)
    ap.add_argument("--kv-tokens", type=int, default=32768)
    ap.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary, for the same load")
    ap.add_argument("--llama-arg", action="append", default=[],
                    help="an extra argument for llama-server (repeatable), e.g. --llama-arg=--no-repack where "
                         "its AMX kernels crash (seen on an AMX Xeon, llama.cpp in llama-cpp-python 0.3.36)")
    ap.add_argument("--also-variant", action="store_true",
                    help="also run `yuanli serve --batch-invariant false` (kernels chosen by batch size) on the load")
    a = ap.parse_args()

    yuanli = [a.binary, "--threads", str(a.threads), "serve", "--model", a.model, "--parallel", str(a.clients),
              "--kv-tokens", str(a.kv_tokens)]
    servers = [("yuanli", yuanli)]
    if a.also_variant:
        servers.append(("yuanli (batch-invariant off)", yuanli + ["--batch-invariant", "false"]))
    if a.llama_server:
        servers.append(("llama.cpp", [a.llama_server, "-m", a.model, "-t", str(a.threads), "-np", str(a.clients),
                                      "-c", str(a.kv_tokens), "-cb"] + a.llama_arg))
    for i, (_, cmd) in enumerate(servers):
        cmd += ["--port", str(a.port + i)]
    out = {}
    for i, (name, cmd) in enumerate(servers):
        port = a.port + i
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_ready(port, proc)
            out[name] = run_load(name, port, proc.pid, a.clients, a.tokens)
            out[name]["prefix_ttft_ratio"] = run_prefix(name, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    if "llama.cpp" in out:
        l = out["llama.cpp"]
        for name in (n for n in out if n.startswith("yuanli")):
            print(f"ratio {name} / llama.cpp aggregate tok/s: {out[name]['aggregate_tok_s'] / l['aggregate_tok_s']:.2f}x")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
