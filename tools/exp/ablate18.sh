# tools/exp/ablate18.sh: session 18, run 9. Where the one-token decode step's time goes, by removal: a build with
# MINICPMV_ABLATE (tools/exp/ablate18.patch, applied to llm.c for the run only: bit 1 drops the add+RMSNorm after o, 2 the one
# after down, 4 RoPE + KV append, 8 the attention, 16 the o GEMV) times q4 and fp16 decode512 / decode4096 with
# kernels left out. The tokens are garbage; the times say what each kernel costs on the step's critical path.
. tools/exp/common.sh
BN_LINES="^(decode)"
for a in 0 3 4 8 12 15 16; do
  MINICPMV_ABLATE=$a bn "q4 ablate $a" $B bench --model $M --device cuda --quant q4 --only decode512,decode4096 --reps 3
done
for a in 0 3 4 8 15; do
  MINICPMV_ABLATE=$a bn "fp16 ablate $a" $B bench --model $M --device cuda --only decode512,decode4096 --reps 3
done
