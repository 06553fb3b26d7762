"""The official `openai` Python client (from PyPI) against a running `yuanli serve`.

Run by crates/serve/tests/openai_client.rs, which starts three servers on SmolLM2-135M-Instruct:
the open one, one that wants an API key, and one with no room to wait (429). Exits non-zero on
the first failed check, printing what it saw.

Usage: python tools/reference/openai_suite.py --base URL --keyed URL --key KEY --full URL
"""
import argparse
import json
import sys

import jsonschema
import openai
import pydantic


def check(cond, what):
    if not cond:
        print(f"FAILED: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what.splitlines()[0][:100]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--keyed", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--full", required=True)
    a = ap.parse_args()
    c = openai.OpenAI(base_url=a.base, api_key="anything", max_retries=0, timeout=120)

    models = c.models.list().data
    check(len(models) == 1, f"one model listed: {models}")
    mid = models[0].id
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]

    # Chat, not streamed: text, finish reason, usage. Asked twice: the first request leaves the
    # prompt's full blocks in the prefix cache, and the comparisons below are between requests
    # that find the same cached prefix (a different split of the prompt between cache and
    # computation rounds differently, so exact equality is only promised for the same split).
    c.chat.completions.create(model=mid, messages=msgs, max_tokens=24, temperature=0)
    r = c.chat.completions.create(model=mid, messages=msgs, max_tokens=24, temperature=0)
    check(r.usage.prompt_tokens_details.cached_tokens > 0, f"the prefix cache served {r.usage.prompt_tokens_details}")
    text = r.choices[0].message.content
    check(r.object == "chat.completion" and bool(text), f"chat answer: {text!r}")
    check("Paris" in text, f"the model knows: {text!r}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish_reason {r.choices[0].finish_reason}")
    u = r.usage
    check(u.prompt_tokens > 0 and u.completion_tokens > 0 and u.total_tokens == u.prompt_tokens + u.completion_tokens,
          f"usage {u}")

    # Streamed: the same text in pieces, the usage chunk last.
    stream = c.chat.completions.create(model=mid, messages=msgs, max_tokens=24, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    pieces, finish, usage = [], None, None
    for ch in stream:
        if ch.usage is not None:
            usage = ch.usage
        for choice in ch.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    check("".join(pieces) == text, f"streamed text equals the whole answer: {''.join(pieces)!r}")
    check(finish == r.choices[0].finish_reason, f"streamed finish_reason {finish}")
    check(usage is not None and usage.completion_tokens == u.completion_tokens, f"streamed usage {usage}")

    # max_completion_tokens and finish_reason length.
    r = c.chat.completions.create(model=mid, messages=msgs, max_completion_tokens=3, temperature=0)
    check(r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3,
          f"max_completion_tokens 3: {r.choices[0].finish_reason}, {r.usage}")

    # Stop strings: the answer is cut before the first one.
    r = c.chat.completions.create(model=mid, messages=msgs, max_tokens=24, temperature=0, stop=["Paris"])
    check(r.choices[0].message.content == text.split("Paris")[0] and r.choices[0].finish_reason == "stop",
          f"stop at 'Paris': {r.choices[0].message.content!r}")

    # Seeds: the same seed samples the same text.
    kw = dict(model=mid, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=20, temperature=1.0)
    c.chat.completions.create(seed=11, **kw)  # warms the prefix cache, as above
    s1 = c.chat.completions.create(seed=11, **kw).choices[0].message.content
    s2 = c.chat.completions.create(seed=11, **kw).choices[0].message.content
    check(s1 == s2, f"same seed, same sample: {s1!r}")

    # Log-probabilities with alternatives.
    r = c.chat.completions.create(model=mid, messages=msgs, max_tokens=6, temperature=0, logprobs=True, top_logprobs=3)
    lp = r.choices[0].logprobs.content
    check(len(lp) == 6, f"6 logprob entries, got {len(lp)}")
    check(all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in lp),
          "greedy tokens are their position's most likely alternative")
    check("".join(t.token for t in lp) == r.choices[0].message.content, "logprob tokens spell the text")

    # Completions, not streamed and streamed.
    r = c.completions.create(model=mid, prompt="The capital of France is", max_tokens=8, temperature=0)
    ctext = r.choices[0].text
    check(r.object == "text_completion" and bool(ctext), f"completion: {ctext!r}")
    pieces = [ch.choices[0].text for ch in c.completions.create(model=mid, prompt="The capital of France is",
                                                                 max_tokens=8, temperature=0, stream=True) if ch.choices]
    check("".join(pieces) == ctext, f"streamed completion {''.join(pieces)!r}")
    r = c.completions.create(model=mid, prompt="The capital of France is", max_tokens=4, temperature=0, logprobs=2)
    check(len(r.choices[0].logprobs.tokens) == 4 and len(r.choices[0].logprobs.top_logprobs[0]) == 2,
          f"completion logprobs {r.choices[0].logprobs}")

    # Structured output: a JSON schema (validated here by the `jsonschema` package), the
    # client's own pydantic helper (`parse`), and any JSON object.
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "country": {"type": "string", "maxLength": 40},
            "population_millions": {"type": "number", "minimum": 0},
            "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        },
        "required": ["city", "country", "population_millions", "landmarks"],
        "additionalProperties": False,
    }
    for seed, temp in [(1, 0.0), (2, 0.8), (3, 1.0)]:
        r = c.chat.completions.create(
            model=mid, messages=[{"role": "user", "content": "Describe Paris as JSON."}], max_tokens=200,
            temperature=temp, seed=seed,
            response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema, "strict": True}})
        doc = json.loads(r.choices[0].message.content)
        jsonschema.validate(doc, schema)
        check(r.choices[0].finish_reason == "stop", f"json_schema at temperature {temp}: {doc}")

    class City(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=30)
        is_capital: bool
        rank: int = pydantic.Field(ge=1, le=100)

    r = c.chat.completions.parse(model=mid, messages=[{"role": "user", "content": "Tell me about Lyon."}],
                                 max_tokens=100, temperature=0, response_format=City)
    check(isinstance(r.choices[0].message.parsed, City), f"parse() with a pydantic model: {r.choices[0].message.parsed}")
    stream = c.chat.completions.create(
        model=mid, messages=[{"role": "user", "content": "Give a JSON object with the name and age of a cat called Tom."}],
        max_tokens=120, temperature=0, stream=True, response_format={"type": "json_object"})
    pieces, finish = [], None
    for ch in stream:
        for choice in ch.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    text = "".join(pieces)
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    check(finish == "stop" and isinstance(doc, dict), f"streamed json_object parses to an object: {text!r} ({finish})")

    # Errors, each with its status and the field named.
    def expect(exc, status, fn, param=None):
        try:
            fn()
        except exc as e:
            check(e.status_code == status, f"{exc.__name__} {e.status_code}: {e.message}")
            if param is not None:
                body = e.body if isinstance(e.body, dict) else {}
                check(body.get("param") == param, f"the error names {param}: {body}")
            return
        check(False, f"expected {exc.__name__}")

    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(model=mid, messages=msgs, max_tokens=-1),
           "max_tokens")
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(model=mid, messages=msgs,
                                                                          max_tokens=10**9), "max_tokens")
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(model=mid, messages=msgs, temperature=5),
           "temperature")
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model=mid, messages=[{"role": "user", "content": "word " * 9000}]), "messages")
    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model=mid, messages=[{"role": "pirate", "content": "arr"}]), "messages[0].role")
    expect(openai.NotFoundError, 404, lambda: c.chat.completions.create(model="gpt-4o", messages=msgs), "model")
    expect(openai.BadRequestError, 400, lambda: c.post("/chat/completions", cast_to=object,
                                                       body={"messages": msgs, "max_tokens": "ten"}), "max_tokens")

    expect(openai.BadRequestError, 400, lambda: c.chat.completions.create(
        model=mid, messages=msgs, response_format={"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"type": "object", "properties": {"a": {"type": "frog"}}}}}),
        "response_format.json_schema.schema")

    keyed = openai.OpenAI(base_url=a.keyed, api_key="wrong", max_retries=0)
    expect(openai.AuthenticationError, 401, lambda: keyed.models.list())
    good = openai.OpenAI(base_url=a.keyed, api_key=a.key, max_retries=0)
    check(len(good.models.list().data) == 1, "the right key is let in")

    full = openai.OpenAI(base_url=a.full, api_key="x", max_retries=0)
    expect(openai.RateLimitError, 429, lambda: full.chat.completions.create(model=mid, messages=msgs, max_tokens=2))
    print("all checks passed")


if __name__ == "__main__":
    main()
