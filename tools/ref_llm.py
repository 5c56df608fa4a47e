#!/usr/bin/env python3
"""ref_llm.py: PyTorch reference for the Llama-3 decoder (spec §9) on a checkpoint folder.

    python3 tools/ref_llm.py --model DIR --out tests/fixtures/llm_tiny.safetensors [--ids 128000,791,...]
                             [--steps 32] [--device auto|cuda|cpu] [--f32-device cuda|cpu]

Builds transformers' LlamaForCausalLM from config.json's LLM fields, loads the llm.* tensors ("llm." stripped;
a quantized folder's q8 / q4 / nf4 weights dequantized to fp16 by tools/ref_dequant.py, written from
docs/QUANT.md) and runs the prompt twice:
  f32: the fp16-stored weights upcast to fp32, eager attention (plain matmul + fp32 softmax, the most
       transparent math), TF32 off (checked), on --f32-device (default: the GPU);
  f16: the weights as stored, sdpa attention, on the GPU: the README load path (from_pretrained with
       torch_dtype=float16, whose RoPE inv_freq stays fp32; checked, see ref_common.build_llama).
For each it records with forward hooks the embedding output, every decoder layer's output (the residual
stream, before the final norm), the final-norm output, the fp32 logits of the LAST prompt position, then
--steps greedy tokens with the KV cache (no stop token, nothing suppressed) and each step's top1-top2 margin.

Output, one .safetensors (F32 unless noted; fp16 values are converted to fp32 exactly):
  input_ids I32 [n];  rope.inv_freq [head_dim/2] (the fp32 values both runs used)
  {p}.embed [n,d]  {p}.layer_out.{i} [n,d] (i = 0..L-1)  {p}.final_norm [n,d]  {p}.logits_last [V]
  {p}.greedy I32 [steps]  {p}.greedy_margin [steps]          for p in f32, f16
metadata: versions, device, attention implementations, embed_abs_sum (sum |embed_tokens| in float64 over the
stored fp16 values) and lm_head_abs_sum, so a C test can assert it reads the same checkpoint.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_common as rc  # noqa: E402
import ref_dequant  # noqa: E402

import torch  # noqa: E402

# "<|begin_of_text|>The quick brown fox jumps over the lazy dog." then id 0 ("!", the pad token) and the last
# vocabulary row, so the embedding lookup is checked at both ends of the table. 13 ids: not a multiple of 8.
DEFAULT_IDS = "128000,791,4062,14198,39935,35308,927,279,16053,5679,13,0,128255"


def run_path(cfg, sd, ids, p, dtype, device, attn, steps, check_generate):
    model, info = rc.build_llama(cfg, sd, dtype, device, attn)
    L = cfg["num_hidden_layers"]
    rec = {"layers": [None] * L}
    hooks = []

    def keep(key, idx=None):
        def hook(_mod, _inp, out):
            x = out[0] if isinstance(out, (tuple, list)) else out
            x = x.detach()
            assert x.dim() == 3 and x.shape[0] == 1, (key, tuple(x.shape))
            if idx is None:
                rec[key] = x[0].clone()
            else:
                rec["layers"][idx] = x[0].clone()
        return hook

    hooks.append(model.model.embed_tokens.register_forward_hook(keep("embed")))
    layers = model.model.layers
    if len(layers) != L:
        rc.die("model has %d layers, config %d" % (len(layers), L))
    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(keep("layer", i)))
    hooks.append(model.model.norm.register_forward_hook(keep("final_norm")))

    x = torch.tensor([ids], dtype=torch.long, device=device)
    logits, cache, T = rc.prefill(model, input_ids=x)
    for h in hooks:
        h.remove()
    n, d = len(ids), cfg["hidden_size"]
    for key in ("embed", "final_norm"):
        assert tuple(rec[key].shape) == (n, d), (key, tuple(rec[key].shape))
        assert rec[key].dtype == dtype, (key, rec[key].dtype)
    for i in range(L):
        assert rec["layers"][i] is not None and tuple(rec["layers"][i].shape) == (n, d), i
    assert T == n and tuple(logits.shape) == (cfg["vocab_size"],), (T, tuple(logits.shape))
    assert logits.dtype == dtype, logits.dtype

    # the last decoder layer's output, normed, must be what the final-norm hook saw
    with torch.no_grad():
        renormed = model.model.norm(rec["layers"][L - 1][None])[0]
    if not torch.equal(renormed, rec["final_norm"]):
        rc.die("%s: final_norm hook does not match norm(layer_out.%d)" % (p, L - 1))

    g_ids, margins = rc.greedy(model, logits, cache, T, steps)
    note = rc.generate_check(model, g_ids, steps, input_ids=x) if check_generate else "not run"
    rc.log("%s: greedy %s" % (p, g_ids))
    rc.log("%s: margins min %.4g; %s" % (p, min(margins), note))
    out = {
        "embed": rec["embed"], "final_norm": rec["final_norm"], "layers": rec["layers"],
        "logits_last": logits.float(), "greedy": g_ids, "margin": margins, "info": info, "generate": note,
    }
    out = {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in out.items()}
    out["layers"] = [t.cpu() for t in out["layers"]]
    del model, cache
    rc.free_cuda()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (config.json + safetensors)")
    ap.add_argument("--out", required=True, help="output .safetensors fixture")
    ap.add_argument("--ids", default=DEFAULT_IDS, help="comma-separated prompt ids, or a file holding them")
    ap.add_argument("--steps", type=int, default=32, help="greedy steps (default 32)")
    ap.add_argument("--device", default="auto", help="device of the f16 run (default: cuda if available)")
    ap.add_argument("--f32-device", default=None, help="device of the f32 run (default: --device)")
    ap.add_argument("--attn-f32", default="eager", choices=["eager", "sdpa"])
    ap.add_argument("--attn-f16", default="sdpa", choices=["eager", "sdpa"])
    ap.add_argument("--paths", default="f32,f16", help="which runs (default f32,f16)")
    ap.add_argument("--no-generate-check", action="store_true", help="skip the HF generate() cross-check")
    a = ap.parse_args()

    rc.setup_numerics()
    dev16 = rc.pick_device(a.device)
    dev32 = rc.pick_device(a.f32_device or dev16)
    cfg = rc.load_config(a.model)
    ids = rc.parse_ids(a.ids)
    V = cfg["vocab_size"]
    if not ids or any(i < 0 or i >= V for i in ids):
        rc.die("--ids must be non-empty and in [0, %d): %s" % (V, ids))
    if a.steps < 1:
        rc.die("--steps must be >= 1")
    rc.log("model %s: d=%d L=%d heads=%d/%d ffn=%d V=%d; %d prompt ids"
           % (a.model, cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"],
              cfg.get("num_key_value_heads", cfg["num_attention_heads"]), cfg["intermediate_size"], V, len(ids)))

    sd, stored = rc.load_prefixed(a.model, "llm.")
    rc.log("llm tensors: %d, stored dtypes %s" % (len(sd), sorted(stored)))
    dequant = ""
    if cfg.get("quantization_config"):  # q8 / q4 / nf4 folders: the weights as their fp16 dequantization
        sd, dequant = ref_dequant.dequantize(sd, cfg)
        rc.log("%s (%s)" % (dequant, json.dumps(cfg["quantization_config"], sort_keys=True)))
    fx = rc.Fixture()
    fx.meta.update(rc.env_metadata(dev16))
    fx.meta["script"] = "tools/ref_llm.py"
    fx.meta["model_dir"] = os.path.abspath(a.model)
    fx.meta["stored_dtypes"] = ",".join(sorted(stored))
    if dequant:
        fx.meta["dequant"] = "%s by tools/ref_dequant.py; quantization_config %s" % (
            dequant, json.dumps(cfg["quantization_config"], sort_keys=True))
    fx.meta["embed_abs_sum"] = rc.fmt_f64(rc.abs_sum_f64(sd["model.embed_tokens.weight"]))
    fx.meta["lm_head_abs_sum"] = rc.fmt_f64(rc.abs_sum_f64(sd["lm_head.weight"]))
    fx.meta["steps"] = a.steps
    fx.meta["greedy_rule"] = "argmax (lowest id on ties) of fp32 logits; no stop token; nothing suppressed"
    fx.put("input_ids", torch.tensor(ids, dtype=torch.int32), "i32")
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    fx.put("rope.inv_freq", rc.expected_inv_freq(cfg["rope_theta"], hd), "f32")

    runs = {"f32": (torch.float32, dev32, a.attn_f32), "f16": (torch.float16, dev16, a.attn_f16)}
    wanted = [p.strip() for p in a.paths.split(",") if p.strip()]
    results = {}
    for p in wanted:
        if p not in runs:
            rc.die("--paths: unknown %s" % p)
        dtype, dev, attn = runs[p]
        fx.meta["%s.numerics" % p] = rc.check_no_tf32(dev)
        r = run_path(cfg, sd, ids, p, dtype, dev, attn, a.steps, not a.no_generate_check)
        results[p] = r
        fx.put("%s.embed" % p, r["embed"], "f32")
        for i, t in enumerate(r["layers"]):
            fx.put("%s.layer_out.%d" % (p, i), t, "f32")
        fx.put("%s.final_norm" % p, r["final_norm"], "f32")
        fx.put("%s.logits_last" % p, r["logits_last"], "f32")
        fx.put("%s.greedy" % p, torch.tensor(r["greedy"], dtype=torch.int32), "i32")
        fx.put("%s.greedy_margin" % p, torch.tensor(r["margin"], dtype=torch.float32), "f32")
        fx.meta["%s.device" % p] = dev
        fx.meta["%s.attn_implementation" % p] = r["info"]["attn_implementation"]
        fx.meta["%s.inv_freq" % p] = r["info"]["inv_freq_notes"]
        fx.meta["%s.generate_check" % p] = r["generate"]

    if "f32" in results and "f16" in results:
        a32, a16 = results["f32"]["logits_last"], results["f16"]["logits_last"]
        msg = "f16 vs f32 logits: rel %.3g cos %.9f max_abs %.3g; greedy identical for %d/%d steps" % (
            rc.rel_err(a16, a32), rc.cosine(a16, a32), float((a16 - a32).abs().max()),
            next((i for i, (x, y) in enumerate(zip(results["f16"]["greedy"], results["f32"]["greedy"])) if x != y),
                 a.steps), a.steps)
        rc.log(msg)
        fx.meta["f16_vs_f32"] = msg
    fx.save(a.out)


if __name__ == "__main__":
    main()
