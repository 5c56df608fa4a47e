#!/usr/bin/env python3
"""tests/mutants/run.py: the mutation campaign behind `make mutate` (not in CI: it is slow).

Reads the mutant lists tests/mutants/*.mut, copies the working tree (tracked and untracked,
non-ignored files, plus the fixtures and .cache) to a scratch folder under /tmp (the working tree is
never modified), builds it once, then for each mutant: applies it to the scratch copy, rebuilds and
runs that mutant's test binaries, records killed / survived, and restores the file. Prints the kill
rate and the survivors. A mutant whose anchor is missing or not unique is reported as STALE (the code
changed: update the rule); one that does not compile counts as killed by the compiler and is listed.

Mutant format (one block per mutant, blank line between blocks, '#' comments):
    name   rope-theta-f64
    file   src/backend_cpu.c
    find   inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
    repl   inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i + 1) / (float)hd);
    tests  test_llm test_vision_ref
    why    one line: the bug class
`find` must occur exactly once in `file` (anchor on a unique line, not a line number, so rules survive
refactors). `sanitize 1` builds and runs that mutant's tests with SANITIZE=1 (build-asan/: for memory
bugs only ASan sees). `find`/`repl` values may use \\n, \\t and \\\\ (a backslash) escapes. `tests` names build/tests/ binaries;
the special name `server_clients` runs tests/server_clients.sh.

Usage: tests/mutants/run.py [--only NAME,...] [--max-cost N] [--list] [--check] [--jobs N] [--keep]
  --check  only verify every anchor is unique in the current tree (fast)."""
import argparse, glob, os, re, shutil, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def unescape(v):
    """\\n -> newline, \\t -> tab, \\\\ -> one backslash; anything else stays."""
    return re.sub(r"\\(\\|n|t)", lambda m: {"\\": "\\", "n": "\n", "t": "\t"}[m.group(1)], v)


def load():
    muts = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests/mutants/*.mut"))):
        cur = None
        for ln, line in enumerate(open(path, encoding="utf-8"), 1):
            s = line.rstrip("\n")
            if not s.strip():
                if cur: muts.append(cur); cur = None
                continue
            if s.lstrip().startswith("#"): continue
            m = re.match(r"(\w+)\s+(.*)$", s)
            if not m: sys.exit(f"{path}:{ln}: cannot parse: {s}")
            k, v = m.group(1), m.group(2)
            if k == "name":
                if cur: muts.append(cur)
                cur = {"name": v.strip(), "src": f"{os.path.basename(path)}:{ln}"}
            elif cur is None: sys.exit(f"{path}:{ln}: '{k}' before 'name'")
            elif k in ("find", "repl"): cur[k] = unescape(v)
            elif k in ("file", "why"): cur[k] = v.strip()
            elif k == "sanitize": cur[k] = v.strip() == "1"
            elif k == "tests": cur[k] = v.split()
            else: sys.exit(f"{path}:{ln}: unknown key '{k}'")
        if cur: muts.append(cur)
    names = set()
    for m in muts:
        for k in ("file", "find", "repl", "tests"):
            if k not in m: sys.exit(f"mutant {m['name']} ({m['src']}): no '{k}'")
        if m["name"] in names: sys.exit(f"duplicate mutant name {m['name']}")
        names.add(m["name"])
    return muts


def anchor_ok(tree, m):
    p = os.path.join(tree, m["file"])
    if not os.path.exists(p): return f"no file {m['file']}"
    n = open(p, encoding="utf-8").read().count(m["find"])
    return None if n == 1 else f"anchor found {n} times in {m['file']}"


def sh(cmd, cwd, timeout=None, log=None):
    try:
        r = subprocess.run(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, text=True, errors="replace")
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as ex:
        out, rc = (ex.stdout or b"").decode(errors="replace") if isinstance(ex.stdout, bytes) else (ex.stdout or ""), 124
    if log: log.write(out)
    return rc, out


def copy_tree(dst):
    files = subprocess.run("git ls-files -co --exclude-standard -z", cwd=ROOT, shell=True,
                           stdout=subprocess.PIPE, check=True).stdout.split(b"\0")
    for f in files:
        if not f: continue
        f = f.decode()
        src = os.path.join(ROOT, f)
        if not os.path.isfile(src): continue
        os.makedirs(os.path.dirname(os.path.join(dst, f)) or dst, exist_ok=True)
        shutil.copy2(src, os.path.join(dst, f))
    # the existing build (objects keep their times, as do the copied sources): only what differs is rebuilt
    if os.path.isdir(os.path.join(ROOT, "build")):
        shutil.copytree(os.path.join(ROOT, "build"), os.path.join(dst, "build"), symlinks=True,
                        ignore=shutil.ignore_patterns("*.log"))
    if os.path.isdir(os.path.join(ROOT, ".cache")):  # tokenizer and npm caches (ignored, read-only use)
        os.symlink(os.path.join(ROOT, ".cache"), os.path.join(dst, ".cache"))


def test_cmd(t, b="build"):
    if t == "server_clients": return f"BUILD={b} bash tests/server_clients.sh"
    return f"bash tests/run.sh {b}/tests/{t}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the scratch tree")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the unmutated tests first (only right after they passed in the working tree)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per test binary run")
    ap.add_argument("--max-cost", type=int, default=0,
                    help="only mutants whose first test is this cheap (1 unit tests, 2 penalty/image, 3 server, "
                         "4 llm, 10 vision_ref); 0 = all")
    a = ap.parse_args()
    muts = load()
    # cheapest first (a partial run then covers the most mutants): rough cost of each test binary
    cost = {"test_vision_ref": 10, "test_llm": 4, "test_server": 3, "server_clients": 3, "test_penalty": 2,
            "test_image": 2, "test_mkmodel": 2}
    est = lambda m: cost.get(m["tests"][0], 1)  # a kill usually comes from the first test
    muts.sort(key=est)
    if a.max_cost:
        muts = [m for m in muts if est(m) <= a.max_cost]
        for m in muts: m["tests"] = [t for t in m["tests"] if cost.get(t, 1) <= a.max_cost]
    if a.only: muts = [m for m in muts if m["name"] in a.only.split(",")]
    if a.list:
        for m in muts: print(f"{m['name']:28s} {m['file']:22s} {' '.join(m['tests'])}")
        return 0
    bad = [(m["name"], anchor_ok(ROOT, m)) for m in muts]
    bad = [b for b in bad if b[1]]
    for n, why in bad: print(f"STALE {n}: {why}")
    if a.check:
        print(f"{len(muts)} mutants, {len(bad)} stale")
        return 1 if bad else 0
    tree = tempfile.mkdtemp(prefix="minicpmv-mutate-")
    log = open(os.path.join(tree, "mutate.log"), "w")
    print(f"scratch tree {tree} (log: {tree}/mutate.log)", flush=True)
    copy_tree(tree)
    all_tests = sorted({t for m in muts for t in m["tests"] if t != "server_clients"})
    targets = " ".join(f"build/tests/{t}" for t in all_tests) + " build/minicpmv"
    make = f"make -j{a.jobs} {targets}"
    t0 = time.time()
    rc, out = sh(make, tree, log=log)
    if rc: print(out[-3000:]); sys.exit("the unmutated tree does not build")
    # the unmutated suite must pass, or kills mean nothing
    base_fail = []
    for t in [] if a.no_baseline else sorted({t for m in muts for t in m["tests"]}):
        rc, out = sh(test_cmd(t), tree, timeout=a.timeout, log=log)
        if rc: base_fail.append(t + (" (timeout)" if rc == 124 else ""))
    if base_fail: sys.exit(f"tests fail on the unmutated tree: {base_fail}")
    print(f"baseline built and green in {time.time() - t0:.0f} s", flush=True)
    killed, survived, stillborn, stale = [], [], [], [n for n, _ in bad]
    for i, m in enumerate(muts):
        if m["name"] in stale: continue
        path = os.path.join(tree, m["file"])
        orig = open(path, encoding="utf-8").read()
        open(path, "w", encoding="utf-8").write(orig.replace(m["find"], m["repl"], 1))
        t1 = time.time()
        log.write(f"\n==== {m['name']}\n")
        tt = [t for t in m["tests"] if t != "server_clients"]
        b, san = ("build-asan", "SANITIZE=1 ") if m.get("sanitize") else ("build", "")
        rc, out = sh(f"make -j{a.jobs} {san}{b}/minicpmv " + " ".join(f"{b}/tests/{t}" for t in tt), tree, log=log)
        verdict, by = None, ""
        if rc:
            verdict = "stillborn"
        else:
            for t in m["tests"]:
                rc, out = sh(test_cmd(t, b), tree, timeout=a.timeout, log=log)
                if rc:
                    verdict, by = "killed", t + (" (timeout)" if rc == 124 else "")
                    break
            verdict = verdict or "survived"
        open(path, "w", encoding="utf-8").write(orig)
        {"killed": killed, "survived": survived, "stillborn": stillborn}[verdict].append(m["name"])
        print(f"[{i + 1}/{len(muts)}] {m['name']:28s} {verdict:9s} {by}  ({time.time() - t1:.0f} s)", flush=True)
    # restore the objects of the unmutated tree for a later --keep inspection
    n = len(killed) + len(survived)
    rate = 100.0 * len(killed) / n if n else 0.0
    print(f"\nkill rate: {len(killed)}/{n} = {rate:.1f} % (stillborn, not counted: {len(stillborn)}; stale: {len(stale)})")
    for s in survived:
        m = next(x for x in muts if x["name"] == s)
        print(f"SURVIVED {s}: {m['file']}: {m.get('why', '')}")
    for s in stillborn: print(f"STILLBORN {s} (does not compile: rewrite the rule)")
    log.close()
    if not a.keep: shutil.rmtree(tree, ignore_errors=True)
    return 0 if not survived and not stale else 1


if __name__ == "__main__":
    sys.exit(main())
