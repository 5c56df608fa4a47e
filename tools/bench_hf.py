#!/usr/bin/env python3
"""bench_hf.py: the measurements of `minicpmv bench` made with HF transformers on the same checkpoint folder, for a
side-by-side table (tools/bench_compare.py). docs/BENCH.md says what each number means.

    python3 tools/bench_hf.py --model DIR [--only LIST|none] [--reps 5] [--decode-steps 128] [--json FILE]
                              [--vision-attn eager|sdpa] [--seed-mode generate|loop] [--strict-numerics]
                              [--peak-gbs auto|X] [--batch 16,64] [--int8] [--nf4 [--bnb DIR]]

The baseline modes (--peak-gbs auto, --batch, --int8, --nf4) are in tools/bench_hf_modes.py; each runs on its own
(a failure or a skip is reported on its own line) and ends with one "RESULT <mode>: ..." line.

The stack (fp16, one GPU): transformers' LlamaForCausalLM with sdpa attention and the llm.* weights
(ref_common.build_llama), Idefics2VisionTransformer with eager attention and the transformers 4.40 position ids
(ref_vision.build_vpm, the README path), and the resampler of spec §4 written here in PyTorch with its 2-D sin-cos
table cached on the device (the official module keeps a buffer too). Not the official remote code: the numbers are
for the same math on the same weights.

Phases (names as in `minicpmv bench --only`):
  prefillN   one forward over N random ids (model.model + lm_head on the last row, the KV cache built), tok/s
  decodeC    prefill C ids (untimed), then a manual KV-cache loop: model.model on one token, lm_head, argmax on the
             GPU, fed back; no host sync inside the loop (HF's best case); tok/s and effective GB/s
  vision1    PIL 448x448 image -> slicing (spec §5) -> patch strips -> upload -> vpm -> resampler, ms
  vision10   the same for 1344x1344 (10 pieces)
  ttft       JPEG bytes -> PIL decode -> slicing -> prompt text -> tokenizer -> vpm -> resampler -> embedding merge ->
             prefill -> argmax of the first token, ms
  seedcase   1344x1344 JPEG + filler text to 3000 prompt tokens, 1000 new tokens forced with
             generate(do_sample=False, min_new_tokens=max_new_tokens) (--seed-mode loop: the manual loop), s
Inputs are the ones `minicpmv bench` builds: the same pixels (ref_vision.gen_image = tests/test_image.c gen_px),
the same question and filler words; prompt token counts are printed so a mismatch shows. Timing: warm-up first,
torch.cuda.synchronize() around each timed region, median of --reps. Memory: torch.cuda.max_memory_allocated /
max_memory_reserved per phase, and the device's free memory before loading minus the least free memory seen after
each phase (the method `minicpmv bench` uses).
"""
import argparse
import io
import json
import math
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_common as rc  # noqa: E402
import bench_hf_modes as modes  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# keep equal to tools/cmd_bench.c
QUESTION = "Describe this image in detail: which objects and shapes do you see, and where are they placed?"
WORDS = ["the", "image", "shows", "a", "large", "red", "square", "next", "to", "small", "blue", "circle",
         "with", "green", "lines", "across", "bright", "background", "and", "dark", "corner", "pattern", "of",
         "stripes", "near", "top", "left", "edge", "while", "text", "appears", "below"]
DEFAULT_PHASES = "prefill512,prefill3000,decode512,decode4096,vision1,vision10,ttft,seedcase"
IMG_SEED = 7
JPEG_QUALITY = 90
STOP_IDS = [128001, 128009]
M64 = (1 << 64) - 1


def log(*a):
    print("[bench_hf]", *a, flush=True)


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def rand_ids(n, seed, vocab):
    hi = min(vocab, 128000)
    s, out = seed, []
    for _ in range(n):
        s, z = splitmix64(s)
        out.append(256 + z % (hi - 256))
    return out


def seed_text(n_words):
    """The filler of cmd_bench.c seed_content, without the image marker."""
    s, parts = 1234, []
    for k in range(n_words):
        s, z = splitmix64(s)
        parts.append(WORDS[z % 32] + ("." if k % 12 == 11 else ""))
    return " ".join(parts)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median(v):
    return statistics.median(v) if v else float("nan")


# ----------------------------------------------------------------------------------------- models

class Resampler:
    """Spec §4.1 for x [B, N_max, dv] and tgt [(h, w)] -> [B, Q, D] (the arithmetic of ref_vision.resampler_forward),
    with the sin-cos table computed once, kept on the device in the model dtype and grown when h or w exceeds it."""

    def __init__(self, W, dtype, device):
        import ref_vision as rv
        self.rv, self.W, self.dtype, self.device = rv, W, dtype, device
        self.Q, self.D = W["query"].shape
        self.nh = self.D // 128  # MiniCPMV.init_resampler: num_heads = embed_dim // 128
        self.hd = self.D // self.nh
        self.wq, self.wk, self.wv = W["attn.in_proj_weight"].chunk(3)
        self.bq, self.bk, self.bv = W["attn.in_proj_bias"].chunk(3)
        self.table = None
        self._grow(70, 70)

    def _grow(self, H, W):
        if self.table is not None and self.table.shape[0] >= H and self.table.shape[1] >= W:
            return
        H, W = max(H, 70), max(W, 70)
        t = self.rv.sincos_table(self.D, H, W)
        self.table = torch.from_numpy(np.ascontiguousarray(t)).to(self.device).to(self.dtype)

    def nbytes(self):
        return self.table.numel() * self.table.element_size()

    @torch.inference_mode()
    def __call__(self, x, tgt):
        W, D, nh, hd, Q = self.W, self.D, self.nh, self.hd, self.Q
        B, L, _ = x.shape
        self._grow(max(h for h, _ in tgt), max(w for _, w in tgt))
        pos = torch.zeros((B, L, D), dtype=x.dtype, device=x.device)
        mask = torch.zeros((B, L), dtype=x.dtype, device=x.device)
        for i, (h, w) in enumerate(tgt):
            pos[i, :h * w] = self.table[:h, :w].reshape(h * w, D)
            mask[i, h * w:] = float("-inf")
        kv = F.layer_norm(F.linear(x, W["kv_proj.weight"]), (D,), W["ln_kv.weight"], W["ln_kv.bias"], 1e-6)
        q = F.layer_norm(W["query"], (D,), W["ln_q.weight"], W["ln_q.bias"], 1e-6)
        Qp = F.linear(q, self.wq, self.bq)
        K = F.linear(kv + pos, self.wk, self.bk)
        V = F.linear(kv, self.wv, self.bv)
        Qh = Qp.view(Q, nh, hd).transpose(0, 1).unsqueeze(0).expand(B, nh, Q, hd).reshape(B * nh, Q, hd)
        Kh = K.view(B, L, nh, hd).permute(0, 2, 1, 3).reshape(B * nh, L, hd)
        Vh = V.view(B, L, nh, hd).permute(0, 2, 1, 3).reshape(B * nh, L, hd)
        m = mask.view(B, 1, 1, L).expand(B, nh, 1, L).reshape(B * nh, 1, L)
        S = torch.baddbmm(m, Qh / math.sqrt(hd), Kh.transpose(1, 2))
        O = torch.bmm(torch.softmax(S, dim=-1), Vh)
        O = O.view(B, nh, Q, hd).permute(0, 2, 1, 3).reshape(B, Q, D)
        O = F.linear(O, W["attn.out_proj.weight"], W["attn.out_proj.bias"])
        O = F.layer_norm(O, (D,), W["ln_post.weight"], W["ln_post.bias"], 1e-6)
        return O @ W["proj"]


def set_vision_attn(vpm, impl):
    if impl == "eager":
        return "eager"
    try:
        rc.set_attn(vpm, impl)
        for m in vpm.modules():
            mc = getattr(m, "config", None)
            if mc is not None and hasattr(mc, "_attn_implementation"):
                mc._attn_implementation = impl
        return impl
    except SystemExit:
        log("WARNING: could not switch the vision tower to %s; keeping eager" % impl)
        return "eager"


class Stack:
    def __init__(self, a, cfg, device):
        import ref_vision as rv
        self.rv, self.cfg, self.device, self.dtype = rv, cfg, device, torch.float16
        t0 = time.perf_counter()
        sd, dts = rc.load_prefixed(a.model, "llm.")
        log("llm tensors stored as %s" % sorted(dts))
        self.llm, info = rc.build_llama(cfg, sd, self.dtype, device, "sdpa")
        del sd
        sd, _ = rc.load_prefixed(a.model, "vpm.")
        self.vpm, vinfo = rv.build_vpm(cfg, sd, self.dtype, device)
        del sd
        self.vision_attn = set_vision_attn(self.vpm, a.vision_attn)
        sd, _ = rc.load_prefixed(a.model, "resampler.")
        D, qn, dv = cfg["hidden_size"], cfg["query_num"], cfg["vision_config"]["hidden_size"]
        self.rs = Resampler(rv.resampler_weights(sd, self.dtype, device, D, qn, dv), self.dtype, device)
        del sd
        rc.free_cuda()
        self.load_s = time.perf_counter() - t0
        self.pp = rv.preprocessor_params(a.model, cfg)
        self.qn = qn
        tok_path = os.path.join(a.model, "tokenizer.json")
        self.ptok = rv.PromptTokenizer(tok_path) if os.path.exists(tok_path) else None
        self.llm_info, self.vpm_info = info, vinfo
        L = cfg["num_hidden_layers"]
        self.kv_per_token = L * 2 * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * \
            (cfg["hidden_size"] // cfg["num_attention_heads"]) * 2
        # what one decode step streams: every LLM parameter except the embedding table (gathered, not read)
        emb = self.llm.model.embed_tokens.weight
        self.decode_weight_bytes = sum(p.numel() * p.element_size() for p in self.llm.parameters()
                                       if p.data_ptr() != emb.data_ptr())
        self.weight_bytes = (sum(p.numel() * p.element_size() for p in self.llm.parameters()) +
                             sum(p.numel() * p.element_size() for p in self.vpm.parameters()) +
                             sum(t.numel() * t.element_size() for t in self.rs.W.values()))

    # ---- pieces of the pipeline
    def strips(self, img):
        """PIL RGB image -> (list of [3, P, P*N] float32 strips, [(h, w)], grid): spec §5 slicing and §5.4
        normalization (the layout of ref_vision.to_strip without its cross-check, which would slow this down)."""
        pieces, grid = self.rv.slice_image(img, self.pp)
        P = self.pp["patch_size"]
        mean = np.array(self.pp["norm_mean"], dtype=np.float32)
        std = np.array(self.pp["norm_std"], dtype=np.float32)
        out, tgt = [], []
        for pc in pieces:
            x = (np.asarray(pc, dtype=np.uint8).astype(np.float32) / np.float32(255) - mean) / std
            chw = x.transpose(2, 0, 1)
            C, H, W = chw.shape
            h, w = H // P, W // P
            out.append(np.ascontiguousarray(chw.reshape(C, h, P, w, P).transpose(0, 2, 1, 3, 4).reshape(C, P, h * w * P)))
            tgt.append((h, w))
        return out, tgt, grid

    @torch.inference_mode()
    def encode(self, strips, tgt):
        """get_vllm_embedding's batching (pad to N_max, all-True patch mask), vpm, resampler -> [B, Q, D]."""
        B = len(strips)
        flat = [torch.from_numpy(s).flatten(end_dim=1).permute(1, 0) for s in strips]
        padded = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=0.0)
        L = padded.shape[1]
        pix = padded.permute(0, 2, 1).reshape(B, 3, -1, L).to(self.device).type(self.dtype)
        n_max = max(h * w for h, w in tgt)
        mask = torch.ones((B, 1, n_max), dtype=torch.bool, device=self.device)
        out = self.vpm(pix, patch_attention_mask=mask)
        last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return self.rs(last, tgt)

    def prompt_ids(self, content_text, grid):
        rv = self.rv
        text = rv.chat_text([("user", [0, content_text])])
        head, tail = text.split(rv.IMG_TAG)
        return self.ptok.encode(head + rv.placeholder(grid, self.qn) + tail)

    @torch.inference_mode()
    def merged(self, ids, y):
        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        starts = (torch.where(t == self.rv.SPECIAL["<image>"])[0] + 1).tolist()
        ends = torch.where(t == self.rv.SPECIAL["</image>"])[0].tolist()
        B, Q, D = y.shape
        if len(starts) != B or len(ends) != B or any(e - s != Q for s, e in zip(starts, ends)):
            raise RuntimeError("image bounds %s/%s do not fit %d pieces of %d" % (starts[:3], ends[:3], B, Q))
        E = self.llm.model.embed_tokens(t[None])[0].clone()
        idx = torch.cat([torch.arange(s, e) for s, e in zip(starts, ends)]).to(self.device)
        E[idx] = y.reshape(-1, D).to(E.dtype)
        return E

    @torch.inference_mode()
    def decode_loop(self, cache, T, tok, steps):
        """steps greedy tokens after position T; tok is a 0-d GPU tensor; no host sync."""
        pos = torch.arange(T, T + steps, device=self.device).view(1, -1)
        for s in range(steps):
            out = self.llm.model(input_ids=tok.view(1, 1), past_key_values=cache, use_cache=True,
                                 position_ids=pos[:, s:s + 1])
            cache = out.past_key_values
            h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            tok = torch.argmax(self.llm.lm_head(h[:, -1:, :])[0, -1])
        return tok, cache


def gen_pil(side):
    from PIL import Image
    import ref_vision as rv
    return Image.fromarray(rv.gen_image(side, side, IMG_SEED, noise=True), "RGB")


def gen_jpeg(side):
    buf = io.BytesIO()
    gen_pil(side).save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def decode_jpeg(b):
    from PIL import Image
    return Image.open(io.BytesIO(b)).convert("RGB")


# ----------------------------------------------------------------------------------------- phases

class Phase:
    def __init__(self, name):
        self.name, self.times, self.x, self.value, self.unit, self.higher_better = name, [], {}, None, "", False
        self.kind, self.n = parse_phase(name)
        self.error = None
        self.mem = {}


def parse_phase(name):
    for kind in ("prefill", "decode"):
        if name.startswith(kind) and name[len(kind):].isdigit() and int(name[len(kind):]) > 0:
            return kind, int(name[len(kind):])
    if name in ("vision1", "vision10"):
        return "vision", int(name[6:])
    if name in ("ttft", "seedcase"):
        return name, 0
    raise SystemExit("--only: unknown phase %r (prefillN, decodeN, vision1, vision10, ttft, seedcase, all)" % name)


@torch.inference_mode()
def run_prefill(st, p, a):
    ids = torch.tensor([rand_ids(p.n, a.rng_seed, st.cfg["vocab_size"])], device=st.device)
    for r in range(-1, a.reps):
        sync()
        t0 = time.perf_counter()
        logits, cache, T = rc.prefill(st.llm, input_ids=ids)
        sync()
        if r >= 0:
            p.times.append(time.perf_counter() - t0)
        del logits, cache
    med = median(p.times)
    p.value, p.unit, p.higher_better = p.n / med, "tok/s", True
    p.x.update(tokens=p.n, ms=1e3 * med)


@torch.inference_mode()
def run_decode(st, p, a):
    ids = torch.tensor([rand_ids(p.n, a.rng_seed, st.cfg["vocab_size"])], device=st.device)
    steps = a.decode_steps
    for r in range(-1, a.reps):
        logits, cache, T = rc.prefill(st.llm, input_ids=ids)  # a fresh cache at context C, untimed
        tok = torch.argmax(logits)
        n = min(16, steps) if r < 0 else steps
        sync()
        t0 = time.perf_counter()
        tok, cache = st.decode_loop(cache, T, tok, n)
        sync()
        if r >= 0:
            p.times.append(time.perf_counter() - t0)
        del cache, logits
    per_tok = median(p.times) / steps
    kv = st.kv_per_token * (p.n + (steps + 1) / 2.0)
    bytes_ = st.decode_weight_bytes + kv
    p.value, p.unit, p.higher_better = 1.0 / per_tok, "tok/s", True
    p.x.update(context=p.n, steps=steps, ms_per_tok=1e3 * per_tok, bytes_per_tok=bytes_,
               weight_bytes_per_tok=st.decode_weight_bytes, kv_bytes_per_tok=kv, gb_s=bytes_ / per_tok / 1e9)
    if a.peak_gbs:
        p.x["pct_of_peak_bw"] = 100.0 * bytes_ / per_tok / 1e9 / a.peak_gbs


@torch.inference_mode()
def run_vision(st, p, a):
    side = 448 if p.n == 1 else 1344
    img = gen_pil(side)
    tpre = []
    for r in range(-1, a.reps):
        t0 = time.perf_counter()
        strips, tgt, _ = st.strips(img)
        if r >= 0:
            tpre.append(time.perf_counter() - t0)
    if len(strips) != p.n:
        raise RuntimeError("%dx%d gave %d pieces, expected %d" % (side, side, len(strips), p.n))
    for r in range(-1, a.reps):
        sync()
        t0 = time.perf_counter()
        strips, tgt, _ = st.strips(img)
        y = st.encode(strips, tgt)
        sync()
        if r >= 0:
            p.times.append(time.perf_counter() - t0)
        del y
    med, pre = median(p.times), median(tpre)
    p.value, p.unit = 1e3 * med, "ms"
    p.x.update(pieces=len(strips), image_side=side, preprocess_ms=1e3 * pre, device_ms=1e3 * max(med - pre, 0.0))


@torch.inference_mode()
def run_ttft(st, p, a):
    if st.ptok is None:
        raise RuntimeError("needs tokenizer.json in the model folder")
    jpg = gen_jpeg(1344)
    content = QUESTION
    tdec, tvis, tpre = [], [], []
    first, n_prompt, pieces = None, 0, 0
    for r in range(-1, a.reps):
        sync()
        t0 = time.perf_counter()
        img = decode_jpeg(jpg)
        t1 = time.perf_counter()
        strips, tgt, grid = st.strips(img)
        y = st.encode(strips, tgt)
        sync()
        t2 = time.perf_counter()
        ids = st.prompt_ids(content, grid)
        E = st.merged(ids, y)
        logits, cache, T = rc.prefill(st.llm, inputs_embeds=E[None])
        first = int(torch.argmax(logits))  # .item(): the host has the token
        t3 = time.perf_counter()
        if r >= 0:
            p.times.append(t3 - t0)
            tdec.append(t1 - t0)
            tvis.append(t2 - t1)
            tpre.append(t3 - t2)
        n_prompt, pieces = len(ids), len(strips)
        del cache, logits, E, y
    p.value, p.unit = 1e3 * median(p.times), "ms"
    p.x.update(n_prompt=n_prompt, question_tokens=len(st.ptok.encode(QUESTION, post_processor=False)),
               pieces=pieces, jpeg_kib=len(jpg) / 1024.0, jpeg_decode_ms=1e3 * median(tdec),
               vision_ms=1e3 * median(tvis), prefill_ms=1e3 * median(tpre), first_token=first)


def seed_words(st, grid, target):
    """The most filler words whose prompt stays within target tokens (cmd_bench.c seed_words)."""
    n0 = len(st.prompt_ids("", grid))
    if n0 > target:
        raise RuntimeError("--seed-prompt %d: the image alone takes %d prompt tokens" % (target, n0))
    lo, hi, n_lo = 0, target, n0
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        n = len(st.prompt_ids(seed_text(mid), grid))
        if n <= target:
            lo, n_lo = mid, n
        else:
            hi = mid - 1
    return lo, n_lo


@torch.inference_mode()
def seed_once(st, jpg, text, n_new, mode):
    sync()
    t0 = time.perf_counter()
    img = decode_jpeg(jpg)
    strips, tgt, grid = st.strips(img)
    y = st.encode(strips, tgt)
    sync()
    t1 = time.perf_counter()
    ids = st.prompt_ids(text, grid)
    E = st.merged(ids, y)
    if mode == "generate":
        out = st.llm.generate(inputs_embeds=E[None], do_sample=False, num_beams=1, max_new_tokens=n_new,
                              min_new_tokens=n_new, eos_token_id=STOP_IDS, pad_token_id=0, use_cache=True)
        sync()
        t3 = time.perf_counter()
        gen = out[0].tolist()
        if len(gen) > n_new:  # a transformers that returns the prompt positions too
            gen = gen[-n_new:]
        return {"total": t3 - t0, "vision": t1 - t0, "rest": t3 - t1, "n_prompt": len(ids), "n_gen": len(gen)}
    logits, cache, T = rc.prefill(st.llm, inputs_embeds=E[None])
    tok = torch.argmax(logits)
    int(tok)
    t2 = time.perf_counter()
    tok, cache = st.decode_loop(cache, T, tok, n_new - 1)
    sync()
    t3 = time.perf_counter()
    return {"total": t3 - t0, "vision": t1 - t0, "prefill": t2 - t1, "ttft": t2 - t0, "decode": t3 - t2,
            "rest": t3 - t1, "n_prompt": len(ids), "n_gen": n_new}


def run_seed(st, p, a):
    if st.ptok is None:
        raise RuntimeError("needs tokenizer.json in the model folder")
    _, _, grid = st.strips(gen_pil(1344))
    words, n_target = seed_words(st, grid, a.seed_prompt)
    text = seed_text(words)
    jpg = gen_jpeg(1344)
    mode = a.seed_mode
    try:
        seed_once(st, jpg, text, 8, mode)  # warm-up
    except Exception as ex:  # noqa: BLE001
        if mode != "generate":
            raise
        log("generate failed (%s: %s); the seed case uses the manual loop" % (type(ex).__name__, str(ex)[:300]))
        mode = "loop (generate failed: %s)" % type(ex).__name__
        seed_once(st, jpg, text, 8, "loop")
    runs = [seed_once(st, jpg, text, a.seed_new, "generate" if mode == "generate" else "loop") for _ in range(a.seed_reps)]
    p.times = [r["total"] for r in runs]
    p.value, p.unit = median(p.times), "s"
    r0 = runs[0]
    if r0["n_prompt"] != n_target:
        raise RuntimeError("prompt has %d tokens, planned %d" % (r0["n_prompt"], n_target))
    if r0["n_gen"] != a.seed_new:
        raise RuntimeError("generated %d tokens, asked for %d" % (r0["n_gen"], a.seed_new))
    p.x.update(n_prompt=r0["n_prompt"], n_new=a.seed_new, filler_words=words,
               vision_ms=1e3 * median([r["vision"] for r in runs]))
    if "decode" in r0:
        p.x.update(prefill_ms=1e3 * median([r["prefill"] for r in runs]), ttft_ms=1e3 * median([r["ttft"] for r in runs]),
                   decode_s=median([r["decode"] for r in runs]),
                   decode_tok_s=(a.seed_new - 1) / median([r["decode"] for r in runs]))
    else:
        p.x.update(generate_s=median([r["rest"] for r in runs]))
    p.x["seed_mode"] = mode


RUN = {"prefill": run_prefill, "decode": run_decode, "vision": run_vision, "ttft": run_ttft, "seedcase": run_seed}


# ----------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder (the one `minicpmv bench` ran on)")
    ap.add_argument("--only", default=DEFAULT_PHASES, help="comma list of phases, or all (default: %(default)s)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--decode-steps", type=int, default=128)
    ap.add_argument("--seed-prompt", type=int, default=3000)
    ap.add_argument("--seed-new", type=int, default=1000)
    ap.add_argument("--seed-reps", type=int, default=1)
    ap.add_argument("--seed-mode", choices=("generate", "loop"), default="generate")
    ap.add_argument("--rng-seed", type=int, default=1)
    ap.add_argument("--vision-attn", choices=("eager", "sdpa"), default="eager",
                    help="Idefics2 attention (eager: the README path)")
    ap.add_argument("--strict-numerics", action="store_true",
                    help="TF32 and fp16 reduced-precision reductions off (ref_common.setup_numerics); default: torch's")
    ap.add_argument("--peak-gbs", default="", help="the card's read bandwidth in GB/s for %% of peak, or auto: "
                    "measured first (torch sum of 8 GiB fp16, best of 5)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", default=None, help="write the results for tools/bench_compare.py")
    modes.add_args(ap)
    a = ap.parse_args()
    a.peak_auto = a.peak_gbs == "auto"
    try:
        a.peak_gbs = 0.0 if a.peak_auto or not a.peak_gbs else float(a.peak_gbs)
    except ValueError:
        rc.die("--peak-gbs: %r is neither auto nor a number" % a.peak_gbs)
    counts = modes.batch_counts(a.batch)
    for k in ("batch_new", "batch_reps", "quant_context", "quant_steps", "quant_reps", "quant_budget"):
        if getattr(a, k) < 1:
            rc.die("--%s must be >= 1" % k.replace("_", "-"))
    for k in ("reps", "decode_steps", "seed_prompt", "seed_new", "seed_reps"):
        if getattr(a, k) < 1:
            rc.die("--%s must be >= 1" % k.replace("_", "-"))
    phases = [] if a.only == "none" else \
        [Phase(n.strip()) for n in (DEFAULT_PHASES if a.only == "all" else a.only).split(",") if n.strip()]
    if not phases and a.only != "none":
        rc.die("--only: empty list (none: only the baseline modes)")

    if a.strict_numerics:
        rc.setup_numerics()
    torch.manual_seed(0)
    device = rc.pick_device(a.device)
    if torch.device(device).type != "cuda":
        log("WARNING: %s is not a GPU; memory numbers are not measured" % device)
    cuda = torch.device(device).type == "cuda"
    cfg = rc.load_config(a.model)
    for k in ("query_num", "vision_config"):
        if k not in cfg:
            rc.die("config.json has no %s" % k)
    free0 = total = None
    peak = None
    if cuda:
        torch.zeros(1, device=device)  # the context exists before the baseline, as in cmd_bench.c
        if a.peak_auto:  # before the model and the baseline, as `minicpmv bench --peak-gbs auto`
            peak = modes.run_mode(modes.Mode("peak"), modes.mode_peak, device)
            if peak.value and not peak.error:
                a.peak_gbs = peak.value
        free0, total = torch.cuda.mem_get_info(device)
    elif a.peak_auto:
        peak = modes.Mode("peak")
        peak.skipped = "%s is not a GPU" % device
    st = Stack(a, cfg, device)
    log("loaded in %.1f s: llm sdpa fp16, vpm %s (%s), resampler (PyTorch, spec §4)" % (st.load_s, st.vision_attn, st.vpm_info))
    min_free = free0
    max_ctx = 0
    for p in phases:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        try:
            RUN[p.kind](st, p, a)
            if not (p.value is not None and p.value > 0 and math.isfinite(p.value)):
                raise RuntimeError("no valid timing")
        except (Exception, SystemExit) as ex:  # noqa: BLE001 (ref_* helpers exit through rc.die)
            p.error = "failed: %s: %s" % (type(ex).__name__, str(ex)[:300])
            log(traceback.format_exc()[-2000:])
        if p.kind == "decode":
            max_ctx = max(max_ctx, p.n + a.decode_steps)
        elif p.kind == "prefill":
            max_ctx = max(max_ctx, p.n)
        elif p.kind == "seedcase":
            max_ctx = max(max_ctx, a.seed_prompt + a.seed_new)
        if cuda:
            sync()
            fr, _ = torch.cuda.mem_get_info(device)
            min_free = min(min_free, fr)
            p.mem = {"peak_allocated_bytes": torch.cuda.max_memory_allocated(device),
                     "peak_reserved_bytes": torch.cuda.max_memory_reserved(device), "used_after_bytes": free0 - fr}
        log("%-12s %s (%.1f s)" % (p.name, "done" if p.error is None else p.error, time.perf_counter() - t0))

    # ---- the baseline modes (flags), each on its own
    extra = []
    for n in counts:
        extra.append(modes.run_mode(modes.Mode("conc%d" % n), modes.mode_batch, st, n, a, rand_ids, splitmix64, WORDS))
    if a.int8:
        q8 = {"pack": modes.Mode("int8_decode%d" % a.quant_context),
              "dequant": modes.Mode("int8dq_decode%d" % a.quant_context)}
        try:
            modes.mode_int8(q8, st, a, rand_ids)
        except (Exception, SystemExit) as ex:  # noqa: BLE001 (the fp16 reference before either path)
            for m in q8.values():
                if not (m.error or m.skipped or m.value):
                    m.error = "%s: %s" % (type(ex).__name__, str(ex)[:300])
            log(traceback.format_exc()[-2000:])
        extra += [q8["pack"], q8["dequant"]]
    if a.nf4:
        extra.append(modes.run_mode(modes.Mode("nf4_decode%d" % a.quant_context), modes.mode_nf4, st, a, rand_ids))

    # ---- report
    print("\nbench_hf.py: %s, %d layers, d=%d, fp16, llm sdpa, vision %s, reps %d (median)" % (
        torch.cuda.get_device_name(device) if cuda else device, cfg["num_hidden_layers"], cfg["hidden_size"],
        st.vision_attn, a.reps))
    print("%-12s %14s  %s" % ("phase", "result", "details"))
    for p in phases:
        if p.error:
            print("%-12s %14s  %s" % (p.name, "-", p.error))
            continue
        det = []
        for k, v in p.x.items():
            if isinstance(v, str):
                det.append("%s=%s" % (k, v))
            elif "bytes" in k:
                det.append("%s=%.3gGB" % (k, v / 1e9))
            elif not math.isfinite(float(v)):
                det.append("%s=%s" % (k, v))
            elif float(v) == int(v) and abs(v) < 1e9:
                det.append("%s=%d" % (k, int(v)))
            else:
                det.append("%s=%.4g" % (k, v))
        print("%-12s %14s  %s" % (p.name, "%.*f %s" % (0 if p.value >= 100 else 2, p.value, p.unit), " ".join(det)))
    mem = {"devices": []}
    if cuda and phases:
        kv = st.kv_per_token * max_ctx
        peak_alloc = max([p.mem.get("peak_allocated_bytes", 0) for p in phases] + [0])
        peak_res = max([p.mem.get("peak_reserved_bytes", 0) for p in phases] + [0])
        used = free0 - min_free
        idx = torch.device(device).index
        d = {"device": "cuda:%d" % (idx if idx is not None else torch.cuda.current_device()),
             "weights_bytes": st.weight_bytes + st.rs.nbytes(), "kv_bytes": kv, "peak_used_bytes": used,
             "peak_allocated_bytes": peak_alloc, "peak_reserved_bytes": peak_res,
             "beyond_weights_kv_bytes": used - st.weight_bytes - st.rs.nbytes() - kv, "total_bytes": total,
             "method": "free memory before load - min free (after each phase); KV at the longest context reached"}
        mem["devices"].append(d)
        G = 1024.0 ** 3
        print("\nmemory      %10s %10s %12s %14s %14s" % ("weights", "KV", "peak used", "peak alloc", "beyond W+KV"))
        print("%-11s %7.2f GiB %6.2f GiB %8.2f GiB %10.2f GiB %10.2f GiB" % (
            d["device"], d["weights_bytes"] / G, kv / G, used / G, peak_alloc / G, d["beyond_weights_kv_bytes"] / G))
    if peak is not None or extra:
        print("")
        for m in ([peak] if peak is not None else []) + extra:
            print(m.result_line())
    if a.json:
        out = {"tool": "bench_hf.py", "model": a.model, "dtype": "F16", "reps": a.reps, "load_s": st.load_s,
               "decode_weight_bytes": st.decode_weight_bytes, "device": device,
               "device_name": torch.cuda.get_device_name(device) if cuda else device,
               "llm_attn": "sdpa", "vision_attn": st.vision_attn, "strict_numerics": bool(a.strict_numerics),
               "env": rc.env_metadata(device), "phases": {}, "memory": mem}
        for p in phases:
            if p.error:
                out["phases"][p.name] = {"error": p.error}
                continue
            o = {"value": p.value, "unit": p.unit, "higher_better": p.higher_better, "median_s": median(p.times),
                 "times_s": p.times}
            o.update(p.x)
            o.update(p.mem)
            out["phases"][p.name] = o
        for m in extra:
            out["phases"][m.name] = m.phase()
        if peak is not None:
            out["read_bandwidth"] = [dict(peak.phase(), device=device, name="torch sum")]
        if a.peak_gbs:
            out["peak_gbs"] = a.peak_gbs
            out["peak_gbs_source"] = "measured" if a.peak_auto else "given"
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
        log("wrote %s" % a.json)
    sys.exit(1 if any(p.error for p in phases) or any(m.error for m in extra + ([peak] if peak else [])) else 0)


if __name__ == "__main__":
    main()
