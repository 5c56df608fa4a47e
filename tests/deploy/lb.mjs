// lb.mjs: two `minicpmv serve` replicas (A, B) on the tiny model behind nginx configured by the shipped
// deploy/minicpmv.conf (only its ports and log path rewritten), 300 chat requests through nginx with the
// official openai npm client (no client retries), in four phases:
//   P0  both up: a conversation id always reaches the same replica, both replicas get some, requests
//       without the header stay on one (the client address); a stream reaches the client while its
//       replica still generates it (nginx does not buffer it).
//   P1  A is SIGKILLed while it runs requests: they and every later one are answered by B.
//   P2  A restarted on its port, loading (503, nginx moves the request to B) until it serves again.
//   P3  B gets SIGTERM while it runs requests: it finishes them, new ones go to A, B exits 0.
// Zero failed non-streamed requests; every answer (streamed ones that completed too) equals its solo
// answer (greedy, asked of a replica directly, one at a time, before the load). Exact accounting:
// nginx's access log names every replica a request was sent to and what each answered; each live
// replica's counters (/metrics after P2 and P3; B's closing summary after its drain) must equal what
// the log and the client say it served, and the served answers add up to what the client got (A's
// counters before its SIGKILL are lost: its share is taken from the log).
// Usage: node lb.mjs BIN MODEL TMPDIR NGINX. Prints "lb.mjs: N passed, M failed".
import { createRequire } from "node:module";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE).default ?? require(process.env.OPENAI_MODULE);

const [BIN, MODEL, TMP, NGINX] = process.argv.slice(2);
const N = 300, C = 8, LOAD_DELAY = 5;
let pass = 0, fail = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const procs = new Set();
const t00 = Date.now();
const say = (m) => console.error(`lb.mjs: [${((Date.now() - t00) / 1000).toFixed(1)} s] ${m}`);
function end() {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  console.log(`lb.mjs: ${pass} passed, ${fail} failed`);
  process.exit(fail ? 1 : 0);
}

for (const sig of ["SIGTERM", "SIGINT"]) // run.sh's timeout: no replica or nginx is left behind
  process.on(sig, () => { check(false, `lb.mjs got ${sig} (run.sh's time limit)`); end(); });

async function freePorts(n) {
  const ss = [];
  for (let i = 0; i < n; i++) {
    const s = net.createServer();
    await new Promise((r) => s.listen(0, "127.0.0.1", r));
    ss.push(s);
  }
  const ports = ss.map((s) => s.address().port);
  await Promise.all(ss.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

function start(cmd, args, env = {}) {
  const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  p.out = ""; p.err = "";
  p.stdout.on("data", (d) => (p.out += d));
  p.stderr.on("data", (d) => (p.err += d));
  p.done = new Promise((r) => p.on("exit", (code, sig) => r({ code, sig })));
  procs.add(p);
  return p;
}
const replica = (port, env) => start(BIN, ["serve", "--model", MODEL, "--host", "127.0.0.1", "--port", String(port),
  "--quiet", "--ctx", "512", "--threads", "1", "--parallel", "4", "--queue", "64", "--drain-timeout", "30"], env);

async function health(port) {
  try { const r = await fetch(`http://127.0.0.1:${port}/health`); return { ...(await r.json()), code: r.status }; }
  catch { return { code: 0 }; }
}
async function until(what, f, ms = 30000) {
  const t = Date.now();
  for (;;) {
    if (await f()) return true;
    if (Date.now() - t > ms) { check(false, `timed out waiting: ${what}`); return false; }
    await sleep(20);
  }
}
async function metrics(port) {
  const txt = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const m = {};
  for (const l of txt.split("\n")) {
    const x = l.match(/^(minicpmv_requests_total\{status="(\w+)"\}|minicpmv_prompt_tokens_total|minicpmv_generation_tokens_total) (\d+)$/);
    if (x) m[x[2] ?? x[1].replace(/^minicpmv_|_total$/g, "")] = +x[3];
  }
  return m;
}

// ---- nginx with the shipped configuration ----
const [PA, PB, PN] = await freePorts(3);
const A_ADDR = `127.0.0.1:${PA}`, B_ADDR = `127.0.0.1:${PB}`;
let conf = fs.readFileSync("deploy/minicpmv.conf", "utf8");
const sub1 = (from, to) => {
  const n = conf.split(from).length - 1;
  if (n !== 1) { check(false, `deploy/minicpmv.conf: expected '${from}' once, found it ${n} times`); end(); }
  conf = conf.replace(from, to);
};
sub1("server 127.0.0.1:8081 ", `server ${A_ADDR} `);
sub1("server 127.0.0.1:8082 ", `server ${B_ADDR} `);
sub1("listen 127.0.0.1:8080;", `listen 127.0.0.1:${PN};`);
sub1("/var/log/nginx/minicpmv.access.log", `${TMP}/access.log`);
fs.writeFileSync(`${TMP}/minicpmv.conf`, conf);
fs.writeFileSync(`${TMP}/nginx.conf`, `# the test's main file: a non-root nginx with everything under ${TMP}
${process.getuid() === 0 ? "user root;" : ""}
daemon off;
worker_processes 1;
pid ${TMP}/nginx.pid;
error_log ${TMP}/error.log notice;
events { worker_connections 512; }
http {
  client_body_temp_path ${TMP}/body; proxy_temp_path ${TMP}/proxy; fastcgi_temp_path ${TMP}/fastcgi;
  uwsgi_temp_path ${TMP}/uwsgi; scgi_temp_path ${TMP}/scgi;
  access_log off;
  include ${TMP}/minicpmv.conf;
}
`);
const nginx = start(NGINX, ["-p", `${TMP}/`, "-c", `${TMP}/nginx.conf`, "-e", `${TMP}/error.log`]);
let A = replica(PA), B = replica(PB);
const LB = `http://127.0.0.1:${PN}`;
// nginx is asked only once both replicas are ready: a 503 "loading" would take one out for fail_timeout
const ready = await until("both replicas and nginx up", async () => nginx.exitCode === null && (await health(PA)).code === 200 && (await health(PB)).code === 200 &&
  (await fetch(LB + "/health").then((r) => r.status, () => 0)) === 200);
if (!ready) {
  console.error(`nginx: ${nginx.err}${fs.existsSync(TMP + "/error.log") ? fs.readFileSync(TMP + "/error.log", "utf8") : ""}`);
  console.error(`A: ${A.err}\nB: ${B.err}`);
  end();
}
say(`replicas on ${PA} (A) and ${PB} (B), nginx on ${PN}`);

// ---- the requests: 30 conversation ids over 8 topics x 3 turns (24 distinct prompts) ----
const mk = (u) => new OpenAI({ baseURL: u + "/v1", apiKey: "unused", maxRetries: 0, timeout: 60000 });
const direct = mk(`http://${B_ADDR}`), lb = mk(LB);
const topics = ["Hello there", "What is in the image?", "Tell me a story about a cat", "One two three four five",
  "Why?", "Name a color", "How far is the moon", "Write a haiku"];
const solo = topics.map(() => []);
const body = (c, t) => {
  const messages = [];
  for (let k = 0; k <= t; k++) {
    messages.push({ role: "user", content: `${topics[c]} (${k})` });
    if (k < t) messages.push({ role: "assistant", content: solo[c][k].text });
  }
  return { model: "m", messages, temperature: 0, max_tokens: 1 + ((c + t) % 3) };
};
// one request at a time per replica (A the even topics, B the odd ones): each answer is the request's alone
const directA = mk(`http://${A_ADDR}`);
for (let t = 0; t < 3; t++)
  await Promise.all([0, 1].map(async (odd) => {
    for (let c = odd; c < topics.length; c += 2) {
      const a = await (odd ? direct : directA).chat.completions.create(body(c, t));
      solo[c][t] = { text: a.choices[0].message.content, pt: a.usage.prompt_tokens, ct: a.usage.completion_tokens,
        finish: a.choices[0].finish_reason };
    }
  }));
say(`${3 * topics.length} solo answers`);

const reqs = []; // one per request i: what was asked and what came back
for (let i = 0; i < N; i++) {
  const k = i % 30;
  reqs.push({ i, conv: i >= 60 && i < 64 ? null : `conv-${k}`, c: k % topics.length, t: Math.floor(i / 30) % 3,
    stream: i % 10 === 7 });
}
async function ask(q) {
  const opts = q.conv ? { headers: { "X-Conversation-Id": q.conv } } : {};
  const b = body(q.c, q.t);
  try {
    if (!q.stream) {
      const { data, response } = await lb.chat.completions.create(b, opts).withResponse();
      q.rid = response.headers.get("x-request-id");
      Object.assign(q, { text: data.choices[0].message.content, pt: data.usage.prompt_tokens,
        ct: data.usage.completion_tokens, finish: data.choices[0].finish_reason, ok: true });
    } else {
      const { data, response } = await lb.chat.completions.create({ ...b, stream: true,
        stream_options: { include_usage: true } }, opts).withResponse();
      q.rid = response.headers.get("x-request-id");
      q.text = "";
      for await (const ch of data) {
        if (ch.usage) { q.pt = ch.usage.prompt_tokens; q.ct = ch.usage.completion_tokens; }
        const d = ch.choices[0];
        if (d?.delta?.content) q.text += d.delta.content;
        if (d?.finish_reason) q.finish = d.finish_reason;
      }
      q.ok = q.ct !== undefined && q.finish != null;
      if (!q.ok) q.error = "the stream ended without its usage and finish_reason";
    }
  } catch (e) { // an HTTP error still names its request id (the access log's line)
    q.error = String(e); q.ok = false;
    q.rid ??= e.headers?.get?.("x-request-id") ?? e.headers?.["x-request-id"];
  }
}
async function phase(name, list, onDispatch) {
  const tasks = [];
  let next = 0;
  async function worker() {
    while (next < list.length) {
      const q = list[next++];
      q.phase = name;
      if (onDispatch) { const t = onDispatch(next); if (t) tasks.push(t); }
      await ask(q);
    }
  }
  await Promise.all(Array.from({ length: C }, worker));
  await Promise.all(tasks);
  await logged(list);
}
// nginx writes a request's line after its answer: wait for those of every request that has an id
const logged = (list) => until("the access log has every request", () => {
  const m = readLog();
  return list.every((q) => !q.rid || m.has(q.rid));
}, 5000);
function readLog() { // request id -> [{addr, status}] for every replica tried, in order
  const m = new Map();
  if (!fs.existsSync(`${TMP}/access.log`)) return m;
  for (const l of fs.readFileSync(`${TMP}/access.log`, "utf8").split("\n")) {
    const x = l.match(/"POST \/v1\/chat\/completions HTTP\/1\.1" (\d+) .* rid=(\w+) conv="[^"]*" upstream="([^"]*)" ustatus="([^"]*)"/);
    if (!x) continue;
    const addrs = x[3].split(", "), st = x[4].split(", ");
    m.set(x[2], { status: +x[1], tries: addrs.map((a, j) => ({ addr: a, status: +st[j] })) });
  }
  return m;
}
const tries = (q, log) => log.get(q.rid)?.tries ?? [];
const last = (q, log) => tries(q, log).at(-1)?.addr;

// ---- P0: both up ----
{
  // a stream reaches the client while its replica still generates it: at the first chunk, a replica
  // still runs it (nginx buffering the stream, whose 12 tokens fit one buffer, would hold it to the end)
  const s = await lb.chat.completions.create({ ...body(0, 0), max_tokens: 12, stream: true });
  let first = null, n = 0;
  for await (const ch of s) {
    if (first === null && ch.choices[0]?.delta?.content !== undefined) {
      const [ha, hb] = await Promise.all([health(PA), health(PB)]);
      first = ha.running + hb.running;
    }
    n++;
  }
  check(first >= 1, `P0: the stream's first chunk came after its generation ended (running ${first}; ${n} chunks): nginx buffers streams`);
}
const B0 = await metrics(PB); // B's counters before the load (its solo requests, maybe that stream)
const P0 = reqs.slice(0, 64), P1 = reqs.slice(64, 144), rest = reqs.slice(144);
await phase("P0", P0);
let log = readLog();
{
  const byConv = new Map();
  let single = 0;
  for (const q of P0) {
    const tr = tries(q, log);
    if (tr.length === 1 && tr[0].status === 200) single++;
    const key = q.conv ?? "(no header)";
    if (!byConv.has(key)) byConv.set(key, new Set());
    byConv.get(key).add(last(q, log));
  }
  check(single === P0.length, `P0: ${P0.length - single} of ${P0.length} requests were not answered by the first replica tried`);
  const split = [...byConv].filter(([, s]) => s.size !== 1);
  check(split.length === 0, `P0: conversations served by more than one replica: ${JSON.stringify(split.map(([k, s]) => [k, [...s]]))}`);
  const used = new Set(P0.map((q) => last(q, log)));
  check(used.has(A_ADDR) && used.has(B_ADDR), `P0: the 30 conversations all went to ${[...used]}`);
}
const convOf = new Map(P0.map((q) => [q.conv, last(q, log)])); // conversation id (or null) -> replica
say(`P0: ${P0.length} requests`);
// The order of a phase whose replica `to` is stopped after its first request started: half the
// requests hashed to `to` first (so it runs some when stopped), then the others, then the other half
// (sent after the stop: nginx must move them).
function arrange(list, to) {
  const mine = list.filter((q) => convOf.get(q.conv) === to), others = list.filter((q) => convOf.get(q.conv) !== to);
  const h = Math.ceil(mine.length / 2);
  return [...mine.slice(0, h), ...others, ...mine.slice(h)];
}

// ---- P1: SIGKILL A while it runs requests ----
let runningAtKill = -1;
await phase("P1", arrange(P1, A_ADDR), (k) => k === 1 && (async () => {
  await until("A runs a request", async () => { const h = await health(PA); runningAtKill = h.running + h.queued; return runningAtKill > 0; });
  A.kill("SIGKILL");
  await A.done;
})());
log = readLog();
check(runningAtKill > 0, `P1: A ran nothing when it was killed`);
const movedP1 = P1.filter((q) => tries(q, log).length > 1 && tries(q, log)[0].addr === A_ADDR && last(q, log) === B_ADDR);
check(movedP1.length > 0, `P1: no request was moved from the killed A to B`);
say(`P1: ${P1.length} requests, A killed with ${runningAtKill} in flight, ${movedP1.length} moved to B`);

// ---- P2: A restarted on its port; it loads for LOAD_DELAY s (503), nginx keeps sending to B ----
const tBarrier = Date.now();
A = replica(PA, { MINICPMV_TEST_LOAD_DELAY: String(LOAD_DELAY) });
await until("the restarted A is bound and loading", async () => (await health(PA)).code === 503);
// nginx takes a replica out for fail_timeout (2 s, counted in whole seconds) after a failure: the first
// P2 request is one whose conversation hashes to A, sent once that has passed and while A still loads
await sleep(Math.max(0, 3100 - (Date.now() - tBarrier)));
check((await health(PA)).code === 503, `P2: A finished loading before P2 began (the test's timing)`);
const toA = rest.findIndex((q) => convOf.get(q.conv) === A_ADDR);
if (toA > 0) rest.unshift(rest.splice(toA, 1)[0]);
let p2n = 0, a2ok = 0;
{
  const list = rest.slice(0, 120);
  // P2 runs until A served again (or 120 requests): the rest of the list is P3's
  let stop = false;
  const tasks = [];
  let next = 0;
  async function worker() {
    while (!stop && next < list.length) {
      // until the restarted A has served one, pace the requests (each worker at most ~1.5 a second, 8
      // workers ~12 a second) so that the list outlasts the load delay and then nginx's fail_timeout
      // (2 s, counted in whole seconds: A's last 503 keeps it out of the ring that long after it is
      // ready) however fast the replicas answer: on an idle machine 120 requests took < 2 s and the
      // restarted A never got one; pacing only while A loaded (300 ms) still spent the list before the
      // fail_timeout ended once the CPU decode got faster (2026-12-02, session 6)
      if (a2ok < 1) await sleep(650);
      const q = list[next++];
      q.phase = "P2"; p2n++;
      await ask(q);
    }
  }
  tasks.push((async () => {
    while (!stop && p2n < list.length) {
      a2ok = (await metrics(PA).catch(() => ({}))).ok ?? 0;
      if (a2ok >= 3 && p2n >= 40) stop = true;
      await sleep(50);
    }
  })());
  await Promise.all(Array.from({ length: C }, worker));
  stop = true;
  await Promise.all(tasks);
  await logged(list);
}
log = readLog();
const P2 = rest.slice(0, p2n), P3 = rest.slice(p2n);
const loading503 = P2.filter((q) => tries(q, log).some((t) => t.addr === A_ADDR && t.status === 503));
check(loading503.length > 0, `P2: no request was answered 503 by the loading A`);
check(loading503.every((q) => last(q, log) === B_ADDR), `P2: a request answered 503 by the loading A did not end on B`);
check(P2.some((q) => last(q, log) === A_ADDR), `P2: the restarted A served nothing in ${P2.length} requests`);
say(`P2: ${P2.length} requests, ${loading503.length} answered 503 by the loading A and moved to B`);

// the accounting: a replica process's counters against the attempts the log shows it answered
function expect(proc, phases) {
  const e = { ok: 0, busy: 0, prompt_tokens: 0, generation_tokens: 0 };
  for (const q of reqs) {
    if (!phases.includes(q.phase)) continue;
    const tr = tries(q, log);
    tr.forEach((t, j) => {
      if (t.addr !== proc) return;
      if (t.status === 200) {
        e.ok++;
        if (j === tr.length - 1 && q.ok) { e.prompt_tokens += q.pt; e.generation_tokens += q.ct; }
      } else if (t.status === 503) e.busy++;
    });
  }
  return e;
}
function compare(what, got, want, base = {}) {
  for (const k of Object.keys(want)) {
    const g = (got[k] ?? 0) - (base[k] ?? 0);
    check(g === want[k], `${what}: ${k} ${g} (counters) != ${want[k]} (the access log and the client)`);
  }
  for (const k of ["client_error", "cancelled", "failed"])
    check(((got[k] ?? 0) - (base[k] ?? 0)) === 0, `${what}: ${k} ${got[k]}`);
}
const mB2 = await metrics(PB), mA2 = await metrics(PA);
compare("B /metrics after P2", mB2, expect(B_ADDR, ["P0", "P1", "P2"]), B0);
compare("A (restarted) /metrics after P2", mA2, expect(A_ADDR, ["P2"]));

// ---- P3: SIGTERM B while it runs requests (a drain): it finishes them, the rest go to A ----
let bExit = null, runningAtTerm = -1;
await phase("P3", arrange(P3, B_ADDR), (k) => k === 1 && (async () => {
  await until("B runs a request", async () => { const h = await health(PB); runningAtTerm = h.running + h.queued; return runningAtTerm > 0; });
  B.kill("SIGTERM");
  bExit = await B.done;
})());
log = readLog();
check(bExit && bExit.code === 0, `P3: B exited ${JSON.stringify(bExit)} after SIGTERM: ${B.err}`);
const movedP3 = P3.filter((q) => tries(q, log).length > 1 && tries(q, log)[0].addr === B_ADDR && last(q, log) === A_ADDR);
check(movedP3.length > 0, `P3: no request was moved from the draining B to A`);
say(`P3: ${P3.length} requests, B drained with ${runningAtTerm} in flight, ${movedP3.length} moved to A`);
// B's closing summary (its counters after the drain; the solo requests included)
const sm = B.err.match(/(\d+) requests: (\d+) ok, (\d+) refused, (\d+) busy, (\d+) cancelled, (\d+) failed/);
const eB = expect(B_ADDR, ["P0", "P1", "P2", "P3"]);
check(sm && +sm[2] - B0.ok === eB.ok && +sm[4] === eB.busy && +sm[3] === 0 && +sm[5] === 0 && +sm[6] === 0,
  `B's summary '${sm && sm[0]}' != ${eB.ok} ok (+${B0.ok} solo), ${eB.busy} busy`);
compare("A (restarted) /metrics after P3", await metrics(PA), expect(A_ADDR, ["P2", "P3"]));

// ---- every answer ----
let bad = 0, failedStreams = 0;
for (const q of reqs) {
  const w = solo[q.c][q.t];
  const good = q.ok && q.text === w.text && q.ct === w.ct && q.pt === w.pt && q.finish === w.finish;
  if (q.stream && !q.ok && q.phase === "P1" && last(q, log) === A_ADDR) { failedStreams++; continue; } // cut by the SIGKILL
  if (!good && bad++ < 5) console.error(`request ${q.i} (${q.phase}, ${q.stream ? "stream" : "plain"}): ${JSON.stringify({ text: q.text, ct: q.ct, error: q.error })} != solo ${JSON.stringify(w)}`);
}
check(bad === 0, `${bad} of ${N} answers failed or differ from their solo answers`);
check(reqs.every((q) => q.phase), `not every request was sent`);
// the answers the replicas served add up to what the client got: B and the restarted A by their own
// counters, the killed A by the log (its counters died with it)
const servedA1 = reqs.filter((q) => (q.phase === "P0" || q.phase === "P1") && q.ok && last(q, log) === A_ADDR).length;
const okA2 = (await metrics(PA)).ok;
const okClient = reqs.filter((q) => q.ok).length;
check(+sm?.[2] - B0.ok + okA2 + servedA1 === okClient,
  `served: B ${+sm?.[2] - B0.ok} + A ${okA2} + killed A ${servedA1} != ${okClient} answers the client got`);
say(`${N} requests: ${okClient} answered (${failedStreams} streams cut by the SIGKILL); B ${+sm?.[2] - B0.ok}, killed A ${servedA1}, restarted A ${okA2}`);
A.kill("SIGTERM");
const aExit = await A.done;
check(aExit.code === 0, `A exited ${JSON.stringify(aExit)}`);
nginx.kill("SIGQUIT");
await nginx.done;
end();
