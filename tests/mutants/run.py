#!/usr/bin/env python3
"""tests/mutants/run.py: the mutation campaign behind `make mutate` (not in CI: it is slow).

Reads the mutant lists tests/mutants/*.mut, copies the working tree (tracked and untracked,
non-ignored files, the existing build/ and build-asan/ with their timestamps and generated test models,
a link to .cache) to one scratch folder per job under /tmp (the working tree is never modified),
builds it, runs every test
selection the mutants use on the unmutated copy (they must pass, or kills mean nothing), then for each
mutant: applies it to a scratch copy, rebuilds and runs that mutant's test binaries, records the verdict
and restores the file. --jobs N runs N mutants at once, each in its own copy. Prints the kill rate, the
killer of each mutant and the survivors; --report FILE writes the same as a Markdown table.

Verdicts: *killed* only by a real test failure: a failed check ("FAIL fn" in the binary's log: the
killer is recorded as binary:fn) or a crash (no summary line, e.g. ASan, a signal, an exit from inside
the code: binary:fn (crash) when a stack frame names the test function). *timeout* (a test binary ran
past --timeout) and *error* (non-zero exit without a failed check or a crash) are not kills: they count
against the kill rate and are listed for a look by hand. *stillborn*: does not compile (listed, not
counted). *stale*: the anchor is gone or not unique (the code changed: update the rule; not counted).

Mutant format (one block per mutant, blank line between blocks, '#' comments):
    name   rope-theta-f64
    file   src/backend_cpu.c
    find   inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i) / (float)hd);
    repl   inv_freq[i] = 1.0f / powf((float)theta, (float)(2 * i + 1) / (float)hd);
    tests  test_llm test_vision_ref
    only   test_fixture_f32 test_vision_ref:test_448x448
    why    one line: the bug class
`find` must occur exactly once in `file` (anchor on a unique line, not a line number, so rules survive
refactors). `sanitize 1` builds and runs that mutant's tests with SANITIZE=1 (build-asan/: for memory
bugs only ASan sees). `find`/`repl` values may use \\n, \\t and \\\\ (a backslash) escapes. `tests` names
build/tests/ binaries, tried in that order until one kills; the special name `server_clients` runs
tests/server_clients.sh. `only` (optional) names the test functions that should kill the mutant: each
entry `fn` applies to every binary of `tests`, `binary:fn` to that one; a binary's entries are passed as
T_ONLY (tests/t.h) and it runs only those functions (a binary with no entry runs whole). A name the
binary does not run fails it, on the unmutated baseline too, so a typo cannot pass for a kill.

Usage: tests/mutants/run.py [--only NAME,...] [--max-cost N] [--list] [--check] [--jobs N] [--keep]
                            [--report FILE] [--timeout S] [--no-baseline]
  --check  only verify every anchor is unique in the current tree (fast)."""
import argparse, glob, os, queue, re, shutil, subprocess, sys, tempfile, threading, time

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
            elif k == "only": cur[k] = [x for x in re.split(r"[,\s]+", v.strip()) if x]
            else: sys.exit(f"{path}:{ln}: unknown key '{k}'")
        if cur: muts.append(cur)
    names = set()
    for m in muts:
        for k in ("file", "find", "repl", "tests"):
            if k not in m: sys.exit(f"mutant {m['name']} ({m['src']}): no '{k}'")
        if m["name"] in names: sys.exit(f"duplicate mutant name {m['name']}")
        names.add(m["name"])
        for e in m.get("only", []):
            b, _, f = e.rpartition(":")
            if (b and b not in m["tests"]) or not re.fullmatch(r"\w+", f):
                sys.exit(f"mutant {m['name']} ({m['src']}): 'only' entry {e}: not fn or binary:fn of its tests")
    return muts


def selection(m, t):
    """the T_ONLY value for test binary t of mutant m ('' = the whole binary)"""
    out = []
    for e in m.get("only", []):
        b, _, f = e.rpartition(":")
        if not b or b == t: out.append(f)
    return ",".join(out) if t != "server_clients" else ""


def anchor_ok(tree, m):
    p = os.path.join(tree, m["file"])
    if not os.path.exists(p): return f"no file {m['file']}"
    n = open(p, encoding="utf-8").read().count(m["find"])
    return None if n == 1 else f"anchor found {n} times in {m['file']}"


def sh(cmd, cwd, timeout=None, env=None):
    e = dict(os.environ)
    e.pop("T_ONLY", None)
    e.update(env or {})
    try:
        r = subprocess.run(cmd, cwd=cwd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=timeout, text=True, errors="replace", env=e, start_new_session=True)
        out, rc = r.stdout, r.returncode
    except subprocess.TimeoutExpired as ex:
        out, rc = (ex.stdout or b"").decode(errors="replace") if isinstance(ex.stdout, bytes) else (ex.stdout or ""), 124
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
    # the existing builds (objects keep their times, as do the copied sources): only what differs is rebuilt
    for b in ("build", "build-asan"):
        if os.path.isdir(os.path.join(ROOT, b)):
            shutil.copytree(os.path.join(ROOT, b), os.path.join(dst, b), symlinks=True,
                            ignore=shutil.ignore_patterns("*.log"))
    if os.path.isdir(os.path.join(ROOT, ".cache")):  # tokenizer and npm caches (ignored, read-only use)
        os.symlink(os.path.join(ROOT, ".cache"), os.path.join(dst, ".cache"))


def test_cmd(t, b="build"):
    if t == "server_clients": return f"BUILD={b} bash tests/server_clients.sh"
    return f"bash tests/run.sh {b}/tests/{t}"


def run_test(tree, t, b, only, timeout):
    """(verdict, by, output): verdict None (passed), 'killed', 'timeout' or 'error'"""
    rc, out = sh(test_cmd(t, b), tree, timeout=timeout, env={"T_ONLY": only} if only else None)
    if rc == 0: return None, "", out
    if rc == 124: return "timeout", t, out
    if t == "server_clients": return "killed", t, out
    logp = os.path.join(tree, b, "tests", t + ".log")
    log = open(logp, encoding="utf-8", errors="replace").read() if os.path.exists(logp) else ""
    if re.search(r"^CRASH ", out, re.M):
        fr = re.findall(r"\bin (test_\w+) ", log)  # a stack frame of the test function
        if not fr:  # else the selected tests that never reported: the crash was in the first of them
            fr = [f for f in only.split(",") if f and not re.search(rf"^(ok  |FAIL) {f}$", log, re.M)]
            fr = [fr[0]] if len(fr) == 1 else (["one of " + "/".join(fr)] if fr else [])
        return "killed", f"{t}:{fr[0]} (crash)" if fr else f"{t} (crash)", out + log[-3000:]
    fails = re.findall(r"^FAIL (\S+)", log, re.M)
    if "T_ONLY:" in fails:
        return "killed", f"{t} (a selected test not reached: main failed first)", out + log[-3000:]
    if fails: return "killed", t + ":" + ",".join(fails), out
    return "error", f"{t} (exit {rc}, no failed check)", out + log[-3000:]


class Campaign:
    def __init__(self, a, muts):
        self.a, self.muts, self.lock = a, muts, threading.Lock()
        self.results = {}
        self.trees = []

    def say(self, s):
        with self.lock: print(s, flush=True)

    def build_cmd(self, tests, san):
        b = "build-asan" if san else "build"
        tt = [t for t in tests if t != "server_clients"]
        return f"make -j{self.a.make_jobs} {'SANITIZE=1 ' if san else ''}{b}/minicpmv " + \
            " ".join(f"{b}/tests/{t}" for t in tt), b

    def prepare(self, k, logs):
        tree = tempfile.mkdtemp(prefix=f"minicpmv-mutate-{k}-")
        copy_tree(tree)
        logs[k] = open(os.path.join(tree, "mutate.log"), "w")
        for san in sorted({bool(m.get("sanitize")) for m in self.muts}):
            cmd, _ = self.build_cmd(sorted({t for m in self.muts if bool(m.get("sanitize")) == san for t in m["tests"]}), san)
            rc, out = sh(cmd, tree)
            logs[k].write(out)
            if rc: print(out[-3000:]); sys.exit(f"the unmutated tree does not build ({tree})")
        return tree

    def pool(self, items, fn):
        q = queue.Queue()
        for it in items: q.put(it)

        def worker(k):
            while True:
                try: it = q.get_nowait()
                except queue.Empty: return
                fn(k, it)
        th = [threading.Thread(target=worker, args=(k,)) for k in range(len(self.trees))]
        for x in th: x.start()
        for x in th: x.join()

    def baseline(self):
        combos = sorted({(t, selection(m, t), bool(m.get("sanitize"))) for m in self.muts for t in m["tests"]})
        bad = []

        def one(k, c):
            t, only, san = c
            t1 = time.time()
            v, by, out = run_test(self.trees[k], t, "build-asan" if san else "build", only, self.a.timeout)
            self.logs[k].write(f"\n==== baseline {c}\n{out}")
            self.say(f"baseline {t}{' (asan)' if san else ''} {only or '(whole)'}: "
                     f"{'ok' if v is None else v + ' ' + by} ({time.time() - t1:.0f} s)")
            if v is not None:
                with self.lock: bad.append(f"{t} T_ONLY={only}: {by}")
        self.pool(combos, one)
        return bad

    def mutant(self, k, m):
        tree = self.trees[k]
        path = os.path.join(tree, m["file"])
        orig = open(path, encoding="utf-8").read()
        open(path, "w", encoding="utf-8").write(orig.replace(m["find"], m["repl"], 1))
        t1 = time.time()
        log = self.logs[k]
        log.write(f"\n==== {m['name']}\n")
        cmd, b = self.build_cmd(m["tests"], m.get("sanitize"))
        rc, out = sh(cmd, tree)
        log.write(out)
        verdict, by = None, ""
        if rc:
            verdict = "stillborn"
        else:
            for t in m["tests"]:
                v, by1, out = run_test(tree, t, b, selection(m, t), self.a.timeout)
                log.write(out)
                if v:
                    verdict, by = v, by1
                    if v == "killed": break
            verdict = verdict or "survived"
        open(path, "w", encoding="utf-8").write(orig)
        dt = time.time() - t1
        with self.lock:
            self.results[m["name"]] = (verdict, by, dt)
            n = len(self.results)
        self.say(f"[{n}/{len(self.muts)}] {m['name']:34s} {verdict:9s} {by}  ({dt:.0f} s)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--jobs", type=int, default=1, help="mutants at once, each in its own scratch copy")
    ap.add_argument("--make-jobs", type=int, default=2, help="make -j of each build")
    ap.add_argument("--keep", action="store_true", help="keep the scratch trees")
    ap.add_argument("--report", default="", help="write the results as a Markdown table to this file")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip running the unmutated tests first (only right after they passed in the working tree)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per test binary run")
    ap.add_argument("--max-cost", type=int, default=0,
                    help="only mutants whose first test is this cheap (1 unit tests, 2 penalty/image, 3 server, "
                         "4 llm, 10 vision_ref); 0 = all")
    a = ap.parse_args()
    muts = load()
    # cheapest first (a partial run then covers the most mutants): rough cost of each test binary
    cost = {"test_vision_ref": 10, "test_llm": 4, "test_server": 3, "test_server_attack": 3, "server_clients": 3,
            "test_penalty": 2, "test_image": 2, "test_mkmodel": 2}
    est = lambda m: cost.get(m["tests"][0], 1) * (1 if m.get("only") else 2)  # a kill usually comes from the first test
    muts.sort(key=est)
    if a.max_cost:
        muts = [m for m in muts if cost.get(m["tests"][0], 1) <= a.max_cost]
        for m in muts: m["tests"] = [t for t in m["tests"] if cost.get(t, 1) <= a.max_cost]
    if a.only:
        want = a.only.split(",")
        unknown = set(want) - {m["name"] for m in muts}
        if unknown: sys.exit(f"no such mutant: {', '.join(sorted(unknown))}")
        muts = [m for m in muts if m["name"] in want]
    if a.list:
        for m in muts:
            print(f"{m['name']:34s} {m['file']:22s} {' '.join(m['tests'])}"
                  + (f"  only {' '.join(m['only'])}" if m.get("only") else ""))
        return 0
    bad = [(m["name"], anchor_ok(ROOT, m)) for m in muts]
    bad = [b for b in bad if b[1]]
    for n, why in bad: print(f"STALE {n}: {why}")
    if a.check:
        print(f"{len(muts)} mutants, {len(bad)} stale")
        return 1 if bad else 0
    stale = [n for n, _ in bad]
    live = [m for m in muts if m["name"] not in stale]
    c = Campaign(a, live)
    c.logs = {}
    t0 = time.time()
    njobs = max(1, min(a.jobs, len(live)))
    c.trees = [None] * njobs
    th = [threading.Thread(target=lambda k: c.trees.__setitem__(k, c.prepare(k, c.logs)), args=(k,))
          for k in range(njobs)]
    for x in th: x.start()
    for x in th: x.join()
    if any(t is None for t in c.trees): sys.exit("a scratch tree could not be prepared")
    print(f"scratch trees (logs: <tree>/mutate.log): {' '.join(c.trees)}; built in {time.time() - t0:.0f} s", flush=True)
    if not a.no_baseline:
        base_fail = c.baseline()
        if base_fail: sys.exit("tests fail on the unmutated tree:\n  " + "\n  ".join(base_fail))
        print(f"baseline green in {time.time() - t0:.0f} s", flush=True)
    c.pool(live, c.mutant)
    R = c.results
    by_v = lambda v: [m for m in live if R[m["name"]][0] == v]
    killed, survived, stillborn = by_v("killed"), by_v("survived"), by_v("stillborn")
    hung = by_v("timeout") + by_v("error")
    n = len(killed) + len(survived) + len(hung)
    rate = 100.0 * len(killed) / n if n else 0.0
    summary = (f"kill rate: {len(killed)}/{n} = {rate:.1f} % (survived {len(survived)}, timeout/error {len(hung)}; "
               f"stillborn, not counted: {len(stillborn)}; stale, not counted: {len(stale)}) "
               f"in {time.time() - t0:.0f} s with --jobs {njobs}")
    print("\n" + summary)
    for m in survived: print(f"SURVIVED {m['name']}: {m['file']}: {m.get('why', '')}")
    for m in hung: print(f"{R[m['name']][0].upper()} {m['name']}: {R[m['name']][1]} (not a kill: look by hand)")
    for m in stillborn: print(f"STILLBORN {m['name']} (does not compile: rewrite the rule)")
    if a.report:
        with open(a.report, "w", encoding="utf-8") as f:
            f.write("| mutant | file | bug class | verdict | killed by (binary:test) | s |\n|---|---|---|---|---|---|\n")
            for m in live:
                v, by, dt = R[m["name"]]
                f.write(f"| `{m['name']}` | {m['file']} | {m.get('why', '').replace('|', '/')} | {v} | {by} | {dt:.0f} |\n")
            for n_ in stale: f.write(f"| `{n_}` | | | stale | | |\n")
            f.write(f"\n{summary}\n")
    for k in c.logs: c.logs[k].close()
    if not a.keep:
        for t in c.trees: shutil.rmtree(t, ignore_errors=True)
    return 0 if not survived and not stale and not hung else 1


if __name__ == "__main__":
    sys.exit(main())
