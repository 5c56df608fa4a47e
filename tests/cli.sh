#!/usr/bin/env bash
# The CLI's surface, as a new user meets it: --version, the command list, one "unknown flag" wording,
# the --dtype values of plan and chat, --timings (and its alias --stats), generate's documented
# default, plan --ctx beyond the model's positions, an error naming a path once, the REPL's /help,
# the progress line (only on a terminal, never with --quiet or into a file), and mkmodel's tokenizer
# search and refusal to write over a folder, --split gone, a bad --device refused, and bench --peak-gbs (a number,
# auto on the CPU, junk). Expected values come from config.json and the issue's
# wording, not from the code. Run by `make test` after the C tests (which generate the tiny model).
cd "$(dirname "$0")/.." || exit 2
BIN=${BUILD:-build}/minicpmv; MODEL=build/test-models/tiny-s1
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $1" >&2; fi; }
[ -f $MODEL/config.json ] || "$BIN" mkmodel --out $MODEL --size tiny --seed 1 --quiet >/dev/null 2>&1
# what the model says, read from its config.json
maxpos=$(grep -o '"max_position_embeddings":[[:space:]]*[0-9]*' $MODEL/config.json | grep -o '[0-9]*$')

# --version: version, commit, backends (and the CUDA targets in a CUDA build)
"$BIN" --version >$tmp/v 2>&1; rc=$?
check "--version exits 0" '[ $rc = 0 ]'
check "--version names version and commit" 'grep -qE "^minicpmv [0-9]+\.[0-9]+\.[0-9]+ \(commit [0-9a-f]{7,}(-dirty)?\)$|^minicpmv [0-9.]+ \(commit unknown\)$" $tmp/v'
check "--version lists the backends" 'grep -q "^backends: cpu" $tmp/v'
if grep -q "backends: cpu cuda" $tmp/v; then check "--version lists CUDA targets" 'grep -qE "^cuda targets: .*(sm|compute)_[0-9]+" $tmp/v'; fi

# every command in --help runs (no "not built into this binary"), and demo is not offered
"$BIN" --help 2>$tmp/h
cmds=$(sed -n 's/^  \([a-z]*\) .*/\1/p' $tmp/h)
check "--help lists commands" '[ $(echo $cmds | wc -w) -ge 6 ]'
check "--help does not list demo" '! echo $cmds | grep -qw demo'
for c in $cmds; do
  "$BIN" $c --help >$tmp/ch 2>&1; rc=$?
  check "$c --help exits 0" '[ $rc = 0 ] && ! grep -q "not built" $tmp/ch'
  "$BIN" $c --bogus-flag >$tmp/uf 2>&1; rc=$?
  check "$c: one wording for an unknown flag" '[ $rc != 0 ] && grep -q "minicpmv $c: unknown flag '"'"'--bogus-flag'"'"'" $tmp/uf'
done

# documented: generate's default of 16 new tokens, chat's --prompt, --timings with --stats as its alias
check "generate --help says its default" '"$BIN" generate --help | grep -q "default 16"'
check "chat --help documents --prompt" '"$BIN" chat --help | grep -q -- "--prompt"'
for f in --timings --stats; do
  "$BIN" generate --model $MODEL --device cpu --quiet --ids 128000,791 --max-new-tokens 3 --greedy $f >$tmp/g 2>$tmp/ge; rc=$?
  check "generate $f prints the timings" '[ $rc = 0 ] && grep -q "tok/s" $tmp/ge'
  "$BIN" chat --model $MODEL --device cpu --quiet --greedy --max-new-tokens 3 -p hi $f >$tmp/c 2>$tmp/ce; rc=$?
  check "chat $f prints the timings" '[ $rc = 0 ] && grep -q "decode" $tmp/ce'
done

# --dtype: the same values and words in plan and chat
for c in plan chat; do
  "$BIN" $c --model $MODEL --dtype bf16 -p x >/dev/null 2>$tmp/d; rc=$?
  check "$c --dtype bf16 is refused" '[ $rc != 0 ] && grep -q "expected f16 or f32" $tmp/d'
done
check "plan --dtype f32 is accepted" '"$BIN" plan --model $MODEL --dtype f32 >/dev/null 2>&1'

# plan --ctx beyond max_position_embeddings: an error naming the limit
"$BIN" plan --model $MODEL --ctx $((maxpos + 1)) >$tmp/p 2>&1; rc=$?
check "plan --ctx beyond the positions fails" '[ $rc = 2 ]'
check "plan --ctx names the limit" 'grep -q "max_position_embeddings ($maxpos)" $tmp/p'
"$BIN" plan --model $MODEL --ctx $maxpos >$tmp/p 2>&1; rc=$?
check "plan --ctx at the limit is fine" '[ $rc = 0 ]'

# an error names the path once
"$BIN" chat --model $MODEL --quiet --image /nonexistent-x.jpg -p hi >/dev/null 2>$tmp/e; rc=$?
check "a missing image fails" '[ $rc = 1 ]'
check "a missing image is named once" '[ "$(grep -o /nonexistent-x.jpg $tmp/e | wc -l)" = 1 ]'

# the REPL's /help
# one placement path: --split is gone (--logical-devices is the planner's way to split a device), and
# a --device that is neither auto, cpu nor cuda is refused by name (it used to run on the default device)
"$BIN" generate --model $MODEL --device cpu --quiet --ids 128000 --max-new-tokens 1 --split 2 >/dev/null 2>$tmp/s; rc=$?
check "generate --split is an unknown flag" '[ $rc != 0 ] && grep -q "unknown flag '"'"'--split'"'"'" $tmp/s'
check "--help does not offer --split" '! "$BIN" generate --help | grep -q -- "--split"'
"$BIN" generate --model $MODEL --device tpu --quiet --ids 128000 --max-new-tokens 1 >/dev/null 2>$tmp/d; rc=$?
check "--device tpu is refused by name" '[ $rc != 0 ] && grep -q "expected auto, cpu or cuda, got '"'"'tpu'"'"'" $tmp/d'
printf '/help\n/exit\n' | timeout 60 "$BIN" chat --model $MODEL --device cpu --quiet >/dev/null 2>$tmp/r
check "REPL /help lists /image, /reset, /exit" 'grep -q "/image PATH  " $tmp/r && grep -q "^/reset  " $tmp/r && grep -q "^/exit, /quit  " $tmp/r'

# progress: on a terminal (script gives one) a line with GB, GB/s or not; never into a file, never with --quiet
script -qec "$BIN generate --model $MODEL --device cpu --dtype f32 --ids 128000 --max-new-tokens 1 --greedy" /dev/null >$tmp/tty 2>&1
check "progress on a terminal while loading" 'grep -q "loading weights .*/ .* GB" $tmp/tty'
script -qec "$BIN generate --model $MODEL --device cpu --dtype f32 --quiet --ids 128000 --max-new-tokens 1 --greedy" /dev/null >$tmp/tty 2>&1
check "no progress with --quiet" '! grep -q "loading weights" $tmp/tty'
"$BIN" generate --model $MODEL --device cpu --dtype f32 --ids 128000 --max-new-tokens 1 --greedy >/dev/null 2>$tmp/nt
check "no progress when stderr is a file" '! grep -q "loading weights" $tmp/nt'

# mkmodel: refuses a folder with files unless --force; finds its tokenizer from anywhere or says how
mkdir -p $tmp/full && echo keep >$tmp/full/notes.txt
"$BIN" mkmodel --out $tmp/full --size tiny --quiet >/dev/null 2>$tmp/m; rc=$?
check "mkmodel refuses a folder with files" '[ $rc = 1 ] && grep -q -- "--force" $tmp/m && [ ! -f $tmp/full/config.json ]'
"$BIN" mkmodel --out $tmp/full --size tiny --quiet --force >/dev/null 2>&1; rc=$?
check "mkmodel --force writes" '[ $rc = 0 ] && [ -f $tmp/full/config.json ] && [ -f $tmp/full/tokenizer.json ]'
abs=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
(cd $tmp && "$abs" mkmodel --out $tmp/elsewhere --size tiny --quiet >/dev/null 2>$tmp/m1); rc=$?
check "mkmodel from another folder finds the tokenizer beside the binary" '[ $rc = 0 ] && [ -f $tmp/elsewhere/tokenizer.json ]'
mkdir -p $tmp/bin && cp "$BIN" $tmp/bin/minicpmv
(cd $tmp && env -u MINICPMV_TOKENIZER bin/minicpmv mkmodel --out $tmp/lost --size tiny >/dev/null 2>$tmp/m2); rc=$?
check "mkmodel without a tokenizer says the fix" '[ $rc = 1 ] && grep -q "fetch_tokenizer.sh" $tmp/m2 && grep -q "MINICPMV_TOKENIZER" $tmp/m2 && [ ! -d $tmp/lost ]'
tok=$PWD/.cache/tokenizer-llama3/tokenizer.json
(cd $tmp && MINICPMV_TOKENIZER=$tok bin/minicpmv mkmodel --out $tmp/env --size tiny --quiet >/dev/null 2>&1); rc=$?
check "mkmodel takes MINICPMV_TOKENIZER" '[ $rc = 0 ] && cmp -s $tmp/env/tokenizer.json $tmp/full/tokenizer.json'

# bench --peak-gbs: a number prints every decode phase as a fraction of it (10 GB/s: the tiny model's 0.0691 GB
# per token at the tok/s printed); auto measures the CPU before the model loads and prints the figure; junk is refused
"$BIN" bench --model $MODEL --device cpu --only decode16 --reps 1 --decode-steps 2 --peak-gbs 10 >$tmp/b 2>&1; rc=$?
check "bench --peak-gbs 10: the fraction line" '[ $rc = 0 ] && grep -q "^decode as a fraction of 10 GB/s:" $tmp/b && grep -qE "^  decode16 .* GB/s effective .* %$" $tmp/b'
check "bench --peak-gbs 10: the fraction is effective GB/s / 10" 'awk "/^decode16 /{for(i=1;i<=NF;i++){if(\$i~/^gb_s=/){split(\$i,a,\"=\");g=a[2]} if(\$i~/^pct_of_peak_bw=/){split(\$i,b,\"=\");p=b[2]}}} END{exit !(g>0 && (p-g*10)^2<1e-6)}" $tmp/b'
"$BIN" bench --model $MODEL --device cpu --only decode16 --reps 1 --decode-steps 2 --peak-gbs auto --json $tmp/b.json >$tmp/ba 2>&1; rc=$?
check "bench --peak-gbs auto: measured on the CPU" '[ $rc = 0 ] && grep -qE "^  cpu +[0-9.]+ GB/s +\(1\.00 GiB per pass, 3 passes" $tmp/ba && grep -q "\"peak_gbs_source\":.*\"measured\"" $tmp/b.json'
"$BIN" bench --model $MODEL --device cpu --only decode16 --peak-gbs fast >$tmp/bx 2>&1; rc=$?
check "bench --peak-gbs fast is refused" '[ $rc = 1 ] && grep -q "neither auto nor a positive number" $tmp/bx'
# bench --overlap: a '+'-joined list of known names (no effect on the CPU), anything else refused with the list
"$BIN" bench --model $MODEL --device cpu --only decode16 --reps 1 --decode-steps 2 --overlap small+early >$tmp/bo 2>&1; rc=$?
check "bench --overlap small+early is taken" '[ $rc = 0 ] && grep -q "^decode16 " $tmp/bo'
for bad in small+small early+ fast ""; do
    "$BIN" bench --model $MODEL --device cpu --only decode16 --overlap "$bad" >$tmp/bo 2>&1; rc=$?
    check "bench --overlap '$bad' is refused" '[ $rc = 1 ] && grep -q "a .+.-joined list of all, quant, small, early" $tmp/bo'
done
# bench --attn-splits: 0..99 (no effect on the CPU); outside that refused with the range
"$BIN" bench --model $MODEL --device cpu --only decode16 --reps 1 --decode-steps 2 --attn-splits 16 >$tmp/bs 2>&1; rc=$?
check "bench --attn-splits 16 is taken" '[ $rc = 0 ] && grep -q "^decode16 " $tmp/bs'
"$BIN" bench --model $MODEL --device cpu --only decode16 --attn-splits 100 >$tmp/bs 2>&1; rc=$?
check "bench --attn-splits 100 is refused" '[ $rc = 1 ] && grep -q "attn-splits" $tmp/bs'
# bench --attn-kernel and --attn-warps: the names and 0, 1, 2, 4 taken (no effect on the CPU), others refused
"$BIN" bench --model $MODEL --device cpu --only decode16 --reps 1 --decode-steps 2 --attn-kernel tcc --attn-warps 2 >$tmp/bs 2>&1; rc=$?
check "bench --attn-kernel tcc --attn-warps 2 is taken" '[ $rc = 0 ] && grep -q "^decode16 " $tmp/bs'
"$BIN" bench --model $MODEL --device cpu --only decode16 --attn-kernel flash >$tmp/bs 2>&1; rc=$?
check "bench --attn-kernel flash is refused with the names" '[ $rc = 1 ] && grep -q "auto, splitk, cluster, tc or tcc" $tmp/bs'
"$BIN" bench --model $MODEL --device cpu --only decode16 --attn-warps 3 >$tmp/bs 2>&1; rc=$?
check "bench --attn-warps 3 is refused" '[ $rc = 1 ] && grep -q "attn-warps" $tmp/bs'

echo "cli: $pass passed, $fail failed"
[ $fail = 0 ]
