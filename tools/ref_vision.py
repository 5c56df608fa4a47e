#!/usr/bin/env python3
"""ref_vision.py: PyTorch reference for the whole image path of MiniCPM-Llama3-V 2.5 on a checkpoint folder:
pixels -> slicing (§5) -> vision tower (§3) -> resampler (§4) -> prompt + merge (§6) -> Llama-3 (§9) -> greedy.

    python3 tools/ref_vision.py --model DIR --out OUTDIR [--case NAME|all] [--steps 32] [--max-bytes 2000000]
                                [--official --official-dir DIR]

Writes into OUTDIR, per case: vision_<case>.safetensors and the input image(s) <case>_img<k>.png|.jpg (created
here, deterministically), plus vision_posids.safetensors (torch's 4.40 position-id rule swept over N) and, with
--official, official_report.json. docs/TESTING.md lists every tensor and the tolerances.

Independent of the official remote code: the preprocessing is written from spec §5 (Pillow resize, Python round,
numpy float32), the resampler from §4 (numpy float32 2-D sin-cos table, key padding mask, q scaled before the
matmul), the prompt from §6-§7 (special tokens split out before BPE, "!" = id 0 is special). The vision tower is
transformers' Idefics2VisionTransformer with eager attention, fed as get_vllm_embedding does (all pieces of the
request in one batch, zero-padded to N_max, patch mask all True), with Idefics2VisionEmbeddings.forward replaced
by the transformers 4.40 position-id rule (§3.2; 5.x computes it differently, spec §13). The LLM is transformers'
LlamaForCausalLM (ref_common.build_llama). Two runs: f16 (README path: fp16 weights, sdpa LLM, eager ViT) and
f32 (fp16-stored weights upcast, eager everywhere, TF32 off).
"""
import argparse
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import types
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ref_common as rc  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

QUESTION = "What is in the image?"
# name -> images (W, H, format, seed) and the chat turns; an int in a turn is an image index.
CASES = {
    "448x448": ([(448, 448, "png", 11)], [("user", [0, QUESTION])]),
    "640x480": ([(640, 480, "png", 12)], [("user", [0, QUESTION])]),
    "1024x768": ([(1024, 768, "png", 13)], [("user", [0, QUESTION])]),
    "3000x4000": ([(3000, 4000, "jpg", 14)], [("user", [0, QUESTION])]),
    "100x2000": ([(100, 2000, "png", 15)], [("user", [0, QUESTION])]),
    "multi": ([(1000, 500, "png", 16), (300, 200, "png", 17)],
              [("user", [0, "Describe the first picture."]),
               ("assistant", ["It is a colourful gradient with a dark square."]),
               ("user", [1, "And this one? Compare them!"])]),
}
JPEG_QUALITY = 85
# spec §5.2 worked sizes (S=448, P=14, MAX=9): W,H -> overview (w,h), grid (cols,rows) or None, slice (w,h)
SPEC_SIZES = {(448, 448): ((448, 448), None, None), (640, 480): ((518, 392), (2, 1), (364, 546)),
              (1024, 768): ((518, 392), (2, 2), (518, 392)), (3000, 4000): ((392, 518), (3, 3), (392, 518)),
              (100, 2000): ((98, 2002), None, None), (1000, 500): ((630, 322), (2, 1), (448, 448))}
# spec §7 (MiniCPM's special tokens) plus the pad token "!" = 0, which transformers makes special (§7, §13)
SPECIAL = {"<|begin_of_text|>": 128000, "<|end_of_text|>": 128001, "<unk>": 128002, "<|start_header_id|>": 128006,
           "<|end_header_id|>": 128007, "<|eot_id|>": 128009, "<image>": 128010, "</image>": 128011,
           "<ref>": 128012, "</ref>": 128013, "<box>": 128014, "</box>": 128015, "<quad>": 128016,
           "</quad>": 128017, "<point>": 128018, "</point>": 128019, "<slice>": 128020, "</slice>": 128021,
           "!": 0}
IMG_TAG = "(<image>./</image>)"


# ----------------------------------------------------------------------------------------- images

def gen_image(W, H, seed, noise=True):
    """The integer formula of tests/test_image.c gen_px (gradients, hashed noise, inverted rectangle,
    checkerboard, diagonal line), so the C side can regenerate a PNG case bit for bit. noise=False drops the
    hash term (used for the JPEG case, to keep the committed file small)."""
    M = np.uint64(0xFFFFFFFF)
    y, x = np.mgrid[0:H, 0:W].astype(np.int64)
    out = np.empty((H, W, 3), dtype=np.uint8)
    for c in range(3):
        xu, yu = x.astype(np.uint64), y.astype(np.uint64)
        h = ((xu * np.uint64(73856093)) & M) ^ ((yu * np.uint64(19349663)) & M) ^ \
            np.uint64((c * 83492791) & 0xFFFFFFFF) ^ np.uint64((seed * 2654435761) & 0xFFFFFFFF)
        h ^= h >> np.uint64(13)
        h = (h * np.uint64(0x5bd1e995)) & M
        h ^= h >> np.uint64(15)
        if c == 0:
            base = x * 255 // (W - 1) if W > 1 else np.full_like(x, 128)
        elif c == 1:
            base = y * 255 // (H - 1) if H > 1 else np.full_like(x, 128)
        else:
            base = (x + y) * 255 // (W + H - 2) if W + H > 2 else np.full_like(x, 128)
        v = base + ((h >> np.uint64(24)).astype(np.int64) % 25 - 12 if noise else 0)
        inv = (4 * x >= W) & (2 * x < W) & (4 * y >= H) & (2 * y < H)
        v = np.where(inv, 255 - v, v)
        chk = (4 * x >= 3 * W) & (4 * y >= 3 * H)
        v = np.where(chk, np.where((((x >> 3) + (y >> 3)) & 1) == 1, 235, 20), v)
        line = np.abs(x * H - y * W) < max(W, H)
        v = np.where(line, 255 if c == 1 else 0, v)
        out[:, :, c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def crc_pair(arr):
    """CRC-32 (zlib's) of the uint8 HWC bytes, and the same split into [low 16 bits, high 16 bits] for an I32
    tensor."""
    crc = zlib.crc32(np.ascontiguousarray(arr).tobytes()) & 0xFFFFFFFF
    return crc, [crc & 0xFFFF, crc >> 16]


def sha256_hex(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


# ----------------------------------------------------------------------------------------- §5 preprocessing

def preprocessor_params(model_dir, cfg):
    sc = cfg.get("slice_config") or {}
    pp = {"max_slice_nums": sc.get("max_slice_nums", 9), "scale_resolution": sc.get("scale_resolution", 448),
          "patch_size": sc.get("patch_size", cfg.get("patch_size", 14)), "image_feature_size": cfg["query_num"],
          "norm_mean": [0.5, 0.5, 0.5], "norm_std": [0.5, 0.5, 0.5]}
    path = os.path.join(model_dir, "preprocessor_config.json")
    if os.path.exists(path):  # the HEAD processor reads this file (spec §1.3)
        with open(path) as f:
            j = json.load(f)
        for k in pp:
            if k in j:
                pp[k] = j[k]
    if pp["image_feature_size"] != cfg["query_num"]:
        rc.die("preprocessor image_feature_size %s != config query_num %s" % (pp["image_feature_size"], cfg["query_num"]))
    if pp["patch_size"] != cfg["vision_config"]["patch_size"]:
        rc.die("slice patch_size %s != vision patch_size %s" % (pp["patch_size"], cfg["vision_config"]["patch_size"]))
    return pp


def ensure_divide(length, p):
    return max(round(length / p) * p, p)  # Python round(): half to even (spec §5.2)


def best_resize(W, H, S, P, upscale):
    if W * H > S * S or upscale:
        r = W / H
        H = int(S / math.sqrt(r))
        W = int(H * r)
    return ensure_divide(W, P), ensure_divide(H, P)


def best_grid(W, H, S, MAX):
    multiple = min(math.ceil(W * H / (S * S)), MAX)
    if multiple <= 1:
        return None
    cands = [n for n in (multiple - 1, multiple, multiple + 1) if n != 1 and n <= MAX]
    grids = [(m, n // m) for n in cands for m in range(1, n + 1) if n % m == 0]
    log_ratio = math.log(W / H)
    best, err = (1, 1), float("inf")
    for g in grids:
        e = abs(log_ratio - math.log(g[0] / g[1]))
        if e < err:  # strict: the first of equal errors wins
            best, err = g, e
    return best  # (cols, rows)


def slice_image(img, pp):
    """[overview] + slices in row-major order, and the grid (cols, rows) or None. Every resize starts from the
    original image (spec §5.2)."""
    from PIL import Image
    S, P, MAX = pp["scale_resolution"], pp["patch_size"], pp["max_slice_nums"]
    W, H = img.size
    grid = best_grid(W, H, S, MAX)
    bicubic = Image.Resampling.BICUBIC
    if grid is None:
        return [img.resize(best_resize(W, H, S, P, True), resample=bicubic)], None
    overview = img.resize(best_resize(W, H, S, P, False), resample=bicubic)
    cols, rows = grid
    rw, rh = ensure_divide(W, cols), ensure_divide(H, rows)
    sw, sh = best_resize(rw / cols, rh / rows, S, P, True)
    refine = img.resize((sw * cols, sh * rows), resample=bicubic)
    slices = [refine.crop((j * sw, i * sh, (j + 1) * sw, (i + 1) * sh)) for i in range(rows) for j in range(cols)]
    return [overview] + slices, grid


def to_strip(piece, pp):
    """uint8 HWC -> float32 (x/255 - mean)/std -> CHW -> the [3, P, P*N] strip of reshape_by_patch (§3.1, §5.4):
    strip[c][ky][P*n + kx] = img[c][P*i + ky][P*j + kx], n = i*w + j."""
    P = pp["patch_size"]
    a = np.asarray(piece, dtype=np.uint8)
    x = a.astype(np.float32) / np.float32(255)
    x = (x - np.array(pp["norm_mean"], dtype=np.float32)) / np.array(pp["norm_std"], dtype=np.float32)
    assert x.dtype == np.float32
    chw = np.ascontiguousarray(x.transpose(2, 0, 1))
    C, H, W = chw.shape
    assert H % P == 0 and W % P == 0, (H, W)
    h, w = H // P, W // P
    strip = np.ascontiguousarray(chw.reshape(C, h, P, w, P).transpose(0, 2, 1, 3, 4).reshape(C, P, h * w * P))
    # cross-check the layout with torch's unfold, the way the official reshape_by_patch computes it
    u = F.unfold(torch.from_numpy(chw)[None], (P, P), stride=(P, P))[0]
    u = u.reshape(C, P, P, -1).permute(0, 1, 3, 2).reshape(C, P, -1).numpy()
    if not np.array_equal(u, strip):
        rc.die("strip layout differs from unfold-based reshape_by_patch")
    probe_n = [0, (h * w) // 2, h * w - 1]  # first, middle, last patch (may repeat for tiny pieces)
    probe = np.stack([chw[:, (n // w) * P:(n // w + 1) * P, (n % w) * P:(n % w + 1) * P].reshape(-1) for n in probe_n])
    return strip, (h, w), a, probe_n, probe


# ----------------------------------------------------------------------------------------- §6-§7 prompt

class PromptTokenizer:
    """tokenizer.json's BPE for ordinary text; the special tokens of SPECIAL (and "!") are split out of the raw
    text first, as HF does with added tokens (spec §7). The post-processor's own additions (a BOS, for some
    tokenizer.json files) are applied around the whole text, as the HEAD processor's tokenizer.encode does."""

    def __init__(self, path, use_post_processor=True):
        from tokenizers import Tokenizer
        self.path = path
        self.tok = Tokenizer.from_file(path)
        for s, i in SPECIAL.items():
            tid = self.tok.token_to_id(s)
            if tid is not None and tid != i:
                rc.die("%s maps %r to %d; spec §7 says %d" % (path, s, tid, i))
        self.known = [s for s in SPECIAL if s != "!" and self.tok.token_to_id(s) == SPECIAL[s]]
        with_pp = self.tok.encode("x", add_special_tokens=True).ids
        plain = self.tok.encode("x", add_special_tokens=False).ids
        k = next((i for i in range(len(with_pp) - len(plain) + 1) if with_pp[i:i + len(plain)] == plain), None)
        if k is None:
            rc.die("%s: cannot locate the post-processor's additions" % path)
        self.prefix = with_pp[:k] if use_post_processor else []
        self.suffix = with_pp[k + len(plain):] if use_post_processor else []
        self.split_re = re.compile("(" + "|".join(re.escape(s) for s in sorted(SPECIAL, key=len, reverse=True)) + ")")

    def encode(self, text, post_processor=True):
        ids = list(self.prefix) if post_processor else []
        for part in self.split_re.split(text):
            if not part:
                continue
            if part in SPECIAL:
                ids.append(SPECIAL[part])
            else:
                ids.extend(self.tok.encode(part, add_special_tokens=False).ids)
        return ids + (list(self.suffix) if post_processor else [])

    def native(self, text):
        """tokenizers' own encode with "!" added as a special token (what transformers builds, §13); only
        comparable when tokenizer.json itself has MiniCPM's added tokens."""
        from tokenizers import Tokenizer
        t = Tokenizer.from_str(self.tok.to_str())
        t.add_special_tokens(["!"])
        return t.encode(text, add_special_tokens=True).ids


def placeholder(grid, qn):
    ph = "<image>" + "<unk>" * qn + "</image>"
    if grid is not None:
        cols, rows = grid
        ph += "<slice>" + "\n".join(ph * cols for _ in range(rows)) + "</slice>"
    return ph


def chat_text(turns):
    """spec §6.1: image parts become "(<image>./</image>)", parts joined by "\\n", content stripped, Llama-3
    template, assistant header always appended."""
    s = "<|begin_of_text|>"
    for role, parts in turns:
        content = "\n".join(IMG_TAG if isinstance(p, int) else p for p in parts)
        s += "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + content.strip() + "<|eot_id|>"
    return s + "<|start_header_id|>assistant<|end_header_id|>\n\n"


def expected_640x480_ids(qn):
    """spec §13: the ids model.chat built for a 640x480 image and QUESTION (one BOS)."""
    img = [128010] + [128002] * qn + [128011]
    return ([128000, 128006, 882, 128007, 271] + img + [128020] + img + img + [128021, 198, 3923, 374, 304, 279,
            2217, 30, 128009, 128006, 78191, 128007, 271])


# ----------------------------------------------------------------------------------------- §3.2 position ids

def posids_torch_440(n_w, n_h, per_side):
    """transformers 4.40 Idefics2VisionEmbeddings, for one batch row with nb_patches_h = n_h and
    nb_patches_w = n_w (the all-True mask gives n_h = 1, n_w = N_max), computed with the same torch CPU ops."""
    boundaries = torch.arange(1 / per_side, 1.0, 1 / per_side)
    fh = torch.arange(0, 1 - 1e-6, 1 / torch.tensor(n_h))
    fw = torch.arange(0, 1 - 1e-6, 1 / torch.tensor(n_w))
    bh = torch.bucketize(fh, boundaries, right=True)
    bw = torch.bucketize(fw, boundaries, right=True)
    return (bh[:, None] * per_side + bw).flatten()


def posids_spec_rule(n, per_side):
    """The scalar rule written in spec §3.2 (numpy emulation): boundaries and frac computed in double from
    fp32 steps, then rounded to fp32; id = #boundaries <= frac."""
    s = 1.0 / per_side
    cnt = math.ceil((1.0 - s) / s)
    boundaries = (s + s * np.arange(cnt, dtype=np.float64)).astype(np.float32)
    step = np.float32(1.0) / np.float32(n)
    cnt_f = math.ceil((1 - 1e-6) / float(step))
    frac = (float(step) * np.arange(cnt_f, dtype=np.float64)).astype(np.float32)
    return np.searchsorted(boundaries, frac, side="right").astype(np.int64)


def _embeddings_forward_440(self, pixel_values, patch_attention_mask=None, *args, **kwargs):
    """Idefics2VisionEmbeddings.forward as in transformers 4.40 (patch conv + position_embedding[ids])."""
    if torch.get_default_dtype() != torch.float32:
        raise RuntimeError("the 4.40 position-id rule needs default dtype float32")
    B, _, H, W = pixel_values.shape
    P, per_side = self.patch_size, self.num_patches_per_side
    embeddings = self.patch_embedding(pixel_values).flatten(2).transpose(1, 2)
    mh, mw = H // P, W // P
    if patch_attention_mask is None:
        mask = torch.ones((B, mh, mw), dtype=torch.bool)
    else:
        mask = patch_attention_mask.detach().to("cpu", torch.bool).reshape(B, mh, mw)
    position_ids = torch.full((B, mh * mw), 0, dtype=torch.long)
    for b in range(B):
        m = mask[b]
        ids = posids_torch_440(int(m[0].sum()), int(m[:, 0].sum()), per_side)
        position_ids[b][m.reshape(-1)] = ids
    self._ref_position_ids = position_ids.clone()
    return embeddings + self.position_embedding(position_ids.to(self.position_embedding.weight.device))


# ----------------------------------------------------------------------------------------- models

def build_vpm(cfg, sd, dtype, device):
    try:
        from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
    except ImportError:
        from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionConfig
    from transformers.models.idefics2 import modeling_idefics2 as mi
    mi.Idefics2VisionEmbeddings.forward = _embeddings_forward_440
    vc = dict(cfg["vision_config"])
    vc.pop("model_type", None)
    vcfg = Idefics2VisionConfig(**vc)
    vcfg._attn_implementation = "eager"
    with rc.default_dtype(dtype), torch.device(device):
        vpm = mi.Idefics2VisionTransformer(vcfg)
    vpm.eval()
    rc.set_attn(vpm, "eager")
    n_att = 0
    att_cls = getattr(mi, "Idefics2VisionAttention", None)
    for m in vpm.modules():
        if att_cls is not None and isinstance(m, att_cls):
            n_att += 1
            mc = getattr(m, "config", None)
            if mc is not None and getattr(mc, "_attn_implementation", None) != "eager":
                mc._attn_implementation = "eager"
    if att_cls is not None and n_att != vcfg.num_hidden_layers:
        rc.die("found %d vision attention modules for %d layers" % (n_att, vcfg.num_hidden_layers))
    emb = vpm.embeddings
    # the class is patched above (the official model's vpm gets it too); patch the instance as well in case
    # this transformers builds its embeddings from another class
    emb.forward = types.MethodType(_embeddings_forward_440, emb)
    for attr in ("patch_size", "num_patches_per_side", "patch_embedding", "position_embedding"):
        if not hasattr(emb, attr):
            rc.die("Idefics2VisionEmbeddings has no %s in this transformers" % attr)
    sd = dict(sd)
    if cfg.get("drop_vision_last_layer", True):  # MiniCPMVConfig's class default is True (spec §1.1)
        last = len(vpm.encoder.layers) - 1
        vpm.encoder.layers = vpm.encoder.layers[:-1]
        sd = {k: v for k, v in sd.items() if not k.startswith("encoder.layers.%d." % last)}
    rc.copy_weights(vpm, sd, "vpm")
    info = "eager; hidden_act %s, layer_norm_eps %g, %d layers run" % (
        vcfg.hidden_act, vcfg.layer_norm_eps, len(vpm.encoder.layers))
    rc.log("vpm %s on %s: %s" % (dtype, device, info))
    return vpm, info


def sincos_table(D, H, W):
    """spec §4.2 in numpy float32: [H, W, D] with [sin(c w), cos(c w), sin(r w), cos(r w)],
    w_i = 1 / 10000^(i / (D/4)), i < D/4 (column first, then row)."""
    q = D // 4
    omega = np.float32(1.0) / np.power(np.float32(10000), np.arange(q, dtype=np.float32) / np.float32(q))
    assert omega.dtype == np.float32
    r = np.arange(H, dtype=np.float32)[:, None, None] * np.ones((1, W, 1), dtype=np.float32)
    c = np.arange(W, dtype=np.float32)[None, :, None] * np.ones((H, 1, 1), dtype=np.float32)
    rw, cw = r * omega, c * omega  # one fp32 product each, like the einsum outer product
    out = np.concatenate([np.sin(cw), np.cos(cw), np.sin(rw), np.cos(rw)], axis=-1)
    assert out.dtype == np.float32 and out.shape == (H, W, D)
    return out


def resampler_weights(sd, dtype, device, D, qn, dv):
    shapes = {"query": (qn, D), "kv_proj.weight": (D, dv), "ln_q.weight": (D,), "ln_q.bias": (D,),
              "ln_kv.weight": (D,), "ln_kv.bias": (D,), "attn.in_proj_weight": (3 * D, D),
              "attn.in_proj_bias": (3 * D,), "attn.out_proj.weight": (D, D), "attn.out_proj.bias": (D,),
              "ln_post.weight": (D,), "ln_post.bias": (D,), "proj": (D, D)}
    extra = sorted(set(sd) - set(shapes))
    if extra:
        rc.die("unexpected resampler tensors %s" % extra)
    W = {}
    for k, shp in shapes.items():
        if k not in sd or tuple(sd[k].shape) != shp:
            rc.die("resampler.%s: expected %s, got %s" % (k, shp, tuple(sd[k].shape) if k in sd else "nothing"))
        W[k] = sd[k].to(device=device, dtype=dtype)
    return W


@torch.no_grad()
def resampler_forward(W, x, tgt, eps=1e-6):
    """spec §4.1 for x [B, N_max, dv] and tgt [(h, w)] -> [B, Q, D], in x's dtype like the official module."""
    dt, dev = x.dtype, x.device
    B, L, _ = x.shape
    Q, D = W["query"].shape
    nh = D // 128  # MiniCPMV.init_resampler: num_heads = embed_dim // 128
    hd = D // nh
    plen = [h * w for h, w in tgt]
    if max(plen) != L:
        rc.die("resampler: N_max %d != max h*w %d" % (L, max(plen)))
    table = sincos_table(D, max(70, max(h for h, _ in tgt)), max(70, max(w for _, w in tgt)))
    pos = torch.zeros((B, L, D), dtype=dt, device=dev)
    mask = torch.zeros((B, L), dtype=dt, device=dev)
    for i, (h, w) in enumerate(tgt):
        pos[i, :h * w] = torch.from_numpy(np.ascontiguousarray(table[:h, :w].reshape(h * w, D))).to(dev).to(dt)
        mask[i, h * w:] = float("-inf")
    kv = F.layer_norm(F.linear(x, W["kv_proj.weight"]), (D,), W["ln_kv.weight"], W["ln_kv.bias"], eps)
    q = F.layer_norm(W["query"], (D,), W["ln_q.weight"], W["ln_q.bias"], eps)
    wq, wk, wv = W["attn.in_proj_weight"].chunk(3)
    bq, bk, bv = W["attn.in_proj_bias"].chunk(3)
    Qp = F.linear(q, wq, bq)                # [Q, D]: no position on the queries
    K = F.linear(kv + pos, wk, bk)          # position on the key input only
    V = F.linear(kv, wv, bv)
    Qh = Qp.view(Q, nh, hd).transpose(0, 1).unsqueeze(0).expand(B, nh, Q, hd).reshape(B * nh, Q, hd)
    Kh = K.view(B, L, nh, hd).permute(0, 2, 1, 3).reshape(B * nh, L, hd)
    Vh = V.view(B, L, nh, hd).permute(0, 2, 1, 3).reshape(B * nh, L, hd)
    m = mask.view(B, 1, 1, L).expand(B, nh, 1, L).reshape(B * nh, 1, L)
    S = torch.baddbmm(m, Qh / math.sqrt(hd), Kh.transpose(1, 2))   # q scaled BEFORE the product
    O = torch.bmm(torch.softmax(S, dim=-1), Vh)
    O = O.view(B, nh, Q, hd).permute(0, 2, 1, 3).reshape(B, Q, D)
    O = F.linear(O, W["attn.out_proj.weight"], W["attn.out_proj.bias"])
    O = F.layer_norm(O, (D,), W["ln_post.weight"], W["ln_post.bias"], eps)
    return O @ W["proj"]                    # proj is [in, out]


# ----------------------------------------------------------------------------------------- cases

def prepare_case(name, out_dir, pp, qn, ptok, prompt_ids_file, allow_mismatch):
    from PIL import Image
    images, turns = CASES[name]
    case = {"name": name, "images": [], "strips": [], "tgt": [], "pieces": [], "probe_idx": [], "probe": []}
    ph = []
    for k, (W, H, fmt, seed) in enumerate(images):
        path = os.path.join(out_dir, "%s_img%d.%s" % (name, k, fmt))
        arr = gen_image(W, H, seed, noise=(fmt == "png"))
        im = Image.fromarray(arr, "RGB")
        if fmt == "png":
            im.save(path)
        else:
            im.save(path, quality=JPEG_QUALITY)
        img = Image.open(path).convert("RGB")   # spec §5.1: decode the file, as the C side will
        dec = np.asarray(img, dtype=np.uint8)
        if fmt == "png" and not np.array_equal(dec, arr):
            rc.die("%s: PNG round trip changed pixels" % path)
        pieces, grid = slice_image(img, pp)
        if (W, H) in SPEC_SIZES and (pp["scale_resolution"], pp["patch_size"], pp["max_slice_nums"]) == (448, 14, 9):
            ov, g, sl = SPEC_SIZES[(W, H)]
            if pieces[0].size != ov or grid != g or (g is not None and pieces[1].size != sl):
                rc.die("%dx%d: sizes %s grid %s differ from spec §5.2 %s" % (W, H, pieces[0].size, grid, SPEC_SIZES[(W, H)]))
        crc, pair = crc_pair(dec)
        case["images"].append({"path": os.path.basename(path), "W": W, "H": H, "fmt": fmt, "seed": seed,
                               "grid": grid, "crc": crc, "crc_pair": pair, "sha256": sha256_hex(dec), "pil": img})
        for j, pc in enumerate(pieces):
            strip, (h, w), u8, pidx, probe = to_strip(pc, pp)
            pcrc, ppair = crc_pair(u8)
            case["strips"].append(strip)
            case["tgt"].append((h, w))
            case["pieces"].append([k, j, u8.shape[0], u8.shape[1]] + ppair + [h * w])
            case.setdefault("piece_sha256", []).append(sha256_hex(u8))
            case["probe_idx"].append(pidx)
            case["probe"].append(probe)
        ph.append(placeholder(grid, qn))
    text = chat_text(turns)
    chunks = text.split(IMG_TAG)
    if len(chunks) - 1 != len(images):
        rc.die("%s: %d image tags for %d images" % (name, len(chunks) - 1, len(images)))
    full = chunks[0] + "".join(ph[i] + chunks[i + 1] for i in range(len(images)))
    if prompt_ids_file:
        ids, case["native"] = rc.parse_ids(prompt_ids_file), "n/a (--prompt-ids)"
    else:
        ids = ptok.encode(full)
        case["native"] = ("n/a (tokenizer.json lacks MiniCPM's added tokens)" if len(ptok.known) < len(SPECIAL) - 1
                          else ("equal" if ptok.native(full) == ids else "DIFFERENT"))
    if len(ids) > 2048:
        rc.die("%s: %d prompt ids, over max_inp_length 2048 (HF would truncate)" % (name, len(ids)))
    if name == "640x480" and not prompt_ids_file and ids != expected_640x480_ids(qn):
        msg = "640x480 prompt ids differ from spec §13's"
        if not allow_mismatch:
            rc.die(msg + " (use --allow-prompt-mismatch to go on)")
        rc.log("WARNING: " + msg)
    t = torch.tensor(ids)
    starts = (torch.where(t == SPECIAL["<image>"])[0] + 1).tolist()
    ends = torch.where(t == SPECIAL["</image>"])[0].tolist()
    if len(starts) != len(ends) or len(starts) != len(case["strips"]) or any(e - s != qn for s, e in zip(starts, ends)):
        rc.die("%s: image bounds %s / %s do not give %d pieces of %d" % (name, starts, ends, len(case["strips"]), qn))
    case.update(ids=ids, bounds=list(zip(starts, ends)), text=text)
    rc.log("%s: %d piece(s) tgt %s, %d prompt ids, native tokenizer: %s"
           % (name, len(case["strips"]), case["tgt"], len(ids), case["native"]))
    return case


def vpm_rows(B, N, plen):
    rows = []
    for b, n in enumerate(plen):
        rows += [b * N + r for r in (0, 1, n // 2, n - 1, n, N - 1) if 0 <= r < N]
    return rows


@torch.no_grad()
def run_case(case, vpm, rw, llm, dtype, device, steps):
    B = len(case["strips"])
    flat = [torch.from_numpy(s).flatten(end_dim=1).permute(1, 0) for s in case["strips"]]  # [P*N, 3P] each
    padded = torch.nn.utils.rnn.pad_sequence(flat, batch_first=True, padding_value=0.0)
    _, L, _ = padded.shape
    pix = padded.permute(0, 2, 1).reshape(B, 3, -1, L).to(device).type(dtype)
    plen = [h * w for h, w in case["tgt"]]
    n_max = max(plen)
    # get_vllm_embedding's mask, bug included: [i, :n] on a [B, 1, N] tensor sets whole rows (spec §3.2)
    mask = torch.zeros((B, 1, n_max), dtype=torch.bool, device=device)
    for i in range(B):
        mask[i, :plen[i]] = True
    assert bool(mask.all())
    rec = {"layers": []}
    hooks = [vpm.embeddings.register_forward_hook(lambda m, i, o: rec.__setitem__("embed", o.detach().clone()))]
    for layer in vpm.encoder.layers:
        hooks.append(layer.register_forward_hook(
            lambda m, i, o: rec["layers"].append((o[0] if isinstance(o, (tuple, list)) else o).detach().clone())))
    vpm.embeddings._ref_position_ids = None
    out = vpm(pix, patch_attention_mask=mask)
    for h in hooks:
        h.remove()
    last = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    pos_ids = vpm.embeddings._ref_position_ids
    if pos_ids is None:
        rc.die("the 4.40 position-id forward was not called (transformers changed the call path)")
    if not all(torch.equal(pos_ids[0], pos_ids[b]) for b in range(B)):
        rc.die("position ids differ between pieces; spec §3.2 says they are shared")
    dv = vpm.config.hidden_size
    assert tuple(last.shape) == (B, n_max, dv) and last.dtype == dtype, (tuple(last.shape), last.dtype)
    assert len(rec["layers"]) == len(vpm.encoder.layers)
    y = resampler_forward(rw, last, case["tgt"])
    Q, D = rw["query"].shape
    assert tuple(y.shape) == (B, Q, D) and y.dtype == dtype
    ids = torch.tensor(case["ids"], dtype=torch.long, device=device)
    E = llm.model.embed_tokens(ids[None])[0].clone()
    idx = torch.cat([torch.arange(s, e) for s, e in case["bounds"]]).to(device)
    assert idx.numel() == B * Q
    E[idx] = y.reshape(-1, D).to(E.dtype)
    logits, cache, T = rc.prefill(llm, inputs_embeds=E[None])
    assert T == len(case["ids"])
    g, margins = rc.greedy(llm, logits, cache, T, steps)
    res = {"pos_ids": pos_ids[0], "embed": rec["embed"], "layers": rec["layers"], "vpm_out": last, "res_out": y,
           "merged": E, "logits": logits, "greedy": g, "margins": margins, "n_max": n_max}
    return {k: (v.cpu() if torch.is_tensor(v) else ([t.cpu() for t in v] if k == "layers" else v))
            for k, v in res.items()}


def run_precision(p, dtype, device, cfg, sds, cases, steps, attn_llm):
    vpm, vinfo = build_vpm(cfg, sds["vpm"], dtype, device)
    D, qn, dv = cfg["hidden_size"], cfg["query_num"], cfg["vision_config"]["hidden_size"]
    rw = resampler_weights(sds["res"], dtype, device, D, qn, dv)
    llm, linfo = rc.build_llama(cfg, sds["llm"], dtype, device, attn_llm)
    results = {}
    for name, case in cases.items():
        r = run_case(case, vpm, rw, llm, dtype, device, steps)
        rc.log("%s %s: N_max %d, greedy %s, min margin %.3g" % (p, name, r["n_max"], r["greedy"][:8], min(r["margins"])))
        results[name] = r
    info = {"vpm": vinfo, "llm_attn": linfo["attn_implementation"], "inv_freq": linfo["inv_freq_notes"]}
    return vpm, rw, llm, results, info


# ----------------------------------------------------------------------------------------- --official

def official_compare(a, cfg, pp, cases, res16, device):
    """Builds the official MiniCPMV (remote code in --official-dir) in fp16 from_config-style, loads the shards,
    and compares its get_vllm_embedding and first-token logits with ours. Informational; never changes the
    fixtures' tensors."""
    d = a.official_dir
    need = ["modeling_minicpmv.py", "resampler.py", "configuration_minicpm.py"]
    missing = [f for f in need if not os.path.exists(os.path.join(d or "", f))]
    if not d or missing:
        return {"status": "skipped: %s missing in %r" % (missing, d)}
    tmp = tempfile.mkdtemp(prefix="minicpmv_official_")
    pkg = os.path.join(tmp, "minicpmv_official")
    os.makedirs(pkg)
    for fn in os.listdir(d):
        if fn.endswith(".py"):
            src = open(os.path.join(d, fn)).read()
            if fn == "resampler.py":  # spec §13: it relied on an old torch re-export of these names
                src = "from typing import List, Optional, Tuple\n" + src
            with open(os.path.join(pkg, fn), "w") as f:
                f.write(src)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    try:
        import torchvision  # noqa: F401
    except ImportError:  # only init_transform uses it; the HEAD processor path does not
        tv, tr = types.ModuleType("torchvision"), types.ModuleType("torchvision.transforms")

        class _Stub:
            def __init__(self, *x, **k):
                pass
        tr.Compose = tr.ToTensor = tr.Normalize = _Stub
        tv.transforms = tr
        sys.modules["torchvision"], sys.modules["torchvision.transforms"] = tv, tr
    sys.path.insert(0, tmp)
    report = {"status": "ran", "cases": {}}
    try:
        mm = importlib.import_module("minicpmv_official.modeling_minicpmv")
        cm = importlib.import_module("minicpmv_official.configuration_minicpm")
        conf = cm.MiniCPMVConfig(**{k: v for k, v in cfg.items() if k not in
                                    ("auto_map", "architectures", "_name_or_path", "transformers_version", "model_type")})
        conf._attn_implementation = "sdpa"
        conf.vision_config._attn_implementation = "eager"
        with rc.default_dtype(torch.float16):
            model = mm.MiniCPMV(conf)
        model.eval()
        sd, _ = rc.load_prefixed(a.model, "")
        miss, unexp = model.load_state_dict(sd, strict=False)
        report["load"] = {"missing": list(miss)[:20], "unexpected": list(unexp)[:20]}
        model = model.to(device)
        model.vpm.embeddings.forward = types.MethodType(_embeddings_forward_440, model.vpm.embeddings)
        rc.set_attn(model.llm, "sdpa")
        rc.set_attn(model.vpm, "eager")
        ip = None
        try:
            ipm = importlib.import_module("minicpmv_official.image_processing_minicpmv")
            ip = ipm.MiniCPMVImageProcessor(max_slice_nums=pp["max_slice_nums"], scale_resolution=pp["scale_resolution"],
                                            patch_size=pp["patch_size"], image_feature_size=pp["image_feature_size"],
                                            norm_mean=pp["norm_mean"], norm_std=pp["norm_std"], version=2.5)
        except Exception as ex:  # noqa: BLE001
            report["image_processor"] = "not compared: %s: %s" % (type(ex).__name__, str(ex)[:200])
        for name, case in cases.items():
            r, ours = {}, res16[name]
            if ip is not None:
                o = ip.preprocess([im["pil"] for im in case["images"]], return_tensors=None)
                pv, tg = o["pixel_values"][0], np.asarray(o["tgt_sizes"][0]).tolist()
                r["pixels_equal"] = len(pv) == len(case["strips"]) and all(
                    np.array_equal(np.asarray(x), s) for x, s in zip(pv, case["strips"]))
                r["tgt_equal"] = [tuple(x) for x in tg] == list(case["tgt"])
                r["placeholder_equal"] = all(ip.get_slice_image_placeholder(im["pil"].size) ==
                                             placeholder(im["grid"], cfg["query_num"]) for im in case["images"])
            data = {"input_ids": torch.tensor([case["ids"]], device=device),
                    "pixel_values": [[torch.from_numpy(s).to(device) for s in case["strips"]]],
                    "tgt_sizes": [torch.tensor(case["tgt"], dtype=torch.int32, device=device)],
                    "image_bound": [torch.tensor(case["bounds"])]}
            with torch.inference_mode():
                emb, vhs = model.get_vllm_embedding(data)
                h = model.llm.model(inputs_embeds=emb).last_hidden_state
                lg = model.llm.lm_head(h[:, -1:, :])[0, -1].float().cpu()
            v = vhs[0].cpu()
            r["resampler_max_abs"] = float((v.float() - ours["res_out"].float()).abs().max())
            r["merged_max_abs"] = float((emb[0].cpu().float() - ours["merged"].float()).abs().max())
            r["logits_rel"] = rc.rel_err(lg, ours["logits"].float())
            r["logits_max_abs"] = float((lg - ours["logits"].float()).abs().max())
            r["argmax_equal"] = int(lg.argmax()) == ours["greedy"][0]
            pe = model.resampler.pos_embed.cpu().numpy()
            r["pos_embed_max_abs"] = float(np.abs(pe - sincos_table(pe.shape[-1], pe.shape[0], pe.shape[1])).max())
            report["cases"][name] = r
            rc.log("official %s: %s" % (name, r))
        del model
        rc.free_cuda()
    except Exception as ex:  # noqa: BLE001
        import traceback
        report["status"] = "failed: %s: %s" % (type(ex).__name__, ex)
        report["traceback"] = traceback.format_exc()[-3000:]
        rc.log("official mode failed: %s" % report["status"])
    finally:
        sys.path.remove(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    return report


# ----------------------------------------------------------------------------------------- fixtures

def write_case(fx, case, res, cfg, res32_tf):
    D = cfg["hidden_size"]
    fx.put("input_ids", torch.tensor(case["ids"], dtype=torch.int32), "i32")
    fx.put("image_bound", torch.tensor(case["bounds"], dtype=torch.int32), "i32")
    fx.put("tgt_sizes", torch.tensor(case["tgt"], dtype=torch.int32), "i32")
    fx.put("images.info", torch.tensor([[im["W"], im["H"]] + im["crc_pair"] + list(im["grid"] or (0, 0))
                                        for im in case["images"]], dtype=torch.int32), "i32")
    fx.put("pieces.info", torch.tensor(case["pieces"], dtype=torch.int32), "i32")
    fx.put("pixels.patch_probe_idx", torch.tensor(case["probe_idx"], dtype=torch.int32), "i32")
    fx.put("pixels.patch_probe", torch.from_numpy(np.stack(case["probe"])), "f32")
    any_r = next(iter(res.values()))
    fx.put("vpm.position_ids", any_r["pos_ids"].to(torch.int32), "i32")
    rcs = [(0, 0), (0, 1), (1, 0), (5, 7), (69, 69)] + [(h - 1, w - 1) for h, w in case["tgt"][:2]]
    tab = sincos_table(D, max(70, max(r for r, _ in rcs) + 1), max(70, max(c for _, c in rcs) + 1))
    fx.put("resampler.pos_probe_rc", torch.tensor(rcs, dtype=torch.int32), "i32")
    fx.put("resampler.pos_probe", torch.from_numpy(np.stack([tab[r, c] for r, c in rcs])), "f32")
    B, Q = len(case["tgt"]), cfg["query_num"]
    T = len(case["ids"])
    res_rows = [b * Q + r for b in range(B) for r in (0, 1, Q // 2, Q - 1)]
    merged_rows = [0, 1, T - 1]
    for s, e in case["bounds"][:2] + case["bounds"][-1:]:
        merged_rows += [s - 1, s, s + 1, e - 1, e]
    for p, r in res.items():
        plen = [h * w for h, w in case["tgt"]]
        vr = vpm_rows(B, r["n_max"], plen)
        full = "optional" if p == "f16" else "never"
        fx.put_compact("%s.vpm.embed" % p, r["embed"], vr)
        for j, t in enumerate(r["layers"]):
            fx.put_compact("%s.vpm.layer_out.%d" % (p, j), t, vr)
        fx.put_compact("%s.resampler.out" % p, r["res_out"], res_rows, full=full)
        fx.put_compact("%s.vpm.out" % p, r["vpm_out"], vr, full=full)
        fx.put_compact("%s.merged" % p, r["merged"], merged_rows)
        fx.put("%s.logits_last" % p, r["logits"], "f16" if p == "f16" else "f32")
        fx.put("%s.greedy" % p, torch.tensor(r["greedy"], dtype=torch.int32), "i32")
        fx.put("%s.greedy_margin" % p, torch.tensor(r["margins"], dtype=torch.float32), "f32")
    if res32_tf is not None:
        fx.put_compact("f32.resampler.out_tf", res32_tf, res_rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint folder")
    ap.add_argument("--out", required=True, help="output DIRECTORY (fixtures + images)")
    ap.add_argument("--case", default="all", help="all, or a comma list of: " + ", ".join(CASES))
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--f32-device", default=None, help="device of the f32 run (default: --device)")
    ap.add_argument("--paths", default="f16,f32")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: MODEL/tokenizer.json)")
    ap.add_argument("--no-post-processor", action="store_true", help="ignore tokenizer.json's post-processor")
    ap.add_argument("--prompt-ids", default=None, help="file of prompt ids (one case only) instead of tokenizing")
    ap.add_argument("--allow-prompt-mismatch", action="store_true")
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="per-fixture budget; 0 = unlimited")
    ap.add_argument("--posid-sweep", type=int, default=4900, help="sweep N = 1..this for vision_posids (0: skip)")
    ap.add_argument("--official", action="store_true", help="also compare with the official remote code")
    ap.add_argument("--official-dir", default=None, help="folder with modeling_minicpmv.py, resampler.py, ...")
    a = ap.parse_args()

    rc.setup_numerics()
    dev16 = rc.pick_device(a.device)
    dev32 = rc.pick_device(a.f32_device or dev16)
    cfg = rc.load_config(a.model)
    for k in ("query_num", "vision_config"):
        if k not in cfg:
            rc.die("config.json has no %s" % k)
    names = list(CASES) if a.case == "all" else [c.strip() for c in a.case.split(",")]
    for n in names:
        if n not in CASES:
            rc.die("unknown case %s (have %s)" % (n, ", ".join(CASES)))
    if a.prompt_ids and len(names) != 1:
        rc.die("--prompt-ids needs exactly one --case")
    os.makedirs(a.out, exist_ok=True)
    pp = preprocessor_params(a.model, cfg)
    tok_path = a.tokenizer or os.path.join(a.model, "tokenizer.json")
    ptok = None
    if os.path.exists(tok_path):
        ptok = PromptTokenizer(tok_path, not a.no_post_processor)
        hello = ptok.encode("Hello!! world", post_processor=False)
        if hello != [9906, 0, 0, 1917] and not a.allow_prompt_mismatch:
            rc.die("'Hello!! world' -> %s, spec §13 says [9906, 0, 0, 1917]" % hello)
        rc.log("tokenizer %s: post-processor adds %s before, %s after; MiniCPM specials known: %d/%d"
               % (tok_path, ptok.prefix, ptok.suffix, len(ptok.known), len(SPECIAL) - 1))
    elif not a.prompt_ids:
        rc.die("%s missing (pass --tokenizer or --prompt-ids)" % tok_path)
    cases = {n: prepare_case(n, a.out, pp, cfg["query_num"], ptok, a.prompt_ids, a.allow_prompt_mismatch)
             for n in names}

    sds = {"llm": rc.load_prefixed(a.model, "llm.")[0], "vpm": rc.load_prefixed(a.model, "vpm.")[0],
           "res": rc.load_prefixed(a.model, "resampler.")[0]}
    common = rc.env_metadata(dev16)
    common.update({"script": "tools/ref_vision.py", "model_dir": os.path.abspath(a.model),
                   "embed_abs_sum": rc.fmt_f64(rc.abs_sum_f64(sds["llm"]["model.embed_tokens.weight"])),
                   "patch_embedding_abs_sum": rc.fmt_f64(rc.abs_sum_f64(sds["vpm"]["embeddings.patch_embedding.weight"])),
                   "resampler_query_abs_sum": rc.fmt_f64(rc.abs_sum_f64(sds["res"]["query"])),
                   "tokenizer": tok_path if ptok else "none (--prompt-ids)",
                   "post_processor_prefix": ptok.prefix if ptok else "", "post_processor_suffix": ptok.suffix if ptok else "",
                   "steps": a.steps, "preprocessor": json.dumps(pp), "jpeg_quality": JPEG_QUALITY,
                   "greedy_rule": "argmax (lowest id on ties) of fp32 logits; no stop token; nothing suppressed"})

    runs = {"f16": (torch.float16, dev16, "sdpa"), "f32": (torch.float32, dev32, "eager")}
    wanted = [p.strip() for p in a.paths.split(",") if p.strip()]
    wanted.sort(key=lambda p: 0 if p == "f16" else 1)  # f16 first: the f32 teacher-forced resampler needs it
    results, infos, tf32 = {}, {}, {}
    for p in wanted:
        if p not in runs:
            rc.die("--paths: unknown %s" % p)
        dtype, dev, attn = runs[p]
        common["%s.numerics" % p] = rc.check_no_tf32(dev)
        vpm, rw, llm, results[p], infos[p] = run_precision(p, dtype, dev, cfg, sds, cases, a.steps, attn)
        if p == "f32" and "f16" in results:
            for n in names:
                tf32[n] = resampler_forward(rw, results["f16"][n]["vpm_out"].to(dev).float(), cases[n]["tgt"]).cpu()
        del vpm, rw, llm
        rc.free_cuda()

    official = official_compare(a, cfg, pp, cases, results["f16"], dev16) if a.official and "f16" in results else None
    if official is not None:
        with open(os.path.join(a.out, "official_report.json"), "w") as f:
            json.dump(official, f, indent=1, default=str)

    posid_summary = "not run"
    if a.posid_sweep > 0:
        per_side = cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]
        diffs, n_bad = [], 0
        for n in range(1, a.posid_sweep + 1):
            t = posids_torch_440(n, 1, per_side).numpy()
            s = posids_spec_rule(n, per_side)
            if len(s) != len(t) or not np.array_equal(s, t):
                n_bad += 1
                if len(s) != len(t):
                    diffs.append([n, -1, len(t), len(s)])
                else:
                    diffs += [[n, int(k), int(t[k]), int(s[k])] for k in np.nonzero(s != t)[0]]
        posid_summary = "%d of %d N values differ from the spec's scalar rule" % (n_bad, a.posid_sweep)
        rc.log("position-id sweep: " + posid_summary)
        fx = rc.Fixture()
        fx.meta.update(common)
        fx.meta["summary"] = posid_summary
        fx.meta["columns"] = "N, k, torch 4.40 id, spec scalar-rule id (k = -1: lengths differ: torch len, spec len)"
        fx.put("sweep.n_max", torch.tensor([a.posid_sweep], dtype=torch.int32), "i32")
        fx.put("sweep.diff", torch.tensor(diffs if diffs else [[0, 0, 0, 0]], dtype=torch.int32).reshape(-1, 4), "i32")
        fx.put("sweep.n1036", posids_torch_440(1036, 1, per_side).to(torch.int32), "i32")
        fx.save(os.path.join(a.out, "vision_posids.safetensors"))

    for n in names:
        case = cases[n]
        fx = rc.Fixture(a.max_bytes)
        fx.meta.update(common)
        for p in wanted:
            fx.meta["%s.device" % p] = runs[p][1]
            fx.meta["%s.vpm" % p] = infos[p]["vpm"]
            fx.meta["%s.llm_attn_implementation" % p] = infos[p]["llm_attn"]
            fx.meta["%s.inv_freq" % p] = infos[p]["inv_freq"]
        t16 = results.get("f16", {}).get(n)
        t32 = results.get("f32", {}).get(n)
        if t16 is not None and t32 is not None:
            fx.meta["f16_vs_f32"] = "logits rel %.3g cos %.9f; resampler rel %.3g; vpm rel %.3g" % (
                rc.rel_err(t16["logits"].float(), t32["logits"]), rc.cosine(t16["logits"].float(), t32["logits"]),
                rc.rel_err(t16["res_out"].float(), t32["res_out"]), rc.rel_err(t16["vpm_out"].float(), t32["vpm_out"]))
            rc.log("%s f16 vs f32: %s" % (n, fx.meta["f16_vs_f32"]))
        pos = next(iter(results.values()))[n]["pos_ids"].numpy()
        per_side = cfg["vision_config"]["image_size"] // cfg["vision_config"]["patch_size"]
        spec = posids_spec_rule(len(pos), per_side)
        fx.meta["position_ids_vs_spec_rule"] = ("equal" if np.array_equal(spec, pos) else
                                                "differ at %s" % np.nonzero(spec != pos)[0].tolist()[:20])
        fx.meta.update({"case": n, "chat_text": case["text"], "native_tokenizer": case["native"],
                        "images": json.dumps([{k: im[k] for k in ("path", "W", "H", "fmt", "seed", "grid")} |
                                              {"crc32": "%08x" % im["crc"], "sha256": im["sha256"],
                                               "noise": im["fmt"] == "png"} for im in case["images"]]),
                        "pieces_sha256": ",".join(case["piece_sha256"]),
                        "posid_sweep": posid_summary})
        if official is not None:
            fx.meta["official"] = json.dumps(official.get("cases", {}).get(n, official.get("status")))
        write_case(fx, case, {p: results[p][n] for p in wanted}, cfg, tf32.get(n))
        fx.save(os.path.join(a.out, "vision_%s.safetensors" % n))


if __name__ == "__main__":
    main()
