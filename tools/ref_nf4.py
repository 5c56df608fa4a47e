#!/usr/bin/env python3
"""ref_nf4.py: bitsandbytes' own NF4 quantization of fixed tensors, dumped as the fixture that
tests/test_quant.c (test_bnb_fixture) compares bit for bit with our reader, dequantizer and quantizer.

Run where torch is installed, with the bitsandbytes source on PYTHONPATH (its pure-PyTorch CPU path;
no compiled library needed):

    git clone https://github.com/bitsandbytes-foundation/bitsandbytes /tmp/bnb   # or the fetched mirror
    PYTHONPATH=/tmp/bnb python3 tools/ref_nf4.py --out tests/fixtures/nf4_ref.safetensors

then commit tests/fixtures/nf4_ref.safetensors (about 60 KB). It holds, for each case C in a, b:
  C.input             F16 [o, k]   the weight (seeded normal values, scaled per row)
  C.weight            U8 [o*k/2,1] quantize_4bit(input, blocksize=64, compress_statistics=True, quant_type="nf4")
  C.absmax, C.quant_map, C.nested_absmax, C.nested_quant_map, C.quant_state.bitsandbytes__nf4
                                   QuantState.as_dict(packed=True), the state-dict items Linear4bit saves
  C.nested_offset     F32 [1]      the quant state's offset (also inside the JSON)
  C.dequant           F16 [o, k]   dequantize_4bit(C.weight, quant_state)
and dynamic_map F32 [256] = create_dynamic_map(signed=True). Case b has k = 208 (rows straddle the
64-value blocks, as the vision tower's fc2 with k = 4304 does). Only bitsandbytes' functions compute
the values; this script writes the file itself (no safetensors package needed).
"""
import argparse
import json
import struct
import sys

import torch


def write_safetensors(path, tensors):
    """tensors: list of (name, torch.Tensor) -> a .safetensors file (little-endian, C order)."""
    names = {torch.float16: "F16", torch.float32: "F32", torch.uint8: "U8"}
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        b = t.numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/nf4_ref.safetensors")
    args = ap.parse_args()
    import bitsandbytes.functional as F  # the source checkout on PYTHONPATH

    print("bitsandbytes from", F.__file__, file=sys.stderr)
    out = [("dynamic_map", F.create_dynamic_map(signed=True).float())]
    g = torch.Generator().manual_seed(1234)
    for case, (o, k) in (("a", (64, 512)), ("b", (24, 208))):
        w = torch.randn(o, k, generator=g) * (0.02 * (1 + torch.arange(o).float() / 8)).view(-1, 1)
        w = w.half()
        packed, qs = F.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
        deq = F.dequantize_4bit(packed, qs, quant_type="nf4")
        assert deq.dtype == torch.float16 and tuple(deq.shape) == (o, k), (deq.dtype, deq.shape)
        assert packed.dtype == torch.uint8 and tuple(packed.shape) == (o * k // 2, 1), packed.shape
        out += [(f"{case}.input", w), (f"{case}.weight", packed), (f"{case}.dequant", deq),
                (f"{case}.nested_offset", qs.offset.reshape(1).float())]
        for key, v in qs.as_dict(packed=True).items():
            out.append((f"{case}.{key}", v))
        print(case, "state:", bytes(qs.as_dict(packed=True)["quant_state.bitsandbytes__nf4"].numpy()).decode(),
              file=sys.stderr)
    write_safetensors(args.out, out)
    print("wrote", args.out, file=sys.stderr)


if __name__ == "__main__":
    main()
