#!/usr/bin/env bash
# Builds tests/fuzz_image.c with libFuzzer + ASan/UBSan and runs it for N seconds (default 60),
# seeded with the committed image fixtures. Usage: tools/fuzz_image.sh [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
out=build/fuzz   # under build/, which git ignores
mkdir -p "$out/corpus"
flags="-std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer -Wno-unknown-pragmas -Isrc $(pkg-config --cflags libpng)"
clang $flags tests/fuzz_image.c src/image_decode.c src/image_resize.c src/image_slice.c src/common.c \
  -o "$out/fuzz_image" $(pkg-config --libs libturbojpeg libpng libwebp) -lm
# seeds: the fixtures (when present) plus tiny generated files
for f in tests/fixtures/image/*.jpg tests/fixtures/image/*.png tests/fixtures/image/*.webp; do
  [ -f "$f" ] && [ "$(stat -c %s "$f")" -lt 65536 ] && cp "$f" "$out/corpus/" || true
done
printf '\x89PNG\r\n\x1a\n' > "$out/corpus/sig.png"
printf '\xff\xd8\xff\xe0' > "$out/corpus/sig.jpg"
printf 'RIFF\x00\x00\x00\x00WEBPVP8L' > "$out/corpus/sig.webp"
"$out/fuzz_image" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 "$out/corpus"
