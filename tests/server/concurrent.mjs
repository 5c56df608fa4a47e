// concurrent.mjs: many requests at once against `minicpmv serve --parallel N` with the official OpenAI JS
// client; each answer must equal the same request's answer from a second server that runs one request at
// a time (--parallel 1: the turn alone, no batching). Greedy and sampled (seeded) requests, streamed and
// not, prompts of different lengths.
// Usage: node concurrent.mjs SOLO_URL PARALLEL_URL N_REQUESTS CONCURRENCY
// Prints "concurrent.mjs: N passed, M failed" and exits non-zero on any failure.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE).default ?? require(process.env.OPENAI_MODULE);

const [soloUrl, parUrl, nReq, conc] = process.argv.slice(2);
const N = +nReq, C = +conc;
const mk = (u) => new OpenAI({ baseURL: u + "/v1", apiKey: "unused", maxRetries: 0, timeout: 600000 });
const solo = mk(soloUrl), par = mk(parUrl);
let pass = 0, fail = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };
const words = ["Hello there", "What is in the image?", "Tell me a story about a cat", "One two three four five", "Why?"];

function request(i) {
  const content = Array.from({ length: 1 + (i % 4) }, (_, k) => words[(i + k) % words.length]).join(" ");
  const r = { model: "m", messages: [{ role: "user", content }], max_tokens: 4 + (i % 13) };
  if (i % 2) r.temperature = 0; else { r.temperature = 0.9; r.seed = 1000 + i; }
  return r;
}

async function ask(client, i, stream) {
  const r = request(i);
  if (!stream) {
    const a = await client.chat.completions.create(r);
    return { text: a.choices[0].message.content, n: a.usage.completion_tokens, finish: a.choices[0].finish_reason };
  }
  const s = await client.chat.completions.create({ ...r, stream: true, stream_options: { include_usage: true } });
  let text = "", n = -1, finish = null;
  for await (const c of s) {
    if (c.usage) n = c.usage.completion_tokens;
    const ch = c.choices[0];
    if (ch?.delta?.content) text += ch.delta.content;
    if (ch?.finish_reason) finish = ch.finish_reason;
  }
  return { text, n, finish };
}

const want = [];
for (let i = 0; i < N; i++) want.push(await ask(solo, i, false)); // one at a time
const got = new Array(N);
let next = 0;
const t0 = Date.now();
async function worker() {
  while (next < N) {
    const i = next++;
    try { got[i] = await ask(par, i, i % 3 === 0); } catch (e) { got[i] = { error: String(e) }; }
  }
}
await Promise.all(Array.from({ length: C }, worker));
const secs = (Date.now() - t0) / 1000;
for (let i = 0; i < N; i++) {
  const g = got[i], w = want[i];
  check(g && !g.error && g.text === w.text && g.n === w.n && g.finish === w.finish,
    `request ${i}: ${JSON.stringify(g)} != solo ${JSON.stringify(w)}`);
}
console.error(`concurrent.mjs: ${N} requests at concurrency ${C} in ${secs.toFixed(1)} s`);
console.log(`concurrent.mjs: ${pass} passed, ${fail} failed`);
process.exit(fail ? 1 : 0);
