#!/usr/bin/env python3
"""ref_tokenizer.py: HF reference ids for tests/test_tokenizer.c (run where `tokenizers` and `transformers` exist,
e.g. the GPU machine; no network needed).

  python3 tools/ref_tokenizer.py --model-dir DIR --corpus CORPUS.json --out tests/fixtures/tokenizer_hf.json
  python3 tools/ref_tokenizer.py --model-dir DIR --bench BIG.txt        # Rust tokenizer MB/s, one thread

DIR holds tokenizer.json (+ tokenizer_config.json, special_tokens_map.json): the files written by
`minicpmv tokenize --model DIR --write-minicpmv .cache/tokenizer-llama3/tokenizer.json`, or the real model's.
CORPUS.json is a JSON array of strings (node tests/js/gen_corpus.mjs 99 300 > CORPUS.json); a fixed list of
MiniCPM-specific strings is appended. The fixture records, per string:
  tokenizers          Tokenizer.from_file(tokenizer.json).encode(s, add_special_tokens=False).ids
  tokenizers_special  the same with add_special_tokens=True (what the post-processor adds)
  transformers        PreTrainedTokenizerFast(tokenizer_file=..., bos/eos from the config, unk "<unk>", pad "!")
                      .encode(s, add_special_tokens=False)
  transformers_decode .decode(those ids, skip_special_tokens=False, clean_up_tokenization_spaces=True)
It also prints what the model dir's tokenizer.json says about the questions of spec §7 (post-processor, BOS).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

EXTRA = [
    "Hello!! world", "?!", "!", "!!!", "Wow! Really?!", "<image>", "<unk><slice></slice>", "(<image>./</image>)\nWhat is in the image?",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
    "<|reserved_special_token_0|>", "<|reserved_special_token_17|>", "<ref>a</ref><box>1,2</box><quad></quad><point></point>",
    "do n't it 's we 're", "Hello . How are you ? Fine , thanks !", "I 'm here , I 've", "x ' y", "  .", "don 't",
    "\u180e", "a\u180eb", " \u180e ", "\u180e\u180e\n", "x\u180e 1",
]


def load(model_dir):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    path = os.path.join(model_dir, "tokenizer.json")
    raw = Tokenizer.from_file(path)
    cfg = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(model_dir, name)
        if os.path.exists(p):
            with open(p) as f:
                cfg.update({k: v for k, v in json.load(f).items() if k.endswith("_token")})
    tok_str = lambda v: v["content"] if isinstance(v, dict) else v
    fast = PreTrainedTokenizerFast(
        tokenizer_file=path,
        bos_token=tok_str(cfg.get("bos_token", "<|begin_of_text|>")),
        eos_token=tok_str(cfg.get("eos_token", "<|end_of_text|>")),
        unk_token="<unk>",
        pad_token="!",
        clean_up_tokenization_spaces=True,
    )
    return path, raw, fast


def describe(path):
    with open(path) as f:
        j = json.load(f)
    pp = j.get("post_processor")
    added = {t["id"]: t["content"] for t in j.get("added_tokens", [])}
    print(f"{path}: vocab {len(j['model']['vocab'])}, merges {len(j['model']['merges'])}, added tokens {len(added)}, "
          f"ignore_merges {j['model'].get('ignore_merges')}")
    print(f"  post_processor: {json.dumps(pp)[:300]}")
    print(f"  ids 128000..128021: {[added.get(i) for i in range(128000, 128022)]}")
    print(f"  128022 {added.get(128022)!r}, 128255 {added.get(128255)!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--corpus")
    ap.add_argument("--out")
    ap.add_argument("--bench")
    a = ap.parse_args()
    path, raw, fast = load(a.model_dir)
    describe(path)
    print("transformers 'Hello!! world' ->", fast.encode("Hello!! world", add_special_tokens=False),
          "| tokenizers ->", raw.encode("Hello!! world", add_special_tokens=False).ids,
          "| encode() default ->", fast.encode("Hi"))

    if a.out:
        texts = []
        if a.corpus:
            with open(a.corpus, encoding="utf-8") as f:
                texts = json.load(f)
        texts += EXTRA
        fx = {"texts": texts, "tokenizers": [], "tokenizers_special": [], "transformers": [], "transformers_decode": []}
        for s in texts:
            fx["tokenizers"].append(raw.encode(s, add_special_tokens=False).ids)
            fx["tokenizers_special"].append(raw.encode(s, add_special_tokens=True).ids)
            ids = fast.encode(s, add_special_tokens=False)
            fx["transformers"].append(ids)
            fx["transformers_decode"].append(fast.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=True))
        with open(a.out, "w", encoding="utf-8") as f:
            json.dump(fx, f, ensure_ascii=True, separators=(",", ":"))
        print(f"wrote {a.out}: {len(texts)} strings")

    if a.bench:
        with open(a.bench, encoding="utf-8") as f:
            text = f.read()
        nbytes = len(text.encode("utf-8"))
        raw.encode(text[:100000], add_special_tokens=False)  # warm-up
        best = 1e30
        for _ in range(3):
            t0 = time.perf_counter()
            n = len(raw.encode(text, add_special_tokens=False).ids)
            best = min(best, time.perf_counter() - t0)
        print(f"HF tokenizers (Rust) encode: {nbytes} bytes -> {n} tokens; best {best:.3f} s = {nbytes / best / 1e6:.2f} MB/s "
              f"(one call, TOKENIZERS_PARALLELISM={os.environ['TOKENIZERS_PARALLELISM']}, RAYON_NUM_THREADS={os.environ['RAYON_NUM_THREADS']})")


if __name__ == "__main__":
    sys.exit(main())
