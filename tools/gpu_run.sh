#!/usr/bin/env bash
# tools/gpu_run.sh STAGE...: what the lead runs on the GPU machine through the device tool
# (carry .devpack .devdata .cache/tokenizer-llama3). Logs and fixtures go to $OUT.
#   env       machine, GPU and library versions
#   fixtures  tiny checkpoint by our mkmodel + the PyTorch reference scripts -> $OUT/fixtures.tar
#   cudatest  CUDA op parity test and microbenchmarks
#   cudae2e   the CLI on the tiny model: GPU vs CPU
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
tar xJf .devpack/dev.tar.xz
export LD_LIBRARY_PATH=$PWD/build-dev/lib:${LD_LIBRARY_PATH:-}
export PYTHONUNBUFFERED=1
B=build-dev/minicpmv
TINY=build/test-models/tiny-s1
mk_tiny() { [ -f $TINY/config.json ] || $B mkmodel --out $TINY --size tiny --seed 1; }
for stage in "$@"; do
  echo "=== $stage"
  case $stage in
  env)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    nproc; free -g | head -2
    python3 -c "import torch,transformers,tokenizers,PIL,numpy; print('torch',torch.__version__,'transformers',transformers.__version__,'tokenizers',tokenizers.__version__,'PIL',PIL.__version__,'numpy',numpy.__version__,'cpu',torch.backends.cpu.get_cpu_capability())"
    ;;
  fixtures)
    mk_tiny
    mkdir -p "$OUT/fx"
    python3 tools/ref_llm.py --model $TINY --out "$OUT/fx/llm_tiny.safetensors" 2>&1 | tee "$OUT/fx/ref_llm.log" | tail -25
    mkdir -p /tmp/tok && $B tokenize --help >/dev/null 2>&1
    python3 tools/ref_tokenizer.py --model-dir $TINY --corpus .devdata/corpus.json --out "$OUT/fx/tokenizer_hf.json" 2>&1 | tail -12
    xz -dc .devdata/big.txt.xz > /tmp/big.txt && python3 tools/ref_tokenizer.py --model-dir $TINY --bench /tmp/big.txt 2>&1 | tail -3
    python3 tools/ref_image.py "$OUT/fx/image" 2>&1 | tee "$OUT/fx/ref_image.log" | tail -12
    python3 tools/ref_vision.py --model $TINY --out "$OUT/fx/vision" 2>&1 | tee "$OUT/fx/ref_vision.log" | tail -40
    python3 tools/ref_vision.py --model $TINY --out "$OUT/fx/vision_off" --case 640x480,multi --official --official-dir .devdata/official 2>&1 | tee "$OUT/fx/ref_official.log" | tail -25
    (cd "$OUT" && tar cf fixtures.tar fx && rm -rf fx && ls -la fixtures.tar)
    ;;
  cudatest)
    build-dev/tests/test_cuda_ops 2>&1 | tee "$OUT/cuda_ops.log" | grep -E "FAIL|passed" | head -40
    build-dev/tests/test_cuda_ops bench 2>&1 | tail -45
    ;;
  cudae2e)
    mk_tiny
    for dev in cpu cuda; do
      $B generate --model $TINY --device $dev --quiet --ids 128000,791,4062,374,1234,555 --max-new-tokens 24 --greedy --stats
      $B generate --model $TINY --device $dev --quiet --dtype f32 --ids 128000,791,4062,374,1234,555 --max-new-tokens 24 --greedy
    done
    ;;
  full)
    # the full-size random checkpoint (17 GB) on the machine's local disk
    FULL=/tmp/full
    [ -f $FULL/config.json ] || { time $B mkmodel --out $FULL --size full --seed 1 | tail -2; }
    ;;
  perf)
    FULL=/tmp/full
    ids512=$(python3 -c "import random; r=random.Random(1); print(','.join(['128000']+[str(r.randrange(200,127000)) for _ in range(511)]))")
    ids3000=$(python3 -c "import random; r=random.Random(2); print(','.join(['128000']+[str(r.randrange(200,127000)) for _ in range(2999)]))")
    for extra in "" "--logical-devices 0:2"; do
      echo "--- cuda $extra"
      $B generate --model $FULL --device cuda $extra --quiet --ids $ids512 --max-new-tokens 128 --greedy --stats 2>&1 >/dev/null | tail -1
      $B generate --model $FULL --device cuda $extra --quiet --ids $ids3000 --max-new-tokens 64 --max-batch 3000 --greedy --stats 2>&1 >/dev/null | tail -1
    done
    echo "--- cpu (16 cores)"
    $B generate --model $FULL --device cpu --quiet --ids $ids512 --max-new-tokens 4 --greedy --stats 2>&1 >/dev/null | tail -1
    ;;
  cmpbench)
    # same inputs, same run: our tokenizer vs HF tokenizers; our preprocessing vs Pillow
    mk_tiny
    xz -dc .devdata/big.txt.xz > /tmp/big.txt
    $B tokenize --model $TINY --bench /tmp/big.txt
    python3 tools/ref_tokenizer.py --model-dir $TINY --bench /tmp/big.txt 2>&1 | tail -1
    python3 -c "import sys; sys.path.insert(0,'tools'); from ref_image import gen_image; from PIL import Image; Image.fromarray(gen_image(1344,1344,7)).save('/tmp/b1344.jpg', quality=90)"
    build-dev/tests/test_image --bench /tmp/b1344.jpg 2>&1 | tail -1
    OMP_NUM_THREADS=1 build-dev/tests/test_image --bench /tmp/b1344.jpg 2>&1 | tail -1
    python3 tools/ref_image.py /tmp/imgfx 2>&1 | grep Pillow
    ;;
  bench)
    # minicpmv bench and the HF transformers equivalent, same card, same run (docs/BENCH.md)
    FULL=/tmp/full
    [ -f $FULL/config.json ] || $B mkmodel --out $FULL --size full --seed 1 | tail -1
    $B bench --model $FULL --device cuda --quiet --mem-poll 1 --json "$OUT/bench_ours.json" 2>&1 | tee "$OUT/bench_ours.txt" | tail -30
    python3 tools/bench_hf.py --model $FULL --json "$OUT/bench_hf.json" ${HF_ONLY:+--only $HF_ONLY} 2>&1 | tee "$OUT/bench_hf.txt" | tail -25
    python3 tools/bench_compare.py "$OUT/bench_ours.json" "$OUT/bench_hf.json" --out "$OUT/bench_compare.md"
    cat "$OUT/bench_compare.md"
    ;;
  split)
    # issue 7 on one GPU: the seed's budgets over two logical devices of GPU 0, and CPU offload
    FULL=/tmp/full
    [ -f $FULL/config.json ] || $B mkmodel --out $FULL --size full --seed 1 | tail -1
    ids512=$(python3 -c "import random; r=random.Random(1); print(','.join(['128000']+[str(r.randrange(200,127000)) for _ in range(511)]))")
    echo "--- seed case, one device"
    $B bench --model $FULL --device cuda --quiet --only seedcase --mem-poll 1 2>&1 | tail -6
    echo "--- seed case, --logical-devices 0:2 --max-memory 0.0=10GiB,0.1=10GiB"
    $B bench --model $FULL --device cuda --logical-devices 0:2 --max-memory 0.0=10GiB,0.1=10GiB --only seedcase,decode512 --mem-poll 1 2>&1 | tail -22
    echo "--- CPU offload: --max-memory 0=12GiB,cpu=40GiB"
    $B generate --model $FULL --device cuda --max-memory 0=12GiB,cpu=40GiB --ids $ids512 --max-new-tokens 16 --greedy --stats 2>&1 | tail -16
    $B generate --model $FULL --device cuda --quiet --ids $ids512 --max-new-tokens 16 --greedy
    echo "--- prefill chunk sweep"
    for mb in 512 1024 3000; do $B bench --model $FULL --device cuda --quiet --max-batch $mb --only prefill3000 2>&1 | grep prefill3000; done
    ;;
  tests)
    for t in build-dev/tests/test_*; do case $t in *.log) continue;; esac; $t > /tmp/t.out 2>&1; tail -1 /tmp/t.out; grep -aE "FAIL|assert|CHECK" /tmp/t.out | head -5; done
    ;;
  esac
done
