#!/usr/bin/env bash
# tools/gpu_arch_check.sh pack|run: the old-GPU code paths, checked on a new card.
#
#   pack  (here, where Debian's libraries are) builds three CUDA configurations and packs them with
#         the shared libraries the GPU machine lacks into .devpack/arch.tar.xz:
#           build-cuda              the fat binary: SASS sm_75 sm_80 sm_86 sm_89 sm_90 + PTX compute_90
#           build-cuda-compute_75   PTX for compute_75 only (Turing: T4, RTX 20xx code paths)
#           build-cuda-compute_80   PTX for compute_80 only (Ampere code paths)
#         The C objects are compiled once (build-cuda) and copied, so the PTX builds only run nvcc.
#         J=16 make -j16 where there are cores; the fat build is the slow one (5 SASS targets).
#   run   (on the GPU machine; carry .devpack and .cache/tokenizer-llama3) runs, for each build, its
#         cuobjdump listing, --version, every tests/test_cuda_* binary, a greedy `generate` and a
#         greedy `chat` with an image on the tiny model, then compares the greedy tokens and answers
#         of the three builds. A PTX-only binary holds no SASS, so the driver JIT-compiles its PTX for
#         the card: the sm_75 paths (plain copies instead of cp.async, m16n8k8 steps) run on an H200.
#         Logs under $OUT; summary.txt ends with "arch check: ok" or "arch check: FAILED (...)".
#         Budget: a few minutes (the JIT of each PTX build happens once per kernel; tests ~1 min each).
set -uo pipefail
cd "$(dirname "$0")/.."
builds="build-cuda build-cuda-compute_75 build-cuda-compute_80"
case ${1:-} in
pack)
  set -e
  J=${J:-2}
  tests=$(ls tests/test_cuda_*.c | sed 's#tests/\(.*\)\.c#\1#')
  make -j"$J" CUDA=1 build-cuda/minicpmv $(for t in $tests; do echo build-cuda/tests/$t; done)
  for a in compute_75 compute_80; do
    d=build-cuda-$a
    rm -rf "$d"; mkdir -p "$d"
    cp -a build-cuda/src build-cuda/tools build-cuda/flags.stamp "$d/" # same C flags: reused, mtimes kept
    rm -f "$d"/src/cuda/*.o "$d"/src/cuda/*.d "$d"/tools/minicpmv.[od]   # CUDA objects and the version line: rebuilt
    make -j"$J" CUDA=1 CUDA_ARCH=$a "$d/minicpmv" $(for t in $tests; do echo $d/tests/$t; done)
  done
  rm -rf build-arch-lib; mkdir -p build-arch-lib .devpack
  for b in $builds; do ldd "$b/minicpmv"; done | awk '/=> \//{print $3}' | sort -u |
    grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcudart|libcublas|libcublasLt|libnccl|libstdc\+\+|libgcc_s)\.so' |
    while read -r lib; do cp -L "$lib" build-arch-lib/; done
  # xz -9: its 64 MiB window spans consecutive binaries of one build, whose device code is the same
  tar -cf - build-arch-lib $(for b in $builds; do echo $b/minicpmv $b/tests/test_cuda_*; done | tr ' ' '\n' |
    grep -vE '\.(log|d)$') | xz -9 -T2 > .devpack/arch.tar.xz
  ls -la .devpack/arch.tar.xz
  ;;
run)
  OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
  S=$OUT/summary.txt; : > "$S"
  say() { echo "$*" | tee -a "$S"; }
  tar xJf .devpack/arch.tar.xz || { say "arch check: FAILED (no .devpack/arch.tar.xz: run tools/gpu_arch_check.sh pack here and carry .devpack)"; exit 1; }
  export LD_LIBRARY_PATH=$PWD/build-arch-lib:${LD_LIBRARY_PATH:-}
  nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader | tee -a "$S"
  TINY=/tmp/arch-tiny
  [ -f $TINY/config.json ] || build-cuda/minicpmv mkmodel --out $TINY --size tiny --seed 1 --quiet 2>&1 | tee -a "$S"
  IMG=tests/fixtures/image/gen640x480_q90.jpg
  IDS=128000,791,4062,374,1234,555,220,16,17,18,19,20,21,22,23,24,25,26
  bad=""
  for b in $builds; do
    n=${b#build-cuda}; n=${n#-}; n=${n:-fat}
    say "=== $b"
    "$b/minicpmv" --version | tee -a "$S"
    cuobjdump --list-elf "$b/minicpmv" > "$OUT/elf-$n.txt" 2>&1
    cuobjdump --list-ptx "$b/minicpmv" > "$OUT/ptx-$n.txt" 2>&1
    say "cubins: $(grep -o 'sm_[0-9]*' "$OUT/elf-$n.txt" | sort | uniq -c | tr '\n' ' ')  ptx: $(grep -o 'sm_[0-9]*' "$OUT/ptx-$n.txt" | sort | uniq -c | tr '\n' ' ')"
    for t in "$b"/tests/test_cuda_*; do
      [ -x "$t" ] || continue
      t0=$(date +%s)
      "$t" > "$OUT/$n-$(basename "$t").log" 2>&1; rc=$?
      line=$(grep -E '^[^ ]+: [0-9]+ passed, [0-9]+ failed' "$OUT/$n-$(basename "$t").log" | tail -1)
      say "  $(basename "$t"): ${line:-no result line} (exit $rc, $(( $(date +%s) - t0 )) s)"
      if [ $rc != 0 ] || ! echo "$line" | grep -q ' 0 failed'; then
        bad="$bad $n/$(basename "$t")"
        grep -E 'FAIL|CHECK|error' "$OUT/$n-$(basename "$t").log" | head -20 | tee -a "$S"
      fi
    done
    "$b/minicpmv" generate --model $TINY --device cuda --quiet --greedy --ids $IDS --max-new-tokens 32 --timings \
      > "$OUT/gen-$n.txt" 2> "$OUT/gen-$n.err" || { bad="$bad $n/generate"; tail -5 "$OUT/gen-$n.err" | tee -a "$S"; }
    "$b/minicpmv" chat --model $TINY --device cuda --quiet --greedy --image $IMG -p "What is in the image?" \
      --max-new-tokens 32 --timings > "$OUT/chat-$n.txt" 2> "$OUT/chat-$n.err" || { bad="$bad $n/chat"; tail -5 "$OUT/chat-$n.err" | tee -a "$S"; }
    say "  generate: $(cat "$OUT/gen-$n.txt")"
    say "  chat: $(head -c 200 "$OUT/chat-$n.txt" | tr '\n' ' ')"
    say "  $(tail -1 "$OUT/chat-$n.err")"
  done
  for k in gen chat; do
    for n in compute_75 compute_80; do
      if cmp -s "$OUT/$k-fat.txt" "$OUT/$k-$n.txt" && [ -s "$OUT/$k-fat.txt" ]; then say "$k: $n == fat"
      else say "$k: $n differs from fat"; bad="$bad $k:$n"; fi
    done
  done
  (cd "$OUT" && tar czf logs.tar.gz --remove-files $(ls | grep -v '^summary.txt$')) # what comes back: 2 files
  if [ -z "$bad" ]; then say "arch check: ok"; else say "arch check: FAILED ($bad)"; exit 1; fi
  ;;
*)
  echo "usage: tools/gpu_arch_check.sh pack|run   (pack here, run on the GPU machine)" >&2; exit 2 ;;
esac
