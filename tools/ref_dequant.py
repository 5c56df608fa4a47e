"""ref_dequant.py: the quantized weights of a checkpoint folder back to fp16, in PyTorch, for tools/ref_llm.py.

Written from docs/QUANT.md's layouts, independently of the C code (src/quant.c), so that a fixture made from
the dequantized model checks our loader, dequantization and quantized kernels end to end:
  q8 / q4 (`minicpmv quantize`, config.json quantization_config quant_method "minicpmv"): each quantized weight
    is U8 [O, row_bytes], one record per output row:
      Q8  int8 q[K] | f16 s | zero padding to 16 bytes;   w = f16(q * s)
      Q4  u8 nibbles[K/2] | f16 s[K/g] | padding, g = gcd(K, 64);   w = f16((c - 8) * s[j / g]), where the
          little-endian 32-bit word i of the nibbles holds elements 8i..8i+7: element 8i+2t at bits 4t..4t+3,
          element 8i+2t+1 at bits 16+4t..16+4t+3 (t = 0..3)
  nf4 (the bitsandbytes layout of the official int4 folder, quant_method "bitsandbytes"): W.weight U8 [O*K/2, 1]
    (byte b: flat element 2b in its high nibble, 2b+1 in its low one), W.weight.absmax U8 (one per 64 flat
    values), .nested_absmax F32 (one per 256 absmax), .nested_quant_map F32 [256], .quant_map F32 [16],
    .quant_state.bitsandbytes__nf4 (JSON: shape, nested_offset):
      absmax[b] = nested_quant_map[absmax_u8[b]] * nested_absmax[b // 256] + nested_offset   (f32)
      w = f16(quant_map[c] * absmax[j // 64])                                                 (f32 product)
"""
import json
import math

import torch


def _round16(n):
    return (n + 15) // 16 * 16


def _k_of(name, cfg):
    """in_features of an LLM Linear (the checkpoint stores U8 records, not the logical shape)"""
    return cfg["intermediate_size"] if name.endswith("down_proj.weight") else cfg["hidden_size"]


def dequant_q8(rec, k):
    o, rb = rec.shape
    if rb != _round16(k + 2):
        raise ValueError("q8 record of %d bytes for k = %d" % (rb, k))
    q = rec[:, :k].contiguous().view(torch.int8).to(torch.float32)
    s = rec[:, k:k + 2].contiguous().view(torch.float16).to(torch.float32)  # [o, 1]
    return (q * s).to(torch.float16)


def dequant_q4(rec, k):
    o, rb = rec.shape
    g = math.gcd(k, 64)
    if rb != _round16(k // 2 + 2 * (k // g)):
        raise ValueError("q4 record of %d bytes for k = %d" % (rb, k))
    words = rec[:, :k // 2].contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF  # [o, k/8]
    c = torch.empty(o, k // 8, 8, dtype=torch.int64)
    for t in range(4):
        c[:, :, 2 * t] = (words >> (4 * t)) & 15
        c[:, :, 2 * t + 1] = (words >> (16 + 4 * t)) & 15
    c = c.reshape(o, k).to(torch.float32)
    s = rec[:, k // 2:k // 2 + 2 * (k // g)].contiguous().view(torch.float16).to(torch.float32)  # [o, k/g]
    s = s.repeat_interleave(g, dim=1)
    return ((c - 8.0) * s).to(torch.float16)


def dequant_nf4(sd, base):
    st = json.loads(bytes(sd[base + ".weight.quant_state.bitsandbytes__nf4"].tolist()).decode())
    if st.get("quant_type") != "nf4" or st.get("blocksize") != 64 or st.get("nested_blocksize") != 256:
        raise ValueError("%s: unexpected quant state %s" % (base, st))
    o, k = st["shape"]
    packed = sd[base + ".weight"].reshape(-1).to(torch.int64)
    if packed.numel() * 2 != o * k:
        raise ValueError("%s: %d bytes for shape %s" % (base, packed.numel(), st["shape"]))
    codes = torch.stack([packed >> 4, packed & 15], dim=1).reshape(-1)  # element 2b high nibble
    am8 = sd[base + ".weight.absmax"].reshape(-1).to(torch.int64)
    nested = sd[base + ".weight.nested_absmax"].reshape(-1).to(torch.float32)
    nmap = sd[base + ".weight.nested_quant_map"].reshape(-1).to(torch.float32)
    qmap = sd[base + ".weight.quant_map"].reshape(-1).to(torch.float32)
    blk = torch.arange(am8.numel()) // 256
    absmax = nmap[am8] * nested[blk] + torch.tensor(float(st["nested_offset"]), dtype=torch.float32)
    per = absmax.repeat_interleave(64)[:o * k]
    return (qmap[codes] * per).to(torch.float16).reshape(o, k)


def dequantize(sd, cfg):
    """sd: the llm.* tensors ("llm." stripped) of a folder whose config.json has a quantization_config.
    Returns (new dict with every quantized Linear as fp16 [O, K], a one-line summary)."""
    qc = cfg.get("quantization_config") or {}
    out, n = {}, {}
    if qc.get("quant_method") == "minicpmv":
        fmt, head = qc.get("format"), qc.get("lm_head", "f16")
        for name, t in sd.items():
            if t.dtype != torch.uint8:
                out[name] = t
                continue
            f = head if name == "lm_head.weight" else fmt
            k = _k_of(name, cfg)
            if f == "q8":
                out[name] = dequant_q8(t, k)
            elif f == "q4":
                out[name] = dequant_q4(t, k)
            else:
                raise ValueError("%s: U8 tensor under format %r" % (name, f))
            n[f] = n.get(f, 0) + 1
    elif qc.get("quant_method") == "bitsandbytes":
        bases = [name[:-len(".weight.absmax")] for name in sd if name.endswith(".weight.absmax")]
        parts = (".weight.absmax", ".weight.nested_absmax", ".weight.nested_quant_map", ".weight.quant_map",
                 ".weight.quant_state.bitsandbytes__nf4")
        skip = {b + p for b in bases for p in parts}
        for b in bases:
            out[b + ".weight"] = dequant_nf4(sd, b)
        for name, t in sd.items():
            if name not in skip and name not in out:
                out[name] = t
        n["nf4"] = len(bases)
    else:
        raise ValueError("quantization_config %r is not one this script reads" % (qc,))
    for name, t in out.items():
        if t.dtype == torch.uint8:
            raise ValueError("%s left quantized" % name)
    return out, "dequantized " + ", ".join("%d %s" % (v, k) for k, v in sorted(n.items()))
