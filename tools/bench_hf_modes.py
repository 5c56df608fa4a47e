"""bench_hf_modes.py: the side-by-side baselines of tools/bench_hf.py that are modes (flags) rather than phases
of `minicpmv bench`'s table (docs/BENCH.md, "Baselines"). Each mode runs on its own, catches its own failure
(a mode that fails or cannot run is reported as FAILED or SKIPPED on its line; the others still run) and ends
with one line that starts with "RESULT <mode>:".

  peak      --peak-gbs auto: torch's read bandwidth, x.sum() over an 8 GiB fp16 tensor read once, best of 5
            (the same definition as `minicpmv bench --peak-gbs auto`); measured before the model loads
  concN     --batch 16,64: HF generate on N sequences at once, greedy, left padding, 256 new tokens
            (min_new_tokens = max_new_tokens, so stop ids do not end a row early), prompts of ~512 tokens:
            the text prompts of `minicpmv bench --concurrency` (the filler words of stream i from
            splitmix64(1000 + i), the chat template) when the folder has tokenizer.json, else 512 random ids;
            aggregate tok/s = N x new tokens / the generate call's wall time (its prefill included, as ours)
  int8      --int8: weight-only int8 (per output channel, symmetric, fp16 scales) for every decoder Linear
            and lm_head (the layout of our q8), decode batch 1 at context 512 with the manual loop of
            bench_hf.py's decodeC; torch._weight_int8pack_mm where this torch has it for CUDA fp16 and it
            agrees with a plain dequantization, and the plain dequantization + mm (q.to(fp16) then F.linear,
            times the scales) always: one line each
  nf4       --nf4: bitsandbytes NF4 (blocksize 64, double quantization: the official int4 checkpoint's
            settings, lm_head left fp16 as its llm_int8_skip_modules say) through bitsandbytes' pure-PyTorch
            code (no compiled library: quantize_4bit / dequantize_4bit of its "default" backend, on the GPU),
            from the source tree --bnb (default .devrun/bnb); SKIPPED when that tree is absent. Forward =
            bitsandbytes' dequantize_4bit + F.linear, what its default gemv_4bit does. Eager by default
            (bitsandbytes wraps its dequantization in torch.compile; --nf4-compile lets it compile, which can
            take minutes)
Decode figures add the step-0 logits against fp16 (top-1 agreement and cosine) so a broken baseline shows.
"""
import math
import os
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

CONC_WORDS = 440  # tools/cmd_bench.c BENCH_CONC_WORDS
GIB = 1024.0 ** 3


def log(*a):
    print("[bench_hf]", *a, flush=True)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Mode:
    """One baseline: name, its JSON phase (value, unit, details) or an error / skip reason, and its line."""

    def __init__(self, name):
        self.name, self.value, self.unit, self.higher_better = name, None, "", True
        self.x, self.error, self.skipped, self.line = {}, None, None, ""

    def result_line(self):
        if self.skipped:
            return "RESULT %s: SKIPPED (%s)" % (self.name, self.skipped)
        if self.error:
            return "RESULT %s: FAILED (%s)" % (self.name, self.error)
        return "RESULT %s: %s" % (self.name, self.line)

    def phase(self):
        if self.skipped:
            return {"skipped": self.skipped}
        if self.error:
            return {"error": self.error}
        o = {"value": self.value, "unit": self.unit, "higher_better": self.higher_better}
        o.update(self.x)
        return o


def run_mode(m, fn, *args):
    """Runs fn(m, *args); any exception (or SystemExit from a ref_* helper) becomes m.error, never a crash."""
    t0 = time.perf_counter()
    try:
        fn(m, *args)
        if not m.skipped and not (m.value is not None and m.value > 0 and math.isfinite(m.value)):
            raise RuntimeError("no valid figure")
    except (Exception, SystemExit) as ex:  # noqa: BLE001
        m.error = "%s: %s" % (type(ex).__name__, str(ex)[:300])
        log(traceback.format_exc()[-2000:])
    finally:
        try:
            sync()
        except Exception:  # noqa: BLE001 (a device fault already reported)
            pass
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    log("%-16s %s (%.1f s)" % (m.name, "done" if not (m.error or m.skipped) else m.error or "skipped: " + m.skipped,
                               time.perf_counter() - t0))
    return m


# ----------------------------------------------------------------------------------------- read bandwidth

def mode_peak(m, device, gib=8.0, passes=5):
    """x.sum() over gib GiB of fp16 (fewer when that much is not free), best of passes after one untimed."""
    free, _ = torch.cuda.mem_get_info(device)
    nbytes = int(min(gib * GIB, max(free - GIB, 0)))
    nbytes -= nbytes % (64 << 20)
    if nbytes < GIB:
        raise RuntimeError("%.2f GiB free: too little for a 1 GiB buffer" % (free / GIB))
    x = torch.ones(nbytes // 2, dtype=torch.float16, device=device)
    ts = []
    for r in range(passes + 1):
        sync()
        t0 = time.perf_counter()
        s = x.sum()
        sync()
        if r > 0:
            ts.append(time.perf_counter() - t0)
    del x, s
    torch.cuda.empty_cache()
    best, med = min(ts), statistics.median(ts)
    m.value, m.unit = nbytes / best / 1e9, "GB/s"
    m.x.update(bytes=nbytes, passes=passes, best_s=best, gb_s_median=nbytes / med / 1e9,
               method="torch x.sum() over fp16, one read per pass, best pass")
    m.line = "torch sum of %.2f GiB fp16: %.0f GB/s (best of %d, median %.0f GB/s)" % (
        nbytes / GIB, m.value, passes, nbytes / med / 1e9)


# ----------------------------------------------------------------------------------------- batched generate

def conc_prompts(st, n, rand_ids, splitmix64, words, vocab):
    """n prompts: ours (tools/cmd_bench.c run_conc) when the tokenizer is there, else 512 random ids each."""
    out = []
    for i in range(n):
        if st.ptok is not None:
            s, parts = 1000 + i, []
            for k in range(CONC_WORDS):
                s, z = splitmix64(s)
                parts.append(words[z % 32] + ("." if k % 12 == 11 else ""))
            out.append(st.ptok.encode(st.rv.chat_text([("user", [" ".join(parts)])])))
        else:
            out.append(rand_ids(512, 1000 + i, vocab))
    return out


@torch.inference_mode()
def mode_batch(m, st, n, a, rand_ids, splitmix64, words):
    prompts = conc_prompts(st, n, rand_ids, splitmix64, words, st.cfg["vocab_size"])
    L = max(len(p) for p in prompts)
    pad = 0
    ids = torch.full((n, L), pad, dtype=torch.long)
    mask = torch.zeros((n, L), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: the prompts end together, the new tokens start together
        ids[i, L - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, L - len(p):] = 1
    ids, mask = ids.to(st.device), mask.to(st.device)
    new = a.batch_new
    kw = dict(do_sample=False, num_beams=1, eos_token_id=[128001, 128009], pad_token_id=pad, use_cache=True)
    st.llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    times, out = [], None
    for _ in range(a.batch_reps):
        sync()
        t0 = time.perf_counter()
        out = st.llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, **kw)
        sync()
        times.append(time.perf_counter() - t0)
    gen = out.shape[1] - L
    if gen != new:
        raise RuntimeError("generate returned %d new tokens per row, asked for %d" % (gen, new))
    # batching check (informational): row 0 alone, its first 16 tokens
    p0 = torch.tensor([prompts[0]], dtype=torch.long, device=st.device)
    solo = st.llm.generate(input_ids=p0, attention_mask=torch.ones_like(p0), max_new_tokens=16, min_new_tokens=16,
                           **kw)[0, p0.shape[1]:].tolist()
    row0 = out[0, L:L + 16].tolist()
    same = next((k for k in range(16) if solo[k] != row0[k]), 16)
    med = statistics.median(times)
    m.value, m.unit = n * gen / med, "tok/s"
    m.x.update(streams=n, prompt_tokens_mean=sum(len(p) for p in prompts) / n, prompt_tokens_max=L, new_tokens=gen,
               tokens=n * gen, wall_s=med, times_s=times, stream_tok_s=gen / med,
               prompts="minicpmv bench concN text" if st.ptok is not None else "512 random ids",
               row0_matches_solo_tokens=same)
    m.line = ("HF generate, %d sequences x %d new tokens after %.0f-token prompts (left padded to %d), greedy: "
              "%.0f tok/s aggregate, %.1f tok/s per sequence, %.2f s; row 0 = its solo answer for %d/16 tokens" % (
                  n, gen, m.x["prompt_tokens_mean"], L, m.value, gen / med, med, same))


# ----------------------------------------------------------------------------------------- quantized decode

class QLinear(torch.nn.Module):
    """A Linear whose weight lives quantized; forward(x) = fn(x2d) reshaped. Holds no fp16 copy."""

    def __init__(self, fn, out_features, tensors):
        super().__init__()
        self.fn, self.out_features = fn, out_features
        self.keep = tensors  # the quantized tensors (kept alive; counted by nbytes)

    def forward(self, x):
        y = self.fn(x.reshape(-1, x.shape[-1]))
        return y.reshape(*x.shape[:-1], self.out_features)


def swap_linears(llm, make, with_lm_head, undo):
    """Replaces every nn.Linear of the decoder layers (and lm_head when asked) by make(name, linear), appending
    (parent, leaf, original) to undo as it goes (so a failure half way can be restored); returns the quantized
    bytes."""
    names = [n for n, mod in llm.named_modules() if isinstance(mod, torch.nn.Linear) and
             (n.startswith("model.layers.") or (with_lm_head and n == "lm_head"))]
    if not names:
        raise RuntimeError("no Linear modules found under model.layers (transformers layout changed?)")
    qbytes = 0
    for n in names:
        parent_name, _, leaf = n.rpartition(".")
        parent = llm.get_submodule(parent_name) if parent_name else llm
        lin = getattr(parent, leaf)
        q = make(n, lin)
        qbytes += sum(t.numel() * t.element_size() for t in q.keep)
        setattr(parent, leaf, q)
        undo.append((parent, leaf, lin))
    return qbytes


def restore(undo):
    for parent, leaf, lin in undo:
        setattr(parent, leaf, lin)


def fp16_bytes_outside(llm, undo):
    """What a decode step reads besides the quantized matrices: every other LLM parameter except the embedding."""
    swapped = {id(lin.weight) for _, _, lin in undo}
    emb = llm.model.embed_tokens.weight
    return sum(p.numel() * p.element_size() for p in llm.parameters() if id(p) not in swapped and p.data_ptr() != emb.data_ptr())


@torch.inference_mode()
def step0_logits(st, ids):
    from ref_common import prefill
    logits, cache, _ = prefill(st.llm, input_ids=ids)
    del cache
    return logits.float()


@torch.inference_mode()
def quant_decode(m, st, a, label, undo, qbytes, ref_logits, ids):
    """Decode at context a.quant_context with the swapped model: the manual loop of decodeC (8 untimed steps, then
    a.quant_reps timed runs of a.quant_steps, fewer when a.quant_budget seconds would not hold them: a slow
    baseline must not eat the call), the median; the step-0 logits against fp16's from the same prefill. One
    prefill: the cache is cropped back to the context between runs (re-prefilled where the cache cannot crop)."""
    from ref_common import prefill
    logits, cache, T = prefill(st.llm, input_ids=ids)
    lg = logits.float()
    top1 = int(torch.argmax(lg)) == int(torch.argmax(ref_logits))
    cos = float(F.cosine_similarity(lg.view(1, -1), ref_logits.view(1, -1)))
    first = torch.argmax(logits)

    def run(n):
        nonlocal cache
        if hasattr(cache, "crop"):
            cache.crop(T)
        else:
            _, cache, _ = prefill(st.llm, input_ids=ids)
        sync()
        t0 = time.perf_counter()
        _, cache = st.decode_loop(cache, T, first, n)
        sync()
        return time.perf_counter() - t0

    warm = run(8) / 8.0
    steps = max(4, min(a.quant_steps, int(a.quant_budget / max(warm, 1e-6) / a.quant_reps)))
    if steps < a.quant_steps:
        log("%s: %.0f ms per step; %d steps per run instead of %d (--quant-budget %g s)" % (
            label, 1e3 * warm, steps, a.quant_steps, a.quant_budget))
    times = [run(steps) for _ in range(a.quant_reps)]
    del cache, logits
    per_tok = statistics.median(times) / steps
    C = ids.shape[1]
    kv = st.kv_per_token * (C + (steps + 1) / 2.0)
    other = fp16_bytes_outside(st.llm, undo)
    bytes_ = qbytes + other + kv
    m.value, m.unit = 1.0 / per_tok, "tok/s"
    m.x.update(context=C, steps=steps, ms_per_tok=1e3 * per_tok, quant_weight_bytes=qbytes, other_weight_bytes=other,
               kv_bytes_per_tok=kv, bytes_per_tok=bytes_, gb_s=bytes_ / per_tok / 1e9, path=label, warm_ms_per_tok=1e3 * warm,
               step0_top1_same_as_fp16=top1, step0_logits_cos_vs_fp16=cos, times_s=times)
    pct = ""
    if a.peak_gbs:
        m.x["pct_of_peak_bw"] = 100.0 * bytes_ / per_tok / 1e9 / a.peak_gbs
        pct = ", %.1f %% of %.0f GB/s" % (m.x["pct_of_peak_bw"], a.peak_gbs)
    m.line = ("%s: %.1f tok/s, batch 1 at context %d (%d steps, median of %d); %.2f GB per token (%.2f GB stored "
              "weights) = %.0f GB/s effective%s; step-0 logits vs fp16: top-1 %s, cos %.5f" % (
                  label, m.value, C, steps, a.quant_reps, bytes_ / 1e9, qbytes / 1e9, bytes_ / per_tok / 1e9, pct,
                  "same" if top1 else "DIFFERENT", cos))


def int8_quantize(w):
    wf = w.float()
    s = (wf.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(wf / s[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
    return q, s.to(w.dtype).contiguous()


def int8_pack_ok(device):
    """(usable, scales dtype, why): torch._weight_int8pack_mm on this device for fp16 activations, checked
    against the plain dequantization on a small case."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return False, None, "this torch has no torch._weight_int8pack_mm"
    g = torch.Generator(device="cpu").manual_seed(5)
    w = (torch.randn(96, 256, generator=g) * 0.05).to(device=device, dtype=torch.float16)
    x = torch.randn(3, 256, generator=g).to(device=device, dtype=torch.float16)
    q, s = int8_quantize(w)
    ref = (x.float() @ (q.float() * s.float()[:, None]).t())
    why = []
    for sdt in (torch.float16, torch.float32, torch.bfloat16):
        try:
            y = torch._weight_int8pack_mm(x, q, s.to(sdt)).float()
            err = float((y - ref).abs().max() / ref.abs().max())
            if err < 1e-2:
                return True, sdt, "ok (scales %s, rel err %.1e)" % (sdt, err)
            why.append("scales %s: rel err %.2g" % (sdt, err))
        except Exception as ex:  # noqa: BLE001
            why.append("scales %s: %s" % (sdt, str(ex).split("\n")[0][:120]))
    return False, None, "; ".join(why)


def make_int8(path, sdt):
    def make(name, lin):
        q, s = int8_quantize(lin.weight.data)
        if path == "pack":
            s2 = s.to(sdt)
            return QLinear(lambda x, q=q, s2=s2: torch._weight_int8pack_mm(x, q, s2), q.shape[0], [q, s2])
        return QLinear(lambda x, q=q, s=s: F.linear(x, q.to(x.dtype)) * s, q.shape[0], [q, s])
    return make


def mode_int8(ms, st, a, rand_ids):
    """Fills ms = {"pack": Mode, "dequant": Mode}."""
    ids = torch.tensor([rand_ids(a.quant_context, a.rng_seed, st.cfg["vocab_size"])], device=st.device)
    ref = step0_logits(st, ids)
    ok, sdt, why = int8_pack_ok(st.device)
    log("torch._weight_int8pack_mm: %s" % why)
    for path in ("pack", "dequant"):
        m = ms[path]
        if path == "pack" and not ok:
            m.skipped = "torch._weight_int8pack_mm unusable here: " + why
            continue

        def body(m, path=path):
            undo = []
            try:
                qbytes = swap_linears(st.llm, make_int8(path, sdt), True, undo)
                label = ("int8 weight-only, torch._weight_int8pack_mm" if path == "pack" else
                         "int8 weight-only, dequantize (q.to(fp16)) + F.linear, x scales")
                quant_decode(m, st, a, label, undo, qbytes, ref, ids)
            finally:
                restore(undo)
        run_mode(m, body)


def import_bnb(path):
    """bitsandbytes from the source tree `path`, with only its pure-PyTorch kernels: torch.cuda.is_available() is
    reported False while it imports, so it registers no CUDA kernels (they would call its absent compiled
    library) and its "default" kernels (CompositeExplicitAutograd, any device) serve CUDA tensors."""
    if "bitsandbytes" in sys.modules:
        mod = sys.modules["bitsandbytes"]
        return mod, "already imported from %s" % getattr(mod, "__file__", "?")
    sys.path.insert(0, os.path.abspath(path))
    real = torch.cuda.is_available
    torch.cuda.is_available = lambda: False
    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional  # noqa: F401
    finally:
        torch.cuda.is_available = real
    return bnb, "%s %s" % (bnb.__file__, getattr(bnb, "__version__", "?"))


def eager(on):
    """torch.compile'd functions run eagerly (on) or compile again (off): torch.compiler.set_stance where this torch
    has it (2.6+), else torch._dynamo.config.disable."""
    sc = getattr(getattr(torch, "compiler", None), "set_stance", None)
    if sc is not None:
        sc("force_eager" if on else "default")
        return
    import torch._dynamo
    torch._dynamo.config.disable = bool(on)


def make_nf4(bf):
    def make(name, lin):
        w = lin.weight.data
        packed, qs = bf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        keep = [packed, qs.absmax]
        if getattr(qs, "state2", None) is not None:
            keep += [qs.state2.absmax, qs.state2.code]
        return QLinear(lambda x, packed=packed, qs=qs: F.linear(x, bf.dequantize_4bit(packed, qs).to(x.dtype)),
                       w.shape[0], keep)
    return make


def mode_nf4(m, st, a, rand_ids):
    if not os.path.isdir(os.path.join(a.bnb, "bitsandbytes")):
        m.skipped = "no bitsandbytes source tree at %s (--bnb DIR)" % a.bnb
        return
    bnb, where = import_bnb(a.bnb)
    log("bitsandbytes: %s" % where)
    import bitsandbytes.functional as bf
    if not a.nf4_compile:
        eager(True)  # bitsandbytes' torch.compile wrappers then run their plain functions
    ids = torch.tensor([rand_ids(a.quant_context, a.rng_seed, st.cfg["vocab_size"])], device=st.device)
    ref = step0_logits(st, ids)
    # bitsandbytes' own round trip on one weight, as a sanity figure for the line
    w0 = st.llm.model.layers[0].mlp.down_proj.weight.data
    p0, q0 = bf.quantize_4bit(w0, blocksize=64, compress_statistics=True, quant_type="nf4")
    rt = float((bf.dequantize_4bit(p0, q0).float() - w0.float()).abs().max() / w0.float().abs().max())
    del p0, q0
    undo = []
    try:
        qbytes = swap_linears(st.llm, make_nf4(bf), False, undo)
        label = "bitsandbytes %s NF4 (blocksize 64, double quant, lm_head fp16), pure PyTorch %s" % (
            getattr(bnb, "__version__", "?"), "compiled" if a.nf4_compile else "eager")
        quant_decode(m, st, a, label, undo, qbytes, ref, ids)
        m.x["bnb"] = where
        m.x["down_proj0_roundtrip_rel_err"] = rt
    finally:
        restore(undo)
        if not a.nf4_compile:
            eager(False)


def add_args(ap):
    ap.add_argument("--batch", default="", help="HF batched generate at these sequence counts, e.g. 16,64")
    ap.add_argument("--batch-new", type=int, default=256, help="new tokens per sequence (default 256)")
    ap.add_argument("--batch-reps", type=int, default=1, help="timed generate calls per count (default 1)")
    ap.add_argument("--int8", action="store_true", help="torch int8 weight-only decode baseline")
    ap.add_argument("--nf4", action="store_true", help="bitsandbytes NF4 decode baseline (pure PyTorch)")
    ap.add_argument("--bnb", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                  ".devrun", "bnb"),
                    help="bitsandbytes source tree for --nf4 (default: .devrun/bnb of the repository)")
    ap.add_argument("--nf4-compile", action="store_true", help="let bitsandbytes torch.compile its dequantization")
    ap.add_argument("--quant-context", type=int, default=512, help="context of the int8/nf4 decode (default 512)")
    ap.add_argument("--quant-steps", type=int, default=64, help="timed decode steps of int8/nf4 (default 64)")
    ap.add_argument("--quant-budget", type=float, default=40.0,
                    help="seconds of timed decode per int8/nf4 path at most; fewer steps if slower (default 40)")
    ap.add_argument("--quant-reps", type=int, default=3, help="repetitions of int8/nf4 decode (default 3)")


def batch_counts(s):
    out = []
    for t in s.split(","):
        t = t.strip()
        if not t:
            continue
        if not t.isdigit() or int(t) < 1:
            raise SystemExit("--batch: %r is not a positive integer" % t)
        out.append(int(t))
    return out
