#!/usr/bin/env python3
"""bench_compare.py: the side-by-side table of `minicpmv bench --json OURS` and `tools/bench_hf.py --json HF`
(docs/BENCH.md), as Markdown for docs/PERF.md.

    python3 tools/bench_compare.py OURS.json HF.json [--out FILE] [--title TEXT]

Speed-up = ours / HF for rates (tok/s, GB/s) and HF / ours for times (ms, s), so > 1 means ours is faster.
The goal column holds the issue's targets (set for an H100; the H200 has more bandwidth, so they are a floor
there). Standard library only: it also runs where torch is absent.
"""
import argparse
import json
import math
import sys

GIB = 1024.0 ** 3
# (phase, key) -> (label, unit, higher_better, goal or None)
ROWS = [
    ("prefill512", "value", "prefill 512 tokens", "tok/s", True, None),
    ("prefill3000", "value", "prefill 3000 tokens", "tok/s", True, 35000),
    ("decode512", "value", "decode at context 512", "tok/s", True, 175),
    ("decode512", "gb_s", "  effective bandwidth", "GB/s", True, None),
    ("decode512", "pct_of_peak_bw", "  % of the read bandwidth measured in the run", "%", True, None),
    ("decode4096", "value", "decode at context 4096", "tok/s", True, 165),
    ("decode4096", "gb_s", "  effective bandwidth", "GB/s", True, None),
    ("decode4096", "pct_of_peak_bw", "  % of the read bandwidth measured in the run", "%", True, None),
    ("vision1", "value", "vision+resampler, 1 piece (448^2)", "ms", False, None),
    ("vision1", "device_ms", "  without CPU preprocessing", "ms", False, None),
    ("vision10", "value", "vision+resampler, 10 pieces (1344^2)", "ms", False, 20),
    ("vision10", "device_ms", "  without CPU preprocessing", "ms", False, None),
    ("ttft", "value", "time to first token, 1344^2 JPEG + 20 tokens", "ms", False, 60),
    ("ttft", "vision_ms", "  of which vision", "ms", False, None),
    ("ttft", "prefill_ms", "  of which prefill", "ms", False, None),
    ("seedcase", "value", "seed case: 1344^2 + 3000 in, 1000 out", "s", False, 8),
]
CHECKS = [("ttft", "n_prompt"), ("seedcase", "n_prompt"), ("seedcase", "n_new"), ("vision10", "pieces"),
          ("ttft", "question_tokens"), ("conc16", "prompt_tokens_mean"), ("conc64", "prompt_tokens_mean")]


def load(path):
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as ex:
        sys.exit("bench_compare: %s: %s" % (path, ex))
    if not isinstance(j, dict) or not isinstance(j.get("phases"), dict):
        sys.exit("bench_compare: %s has no \"phases\" object (not a bench --json file?)" % path)
    return j


def num(x):
    return x if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def get(j, phase, key):
    p = j["phases"].get(phase)
    if not isinstance(p, dict) or "error" in p:
        return None
    return num(p.get(key))


def fmt(v, unit):
    if v is None:
        return "-"
    if unit in ("ms", "s", "GiB") or abs(v) < 100:
        return "%.2f" % v if abs(v) < 100 else "%.0f" % v
    return "%.0f" % v


def speedup(o, h, higher):
    if o is None or h is None or o <= 0 or h <= 0:
        return "-"
    return "%.2fx" % (o / h if higher else h / o)


def goal_cell(v, goal, higher):
    if goal is None:
        return "", ""
    g = ("&ge; %g" if higher else "&le; %g") % goal
    if v is None:
        return g, "-"
    return g, ("yes" if (v >= goal if higher else v <= goal) else "**no**")


def mem_rows(j):
    """One (label, peak used, beyond weights+KV, weights, KV) per device, in GiB."""
    out = []
    for d in (j.get("memory") or {}).get("devices") or []:
        vals = [num(d.get(k)) for k in ("peak_used_bytes", "beyond_weights_kv_bytes", "weights_bytes", "kv_bytes")]
        out.append([d.get("device", "?")] + [v / GIB if v is not None else None for v in vals])
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ours")
    ap.add_argument("hf")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    ap.add_argument("--title", default=None)
    a = ap.parse_args()
    o, h = load(a.ours), load(a.hf)
    lines = []
    dev = h.get("device_name") or h.get("device") or "?"
    lines.append("### %s" % (a.title or "minicpmv bench vs HF transformers (fp16) on %s" % dev))
    lines.append("")
    lines.append("ours: `%s` (%s, ctx %s, prefill chunk %s, %s reps); HF: transformers %s, torch %s, llm %s, vision %s"
                 % (o.get("model"), o.get("dtype"), o.get("ctx"), o.get("max_batch"), o.get("reps"),
                    (h.get("env") or {}).get("transformers", "?"), (h.get("env") or {}).get("torch", "?"),
                    h.get("llm_attn", "?"), h.get("vision_attn", "?")))
    for name, j, how in (("ours", o, "op_read_sum"), ("HF", h, "torch sum")):
        if num(j.get("peak_gbs")) is not None:
            lines.append("%s read bandwidth: %.0f GB/s (%s)" % (
                name, j["peak_gbs"], how + ", measured in the run" if j.get("peak_gbs_source") == "measured" else "given"))
    lines.append("")
    lines.append("| measurement | unit | ours | HF | speed-up | goal (H100) | ours meets |")
    lines.append("|---|---|---:|---:|---:|---:|:---:|")
    shown = set()
    for phase, key, label, unit, higher, goal in ROWS:
        if phase not in o["phases"] and phase not in h["phases"]:
            continue
        shown.add(phase)
        ov, hv = get(o, phase, key), get(h, phase, key)
        g, meets = goal_cell(ov, goal, higher)
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (label, unit, fmt(ov, unit), fmt(hv, unit),
                                                             speedup(ov, hv, higher), g, meets))
    # phases outside the standard list (e.g. prefill1024, decode2048): primary value only
    for phase in list(o["phases"]) + [p for p in h["phases"] if p not in o["phases"]]:
        if phase in shown:
            continue
        shown.add(phase)
        src = o["phases"].get(phase) if isinstance(o["phases"].get(phase), dict) else h["phases"].get(phase, {})
        unit = src.get("unit", "") if isinstance(src, dict) else ""
        higher = bool(src.get("higher_better")) if isinstance(src, dict) else True
        ov, hv = get(o, phase, "value"), get(h, phase, "value")
        lines.append("| %s | %s | %s | %s | %s |  |  |" % (phase, unit, fmt(ov, unit), fmt(hv, unit),
                                                          speedup(ov, hv, higher)))
    om, hm = mem_rows(o), mem_rows(h)
    for i in range(max(len(om), len(hm))):
        orow = om[i] if i < len(om) else [None] * 5
        hrow = hm[i] if i < len(hm) else [None] * 5
        labdev = orow[0] or hrow[0]
        lines.append("| peak memory used, %s | GiB | %s | %s | %s |  |  |" % (
            labdev, fmt(orow[1], "GiB"), fmt(hrow[1], "GiB"),
            speedup(orow[1], hrow[1], False)))
        g, meets = goal_cell(orow[2], 1.0, False) if orow[0] and orow[0] != "cpu" else ("", "")
        lines.append("| beyond weights + KV, %s | GiB | %s | %s |  | %s | %s |" % (
            labdev, fmt(orow[2], "GiB"), fmt(hrow[2], "GiB"), g, meets))
    errors = []
    for name, j in (("ours", o), ("HF", h)):
        for phase, p in j["phases"].items():
            if isinstance(p, dict) and "error" in p:
                errors.append("%s %s: %s" % (name, phase, p["error"]))
    notes = []
    for phase, key in CHECKS:
        ov, hv = get(o, phase, key), get(h, phase, key)
        if ov is not None and hv is not None and ov != hv:
            notes.append("%s.%s differs: ours %g, HF %g (the inputs are meant to be identical)" % (phase, key, ov, hv))
    hs = (h["phases"].get("seedcase") or {}) if isinstance(h["phases"].get("seedcase"), dict) else {}
    if hs.get("seed_mode"):
        notes.append("HF seed case decoded with %s" % hs["seed_mode"])
    os_ = (o["phases"].get("seedcase") or {}) if isinstance(o["phases"].get("seedcase"), dict) else {}
    if num(os_.get("first_stop_at")) is not None and os_["first_stop_at"] >= 0:
        notes.append("ours: the random weights emitted a stop id at generated token %d (ignored, as HF's "
                     "min_new_tokens does)" % os_["first_stop_at"])
    if notes or errors:
        lines.append("")
        lines += ["- " + n for n in notes + errors]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
