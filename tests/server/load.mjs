// load.mjs: issue 14's load test with the official OpenAI JS client against `minicpmv serve --parallel N`
// on the tiny model (tests/server/run.sh starts it and checks its exit status):
//   1. the solo answers: each distinct request (P prompts: chat and completions, greedy, a few tokens)
//      alone, one after another;
//   2. the load: N requests at concurrency C (request k is distinct request k % P, streamed or not):
//      zero failures (maxRetries 0), each answer equal to its solo answer (text, finish_reason, tokens),
//      with the server's prefix reuse on (its /metrics prefix hits grow: repeated prompts map cached
//      blocks) and many requests running at once (the largest /health "running" seen is printed);
//   3. the server's RSS (/proc/PID/status VmRSS) when idle after the first N - 400 requests and after the
//      last 400 (of 512; fewer when N is smaller): it may not grow by more than RSS_BOUND_KIB; when it
//      did, 400 more requests run and their window is checked as well: a leak grows every window, while
//      the allocator's one-off steps (a new arena, a page pinned by a live block) do not recur, so the
//      check fails only when two windows in a row grew by more than the bound;
//   4. SIGTERM with requests in flight (half streamed): new connections are refused while they are still
//      running, every in-flight request completes (non-streamed: 200 with its whole answer; streamed: a
//      finish_reason and the end of the stream). run.sh then checks the exit status 0.
// Usage: node load.mjs BASE_URL SERVER_PID [N 512] [C 64] [P 32]
// Prints "load.mjs: N passed, M failed" and exits non-zero on any failure.
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE).default ?? require(process.env.OPENAI_MODULE);

const [base, pidArg, nArg, cArg, pArg] = process.argv.slice(2);
const PID = +pidArg, N = +(nArg ?? 512), C = +(cArg ?? 64), P = +(pArg ?? 32);
// idle-to-idle growth allowed over the last 400 requests (docs/SERVER.md: 0.3-5.2 MiB seen);
// LOAD_RSS_BOUND_KIB overrides it (to exercise the second window by hand)
const RSS_BOUND_KIB = +(process.env.LOAD_RSS_BOUND_KIB ?? 4096);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120000 });
let pass = 0, fail = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };
const words = ["Hello there", "Tell me a story", "One two three", "Why is the sky blue", "Describe a cat",
               "What is 2+2", "Name a color", "Once upon a time"];

// distinct request i: even i chat (behind one system prompt: its first KV blocks are shared by every chat
// request, and a repeated request reuses its whole prompt but the last block), odd i completions; 1..4
// tokens (the tiny model's cost is its 128k-row lm_head: each generated token reads it once); greedy
const system = "You are a helpful assistant. Answer briefly and plainly, in one short sentence.";
function distinct(i) {
  const text = words[i % words.length] + " " + "abcdefghijklmnopqrstuvwxyz"[i % 26] + i;
  const common = { model: "m", temperature: 0, max_tokens: 1 + (i % 4) };
  return i % 2 === 0 ? { chat: true, p: { ...common, messages: [{ role: "system", content: system },
                                                                   { role: "user", content: text }] } }
                     : { chat: false, p: { ...common, prompt: text } };
}

async function ask(d, stream, extra = {}) {
  const api = d.chat ? client.chat.completions : client.completions;
  const p = { ...d.p, ...extra };
  if (!stream) {
    const a = await api.create(p);
    const c = a.choices[0];
    return { text: d.chat ? c.message.content : c.text, finish: c.finish_reason, n: a.usage.completion_tokens };
  }
  const s = await api.create({ ...p, stream: true, stream_options: { include_usage: true } });
  let text = "", finish = null, n = -1;
  for await (const chunk of s) {
    if (chunk.usage) n = chunk.usage.completion_tokens;
    const c = chunk.choices[0];
    if (!c) continue;
    text += (d.chat ? c.delta?.content : c.text) ?? "";
    if (c.finish_reason) finish = c.finish_reason;
  }
  return { text, finish, n };
}

const rssKiB = () => +/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${PID}/status`, "utf8"))[1];
const threads = () => +/Threads:\s+(\d+)/.exec(readFileSync(`/proc/${PID}/status`, "utf8"))[1];
// the server's CPU seconds so far (utime + stime, /proc/PID/stat; clock ticks of 100 Hz): the load's cost
// independent of how busy the machine is
const cpuSecs = () => {
  const f = readFileSync(`/proc/${PID}/stat`, "utf8").split(") ")[1].split(" ");
  return (+f[11] + +f[12]) / 100;
};

// 1. solo answers
const t0 = Date.now();
const solo = [];
for (let i = 0; i < P; i++) solo.push(await ask(distinct(i), false));
const tSolo = (Date.now() - t0) / 1000;

// 2. the load in two rounds at concurrency C: the first N - 400 requests (the warm-up: every connection,
// slot and buffer has been used once), then the last 400. 3. The server's RSS once it is idle after each
// round (the worker returns free arena memory to the system when nothing runs: malloc_trim) must not
// grow by more than RSS_BOUND_KIB: a leak of 5 KB per request would add 2 MB over 400. The RSS while
// loaded is sampled too (printed: it swings with the ~1.6 MB of buffers each turn in flight holds).
const cpu0 = cpuSecs();
let next = 0, done = 0, failures = 0, wrong = 0, loadedMax = 0, runningMax = 0;
const rssTrace = []; // RSS (MiB) / server threads every 64 requests, printed
async function round(count) {
  const end = next + count;
  async function worker() {
    while (next < end) {
      const k = next++;
      const i = k % P;
      let got;
      try { got = await ask(distinct(i), k % 3 === 0); } catch (e) { got = { error: String(e) }; }
      if (got.error) { failures++; if (failures <= 5) console.error(`request ${k}: ${got.error}`); }
      else if (got.text !== solo[i].text || got.finish !== solo[i].finish || got.n !== solo[i].n) {
        wrong++;
        if (wrong <= 5) console.error(`request ${k} (distinct ${i}): ${JSON.stringify(got)} != solo ${JSON.stringify(solo[i])}`);
      }
      done++;
      loadedMax = Math.max(loadedMax, rssKiB());
      if (done % 64 === 0) rssTrace.push(`${(rssKiB() / 1024).toFixed(1)}/${threads()}`);
      if (done % 8 === 0) runningMax = Math.max(runningMax, (await (await fetch(base + "/health")).json()).running);
    }
  }
  await Promise.all(Array.from({ length: C }, worker));
}
async function idleRss() { // once /health says nothing runs, and the trim after the last job had time
  for (let i = 0; i < 500; i++) {
    const h = await (await fetch(base + "/health")).json();
    if (h.running === 0 && h.queued === 0) break;
    await new Promise((r) => setTimeout(r, 10));
  }
  await new Promise((r) => setTimeout(r, 300));
  idleThreads.push(threads());
  return rssKiB();
}
const idleThreads = [];
const last = Math.min(400, N - Math.min(112, Math.floor(N / 4))); // 400 of 512
const prefixHits = async () =>
  +/^minicpmv_kv_prefix_hit_blocks_total (\S+)$/m.exec(await (await fetch(base + "/metrics")).text())[1];
const hits0 = await prefixHits();
const t1 = Date.now();
await round(N - last);
const rssA = await idleRss();
loadedMax = 0;
await round(last);
const tLoad = (Date.now() - t1) / 1000, cpuLoad = cpuSecs() - cpu0;
const rssB = await idleRss();
const rssCheck = process.env.LOAD_RSS_CHECK !== "0";
// over the bound: one more window of the same size (see 3. above); the check takes the smaller growth
let grew = [rssB - rssA];
if (rssCheck && grew[0] > RSS_BOUND_KIB) {
  console.error(`load.mjs: RSS grew by ${grew[0]} KiB over the last ${last} requests (bound ${RSS_BOUND_KIB} KiB): ` +
                `${last} more requests to tell a leak from a one-off step`);
  await round(last);
  grew.push((await idleRss()) - rssB);
}
const total = next;
const hits = (await prefixHits()) - hits0;
check(failures === 0, `${failures} of ${total} requests failed`);
check(hits > 0, `the load reused no cached prompt block (minicpmv_kv_prefix_hit_blocks_total grew by ${hits})`);
check(wrong === 0, `${wrong} of ${total} answers differ from their solo answers`);
if (!rssCheck) console.error(`load.mjs: RSS bound not checked (sanitizer build): grew by ${rssB - rssA} KiB over the last ${last} requests`);
else check(Math.min(...grew) <= RSS_BOUND_KIB, `RSS grew by ${grew.join(" and then ")} KiB over two windows of ${last} requests ` +
                                              `(bound ${RSS_BOUND_KIB} KiB in either)`);
console.error(`load.mjs: ${P} solo answers in ${tSolo.toFixed(1)} s; ${N} requests at concurrency ${C} in ${tLoad.toFixed(1)} s ` +
              `(${(N / tLoad).toFixed(1)} req/s; the server used ${cpuLoad.toFixed(1)} CPU s), ${failures} failed, ${wrong} wrong; ` +
              `${hits} prompt blocks reused, up to ${runningMax} requests running at once; ` +
              `idle RSS ${rssA} KiB after request ${N - last}, ${rssB} KiB after request ${N} (growth ${grew.join(", then ")} KiB, ` +
              `bound ${RSS_BOUND_KIB}; server threads ${idleThreads.join(", ")}); loaded RSS up to ${loadedMax} KiB in the last ${last}; every 64 requests (MiB/threads): ` +
              `${rssTrace.join(" ")}`);

// 4. SIGTERM with requests in flight
const port = +new URL(base).port;
const refused = () => new Promise((resolve) => {
  const s = connect(port, "127.0.0.1");
  s.on("connect", () => { s.destroy(); resolve(false); });
  s.on("error", (e) => resolve(e.code === "ECONNREFUSED"));
});
check(!(await refused()), "the server refuses connections before SIGTERM");
const inflight = [];
let finished = 0;
for (let k = 0; k < 16; k++) {
  const d = distinct(k);
  inflight.push(ask(d, k % 2 === 0, { max_tokens: 96 }).then((r) => { finished++; return r; },
                                                             (e) => { finished++; return { error: String(e) }; }));
}
for (let i = 0; i < 400; i++) { // until they run (each /health is a new connection: fine before SIGTERM)
  const h = await (await fetch(base + "/health")).json();
  if (h.running >= 8) break;
  await new Promise((r) => setTimeout(r, 10));
}
process.kill(PID, "SIGTERM");
let refusedWhileBusy = false;
for (let i = 0; i < 300 && !refusedWhileBusy; i++) {
  if (await refused()) refusedWhileBusy = finished < inflight.length;
  else await new Promise((r) => setTimeout(r, 10));
  if (finished === inflight.length) break;
}
check(refusedWhileBusy, `new connections refused while requests were in flight (${finished} of ${inflight.length} had finished)`);
const ended = await Promise.all(inflight);
const badLast = ended.filter((r) => r.error || !r.finish || !(r.n > 0) || typeof r.text !== "string");
check(badLast.length === 0, `in-flight requests at SIGTERM: ${badLast.length} did not complete: ${JSON.stringify(badLast.slice(0, 3))}`);
console.error(`load.mjs: SIGTERM with ${inflight.length} requests in flight: ${inflight.length - badLast.length} completed ` +
              `(finish ${[...new Set(ended.map((r) => r.finish))].join("/")}), new connections refused: ${refusedWhileBusy}`);
console.log(`load.mjs: ${pass} passed, ${fail} failed`);
process.exit(fail ? 1 : 0);
