#!/usr/bin/env bash
# The docs are the program's: each `$ minicpmv plan ...` example in docs/DEVMAP.md runs on the
# published configuration (mkmodel --size full --plan-only: config.json without weights) and every
# table and advice line the page prints must be in the program's output; every flag the README and
# DEVMAP.md show for a command is in that command's --help; the README's commands run on the tiny
# model; the CUDA targets docs/CUDA.md names are the ones the Makefile builds; no doc points at
# ../shared (a clone does not have it). Run by `make test`; a few seconds.
cd "$(dirname "$0")/.." || exit 2
BIN=${BUILD:-build}/minicpmv; TINY=build/test-models/tiny-s1
pass=0; fail=0
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
check() { if eval "$2"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $1" >&2; fi; }
[ -f $TINY/config.json ] || "$BIN" mkmodel --out $TINY --size tiny --seed 1 --quiet >/dev/null 2>&1
FULL=$tmp/full
"$BIN" mkmodel --out $FULL --size full --plan-only --quiet >/dev/null 2>&1 && rm -f $FULL/model.safetensors.index.json
check "the full configuration is written" '[ -f $FULL/config.json ]'

# DEVMAP.md: "$ minicpmv plan ..." then the printed lines until the end of the code block
n=0
while IFS= read -r cmd; do
  n=$((n+1))
  # the lines the doc shows for this command
  awk -v c="$cmd" 'f && /^```/{exit} f{print} $0==c{f=1}' docs/DEVMAP.md | grep -E '^(  device |  gpu |  cpu |does not fit|per device)' > $tmp/want$n
  args=${cmd#\$ minicpmv }
  eval "\"$BIN\" ${args//DIR/$FULL}" > $tmp/got$n 2>&1
  check "DEVMAP example $n shows lines" '[ -s $tmp/want$n ]'
  while IFS= read -r line; do
    check "DEVMAP example $n ($args): '$line'" 'grep -qxF -- "$line" $tmp/got$n'
  done < $tmp/want$n
done < <(grep -E '^\$ minicpmv plan ' docs/DEVMAP.md)
check "DEVMAP.md has its three examples" '[ $n -ge 3 ]'

# every flag shown for a command (README's command lines, DEVMAP's flag table) is in its --help
while IFS= read -r line; do
  c=$(echo "$line" | awk '{print $2}')
  "$BIN" $c --help > $tmp/help 2>&1
  for f in $(echo "$line" | grep -oE -- '--[a-z][a-z-]*'); do
    check "README: $c $f is in '$c --help'" 'grep -q -- "$f" $tmp/help'
  done
done < <(grep -E '^    build/minicpmv [a-z]+ ' README.md | sed 's#^    build/##; s/#.*//')
"$BIN" plan --help > $tmp/help 2>&1
for f in $(grep -E '^\| `--' docs/DEVMAP.md | grep -oE -- '`--[a-z-]+' | tr -d '`'); do
  check "DEVMAP.md: plan $f is in 'plan --help'" 'grep -q -- "$f" $tmp/help'
done

# the README's commands, on the tiny model (and plan on the full configuration)
"$BIN" generate --model $TINY --ids 128000,791,4062 --max-new-tokens 16 --greedy --quiet > $tmp/g 2>/dev/null; rc=$?
check "README generate: 16 ids" '[ $rc = 0 ] && [ "$(tr , "\n" < $tmp/g | grep -c "^[0-9][0-9]*$")" = 16 ]'
"$BIN" compare --model $TINY --quant q8 --positions 4 --device cpu --quiet > $tmp/cmp 2>/dev/null; rc=$?
check "README compare: q8 against fp16, top-1 and KL" '[ $rc = 0 ] && grep -qE "^compare: q8 vs fp16 .* 4 positions, top-1 agreement [0-4]/4 .*KL\(ref\|\|q\) mean [0-9.e-]+ max" $tmp/cmp'
echo "The quick brown fox" | "$BIN" tokenize --model $TINY > $tmp/t 2>/dev/null; rc=$?
check "README tokenize" '[ $rc = 0 ] && grep -qE "^[0-9]+(,[0-9]+)*$|^[0-9]+( [0-9]+)*$" $tmp/t'
"$BIN" chat --model $TINY --image tests/fixtures/image/gen200x150_q90_444.jpg -p "What is in the image?" --max-new-tokens 4 --quiet > $tmp/c 2>&1; rc=$?
check "README chat with an image" '[ $rc = 0 ]'
"$BIN" plan --model $FULL --max-memory 0=10GiB,1=10GiB --ctx 4096 > $tmp/p 2>&1; rc=$?
check "README plan fits" '[ $rc = 0 ]'

# the CUDA targets docs/CUDA.md promises are the Makefile's
nv=$(env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u BUILD -u SANITIZE -u CUDA -u CUDA_ARCH make -n -B CUDA=1 build-cuda/src/cuda/cuda_ops.o 2>/dev/null | grep -o 'code=[a-z_0-9]*' | sed 's/code=//' | sort | tr '\n' ' ')
doc=$(grep -oE '^Targets: .*' docs/CUDA.md | grep -oE '(sm|compute)_[0-9]+' | sort | tr '\n' ' ')
check "docs/CUDA.md's targets ($doc) are the build's ($nv)" '[ -n "$doc" ] && [ "$doc" = "$nv" ]'
check "docs/CUDA.md and README say Volta is not built" 'grep -q "Volta" docs/CUDA.md && grep -q "Volta" README.md'

# nothing points outside the repository
check "no doc cites ../shared" '! grep -rn "\.\./shared" README.md docs/'
echo "docs: $pass passed, $fail failed"
[ $fail = 0 ]
