#!/usr/bin/env python3
"""ref_image.py: Pillow reference for src/image*.c (spec §5). Run where Pillow and numpy exist:

    python3 tools/ref_image.py OUTDIR

Writes OUTDIR/manifest.txt plus small encoded images and raw uint8 pixel files; copy OUTDIR/* into
tests/fixtures/image/ and tests/test_image.c checks every line. Deterministic, no network.

What it does, for each source (a synthetic image from the integer formula shared with
tests/test_image.c, or a small encoded file it writes):
  Image.open(...).convert("RGB")  -> "decode" line: size + SHA-256 of the RGB bytes
  slicing of spec §5.2 (written from the spec, like the official image processor), every resize
  with Image.resize(size, Image.Resampling.BICUBIC) from the ORIGINAL image, crop, then np.float32
  normalization (x/255 - 0.5)/0.5 and patch packing [N, 588] in (c, ky, kx) order
                                  -> "pipeline" + "piece" lines: grid, sizes, SHA-256 of uint8
                                     pixels and of the packed float32 patches
  a few direct resizes             -> "resize" lines (+ raw pixels for small ones)
Finally it times Pillow's preprocessing of a 1344x1344 JPEG (median of repeats) and prints it.
"""
import hashlib
import io
import math
import os
import statistics
import struct
import sys
import time
import zlib

import numpy as np
from PIL import Image
import PIL

S, P, MAX_SLICES = 448, 14, 9


# ---------------------------------------------------------------- synthetic images (= gen_px in C)
def gen_image(W, H, seed):
    y, x = np.indices((H, W), dtype=np.int64)
    out = np.empty((H, W, 3), dtype=np.uint8)
    xu = x.astype(np.uint32)
    yu = y.astype(np.uint32)
    for c in range(3):
        h = (xu * np.uint32(73856093)) ^ (yu * np.uint32(19349663)) ^ np.uint32((c * 83492791) & 0xFFFFFFFF) \
            ^ np.uint32((seed * 2654435761) & 0xFFFFFFFF)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0x5BD1E995)
        h = h ^ (h >> np.uint32(15))
        if c == 0:
            base = x * 255 // (W - 1) if W > 1 else np.full_like(x, 128)
        elif c == 1:
            base = y * 255 // (H - 1) if H > 1 else np.full_like(x, 128)
        else:
            base = (x + y) * 255 // (W + H - 2) if W + H > 2 else np.full_like(x, 128)
        v = base + (h >> np.uint32(24)).astype(np.int64) % 25 - 12
        rect = (4 * x >= W) & (2 * x < W) & (4 * y >= H) & (2 * y < H)
        v = np.where(rect, 255 - v, v)
        chk = (4 * x >= 3 * W) & (4 * y >= 3 * H)
        v = np.where(chk, np.where((((x >> 3) + (y >> 3)) & 1) == 1, 235, 20), v)
        d = np.abs(x * H - y * W)
        v = np.where(d < max(W, H), 255 if c == 1 else 0, v)
        out[:, :, c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


# ---------------------------------------------------------------- slicing, from spec §5.2
def ensure_divide(length, patch_size):
    return max(round(length / patch_size) * patch_size, patch_size)


def find_best_resize(original_size, allow_upscale=False):
    width, height = original_size
    if (width * height > S * S) or allow_upscale:
        r = width / height
        height = int(S / math.sqrt(r))
        width = int(height * r)
    return (ensure_divide(width, P), ensure_divide(height, P))


def get_refine_size(original_size, grid):
    width, height = original_size
    grid_x, grid_y = grid
    refine_width = ensure_divide(width, grid_x)
    refine_height = ensure_divide(height, grid_y)
    best = find_best_resize((refine_width / grid_x, refine_height / grid_y), allow_upscale=True)
    return (best[0] * grid_x, best[1] * grid_y)


def slice_image(image):
    W, H = image.size
    log_ratio = math.log(W / H)
    ratio = W * H / (S * S)
    multiple = min(math.ceil(ratio), MAX_SLICES)
    if multiple <= 1:
        return image.resize(find_best_resize((W, H), allow_upscale=True), resample=Image.Resampling.BICUBIC), [], None
    cands = [i for i in (multiple - 1, multiple, multiple + 1) if i != 1 and i <= MAX_SLICES]
    source = image.copy().resize(find_best_resize((W, H)), resample=Image.Resampling.BICUBIC)
    grids = []
    for n in cands:
        for m in range(1, n + 1):
            if n % m == 0:
                grids.append([m, n // m])
    best, min_err = [1, 1], float("inf")
    for g in grids:
        err = abs(log_ratio - math.log(g[0] / g[1]))
        if err < min_err:
            best, min_err = g, err
    refine = image.resize(get_refine_size((W, H), best), resample=Image.Resampling.BICUBIC)
    rw, rh = refine.size
    gx, gy = int(rw / best[0]), int(rh / best[1])
    slices = []
    for i in range(0, rh, gy):
        for j in range(0, rw, gx):
            slices.append(refine.crop((j, i, j + gx, i + gy)))
    return source, slices, best


def pack(piece):
    """numpy float32 normalization (transformers' normalize casts mean/std to float32), then the
    [N, 588] patch rows of spec §3.1: patch n = i*w + j, values in (c, ky, kx) order."""
    x = np.asarray(piece, dtype=np.uint8).astype(np.float32) / 255
    mean = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    std = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    x = (x - mean) / std
    x = x.transpose(2, 0, 1)  # CHW
    C, Hh, Ww = x.shape
    th, tw = Hh // P, Ww // P
    x = x.reshape(C, th, P, tw, P).transpose(1, 3, 0, 2, 4).reshape(th * tw, C * P * P)
    return np.ascontiguousarray(x, dtype="<f4")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def rgb_bytes(im):
    return np.asarray(im.convert("RGB"), dtype=np.uint8).tobytes()


# ---------------------------------------------------------------- hand-written PNG chunks
def png_bytes(w, h, ctype, depth, raw_rows, plte=None, trns=None):
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    data = b"".join(b"\0" + r for r in raw_rows)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if plte is not None:
        out += chunk(b"PLTE", plte)
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(data, 9)) + chunk(b"IEND", b"")


def pack_bits(vals, depth):
    out, acc, nb = bytearray(), 0, 0
    for v in vals:
        acc = (acc << depth) | int(v)
        nb += depth
        if nb == 8:
            out.append(acc)
            acc, nb = 0, 0
    if nb:
        out.append(acc << (8 - nb))
    return bytes(out)


def png_variants(outdir):
    """Small PNGs in every colour type / depth Pillow reads differently. Returns file names."""
    w, h = 37, 23
    g = gen_image(w, h, 21)
    names = []

    def save(name, data):
        with open(os.path.join(outdir, name), "wb") as f:
            f.write(data)
        names.append(name)

    grey = g[:, :, 0]
    for d in (1, 2, 4):
        rows = [pack_bits(grey[y] >> (8 - d), d) for y in range(h)]
        save(f"png_grey{d}.png", png_bytes(w, h, 0, d, rows))
    save("png_grey8.png", png_bytes(w, h, 0, 8, [grey[y].tobytes() for y in range(h)]))
    g16 = (g[:, :, 0].astype(np.uint16) * 257 + g[:, :, 1]).astype(">u2")
    g16[0, :8] = [0, 1, 100, 254, 255, 256, 1000, 65535]  # around Pillow's clip at 255
    save("png_grey16.png", png_bytes(w, h, 0, 16, [g16[y].tobytes() for y in range(h)]))
    save("png_grey8_trns.png", png_bytes(w, h, 0, 8, [grey[y].tobytes() for y in range(h)], trns=b"\0\x40"))
    la = np.stack([g[:, :, 0], g[:, :, 2]], axis=2)
    save("png_la8.png", png_bytes(w, h, 4, 8, [la[y].tobytes() for y in range(h)]))
    la16 = (la.astype(np.uint16) * 257 + 91).astype(">u2")
    save("png_la16.png", png_bytes(w, h, 4, 16, [la16[y].tobytes() for y in range(h)]))
    save("png_rgb8.png", png_bytes(w, h, 2, 8, [g[y].tobytes() for y in range(h)]))
    rgb16 = (g.astype(np.uint16) * 256 + (255 - g)).astype(">u2")
    save("png_rgb16.png", png_bytes(w, h, 2, 16, [rgb16[y].tobytes() for y in range(h)]))
    a = ((np.indices((h, w))[1] * 7) % 256).astype(np.uint8)
    a[:, ::3] = 0  # fully transparent pixels keep their colour (no compositing)
    rgba = np.concatenate([g, a[:, :, None]], axis=2)
    save("png_rgba8.png", png_bytes(w, h, 6, 8, [rgba[y].tobytes() for y in range(h)]))
    rgba16 = (rgba.astype(np.uint16) * 257).astype(">u2")
    save("png_rgba16.png", png_bytes(w, h, 6, 16, [rgba16[y].tobytes() for y in range(h)]))
    pal = bytes(int(v) for i in range(16) for v in ((i * 17) % 256, (255 - i * 13) % 256, (i * 91) % 256))
    for d in (1, 2, 4, 8):
        ncol = min(16, 1 << d)
        idx = (g[:, :, 0].astype(np.int64) * 7 + g[:, :, 1]) % ncol
        rows = [pack_bits(idx[y], d) if d < 8 else idx[y].astype(np.uint8).tobytes() for y in range(h)]
        save(f"png_pal{d}.png", png_bytes(w, h, 3, d, rows, plte=pal[: 3 * ncol],
                                          trns=b"\x80\x00" if d == 4 else None))
    return names


# ---------------------------------------------------------------- main
def main():
    if len(sys.argv) != 2:
        sys.exit("usage: ref_image.py OUTDIR")
    outdir = sys.argv[1]
    os.makedirs(outdir, exist_ok=True)
    lines = [f"# written by tools/ref_image.py; numpy {np.__version__}", f"pillow {PIL.__version__}"]

    # generator check first, so a formula mismatch is not mistaken for a resize mismatch
    for (W, H, seed) in [(37, 23, 21), (640, 480, 1), (3000, 4000, 1)]:
        lines.append(f"gen {W} {H} {seed} {sha(gen_image(W, H, seed).tobytes())}")

    # encoded files: decode parity (JPEG through Pillow's libjpeg-turbo, WebP, PNG modes)
    files = []
    g640 = Image.fromarray(gen_image(640, 480, 1))
    g200 = Image.fromarray(gen_image(200, 150, 4))
    g640.save(os.path.join(outdir, "gen640x480_q90.jpg"), quality=90); files.append("gen640x480_q90.jpg")
    g200.save(os.path.join(outdir, "gen200x150_q90_444.jpg"), quality=90, subsampling=0); files.append("gen200x150_q90_444.jpg")
    g200.save(os.path.join(outdir, "gen200x150_q90_422.jpg"), quality=90, subsampling=1); files.append("gen200x150_q90_422.jpg")
    g200.save(os.path.join(outdir, "gen200x150_q85_prog.jpg"), quality=85, progressive=True); files.append("gen200x150_q85_prog.jpg")
    g200.crop((0, 0, 199, 149)).save(os.path.join(outdir, "gen199x149_q75_odd.jpg"), quality=75); files.append("gen199x149_q75_odd.jpg")
    g200.convert("L").save(os.path.join(outdir, "gen200x150_grey.jpg"), quality=90); files.append("gen200x150_grey.jpg")
    g200.convert("CMYK").save(os.path.join(outdir, "gen200x150_cmyk.jpg"), quality=90); files.append("gen200x150_cmyk.jpg")
    g640.save(os.path.join(outdir, "gen640x480_q90.webp"), quality=90); files.append("gen640x480_q90.webp")
    g200.save(os.path.join(outdir, "gen200x150_lossless.webp"), lossless=True); files.append("gen200x150_lossless.webp")
    rgba = g200.copy(); rgba.putalpha(Image.fromarray((gen_image(200, 150, 5)[:, :, 0] // 2).astype(np.uint8)))
    rgba.save(os.path.join(outdir, "gen200x150_alpha.webp"), quality=80); files.append("gen200x150_alpha.webp")
    files += png_variants(outdir)
    for name in files:
        im = Image.open(os.path.join(outdir, name)).convert("RGB")
        b = rgb_bytes(im)
        line = f"decode file:{name} {im.size[0]} {im.size[1]} {sha(b)}"
        if len(b) <= 200 * 150 * 3 and not name.endswith(".webp"):
            raw = name.rsplit(".", 1)[0] + ".dec.rgb"
            with open(os.path.join(outdir, raw), "wb") as f:
                f.write(b)
            line += f" raw {raw}"
        lines.append(line)

    # the full pipeline
    sources = [f"gen:{w}:{h}:1" for (w, h) in [(448, 448), (640, 480), (1024, 768), (1344, 1344), (100, 2000),
                                                (1000, 500), (3000, 4000), (1920, 1080), (500, 1500), (1001, 333),
                                                (37, 23), (2000, 101), (449, 449)]]
    sources += ["file:gen640x480_q90.jpg", "file:gen640x480_q90.webp", "file:gen200x150_cmyk.jpg", "file:png_rgba8.png"]
    for src in sources:
        if src.startswith("gen:"):
            _, w, h, seed = src.split(":")
            img = Image.fromarray(gen_image(int(w), int(h), int(seed)))
        else:
            img = Image.open(os.path.join(outdir, src[5:])).convert("RGB")
        ov, slices, grid = slice_image(img)
        pieces = [ov] + slices
        cols, rows = (grid[0], grid[1]) if grid else (0, 0)
        lines.append(f"pipeline {src} {cols} {rows} {len(pieces)}")
        for k, pc in enumerate(pieces):
            b = rgb_bytes(pc)
            lines.append(f"piece {k} {pc.size[0]} {pc.size[1]} {sha(b)} {sha(pack(pc).tobytes())}")

    # direct resizes: down, up, mixed, one axis only, extreme ratios
    for (src, tw, th, keep) in [("gen:640:480:1", 37, 23, 1), ("gen:64:48:3", 97, 61, 1), ("gen:100:2000:1", 13, 77, 1),
                                ("gen:448:448:1", 449, 447, 0), ("gen:1001:333:1", 1000, 333, 0),
                                ("gen:333:1001:2", 333, 1000, 0), ("gen:50:30:4", 1, 1, 1), ("gen:7:5:4", 300, 2, 1),
                                ("gen:3000:4000:1", 61, 83, 1)]:
        _, w, h, seed = src.split(":")
        img = Image.fromarray(gen_image(int(w), int(h), int(seed)))
        out = img.resize((tw, th), resample=Image.Resampling.BICUBIC)
        b = rgb_bytes(out)
        line = f"resize {src} {tw} {th} {sha(b)}"
        if keep:
            raw = f"resize_{src.replace(':', '_')}_{tw}x{th}.rgb"
            with open(os.path.join(outdir, raw), "wb") as f:
                f.write(b)
            line += f" raw {raw}"
        lines.append(line)

    # timing: Pillow's preprocessing of a 1344x1344 JPEG, as the official processor does it
    buf = io.BytesIO()
    Image.fromarray(gen_image(1344, 1344, 7)).save(buf, format="JPEG", quality=90)
    data = buf.getvalue()
    times = []
    for _ in range(15):
        t0 = time.perf_counter()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        ov, slices, _ = slice_image(img)
        packed = [pack(p) for p in [ov] + slices]
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    lines.append(f"bench_pillow_ms {ms:.2f}")
    print(f"Pillow {PIL.__version__}: decode+slice+resize+normalize of a 1344x1344 q90 JPEG: {ms:.2f} ms "
          f"(median of {len(times)}; {len(packed)} pieces)")

    with open(os.path.join(outdir, "manifest.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    total = sum(os.path.getsize(os.path.join(outdir, n)) for n in os.listdir(outdir))
    print(f"wrote {outdir}/manifest.txt ({len(lines)} lines); directory total {total / 1e6:.2f} MB")
    if total > 3e6:
        print("WARNING: fixture directory is over 3 MB")


if __name__ == "__main__":
    main()
