#!/usr/bin/env python3
# tools/bench_schema.py PORT: tok/s of plain, logprobs, json_object and json_schema requests against a running
# `minicpmv serve` (standard library only; docs/PERF.md "Constrained decoding and logprobs").
import json, sys, time, urllib.request
port = int(sys.argv[1])
def ask(body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    r = json.load(urllib.request.urlopen(req, timeout=120))
    return time.time() - t0, r["usage"]["completion_tokens"], r["choices"][0]["message"]["content"]
schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
          "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "tags"]}
modes = {"plain": {}, "logprobs": {"logprobs": True}, "json_object": {"response_format": {"type": "json_object"}},
         "json_schema": {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}}}
ask({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})  # warm-up
for rnd in (1, 2):
    for name, extra in modes.items():
        tt = nt = 0; ok = 0
        for seed in range(1, 7):
            b = {"messages": [{"role": "user", "content": "Describe a person as JSON."}], "max_tokens": 256,
                 "temperature": 1, "seed": seed, **extra}
            t, n, text = ask(b)
            tt += t; nt += n
            if name.startswith("json"):
                try: json.loads(text); ok += 1
                except Exception: pass
        print(f"round {rnd} {name:12s} {nt:5d} tokens in {tt:6.2f} s = {nt/tt:7.1f} tok/s" + (f"  ({ok}/6 parse)" if name.startswith("json") else ""), flush=True)
