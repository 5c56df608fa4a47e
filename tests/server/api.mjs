// api.mjs: issue 17's API shapes through the official OpenAI JS client (installed by setup.sh):
// response_format json_object / json_schema (answers parse and validate, streamed and not, several
// seeds: the tiny model's unconstrained output is noise), logprobs / top_logprobs (shape and
// consistency), n > 1 (choice i == the n = 1 request with seed + i, streamed and not), /v1/completions
// through client.completions (streamed == not streamed, the legacy logprobs shape against the text),
// the refusals (tools, n over 16, max_tokens vs max_completion_tokens, echo), and GET /metrics (every
// line HELP / TYPE / sample; requests_total grows by exactly the requests sent here).
// Usage: node api.mjs BASE_URL. Prints "api.mjs: N passed, M failed" and exits non-zero on any failure.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE).default ?? require(process.env.OPENAI_MODULE);

const [base] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 120000 });
let pass = 0, fail = 0, sent = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };

async function metrics() {
  const r = await fetch(base + "/metrics");
  const text = await r.text();
  let bad = 0, declared = null;
  const m = {};
  for (const line of text.split("\n")) {
    if (line === "") continue;
    let g;
    if ((g = /^# HELP ([a-z_:][a-z0-9_:]*) .+$/.exec(line))) declared = g[1];
    else if ((g = /^# TYPE ([a-z_:][a-z0-9_:]*) (counter|gauge|histogram)$/.exec(line))) bad += g[1] !== declared;
    else if ((g = /^([a-z_:][a-z0-9_:]*)(\{[^}]*\})? (\S+)$/.exec(line)) && declared && g[1].startsWith(declared) &&
             !Number.isNaN(Number(g[3]))) m[g[1] + (g[2] ?? "")] = Number(g[3]);
    else { bad++; console.error("bad metrics line: " + line); }
  }
  check(r.status === 200 && r.headers.get("content-type").startsWith("text/plain") && bad === 0, "metrics format");
  return m;
}
const total = (m) => ["ok", "client_error", "busy", "cancelled", "failed"]
  .reduce((a, s) => a + (m[`minicpmv_requests_total{status="${s}"}`] ?? NaN), 0);

const before = await metrics();
const msgs = [{ role: "user", content: "Answer in JSON: who are you?" }];

async function answer(params, stream) {
  sent++;
  if (!stream) {
    const r = await client.chat.completions.create(params);
    return { text: r.choices[0].message.content, finish: r.choices[0].finish_reason, lp: r.choices[0].logprobs };
  }
  const s = await client.chat.completions.create({ ...params, stream: true });
  let text = "", finish = null, lp = [];
  for await (const chunk of s) {
    const c = chunk.choices[0];
    if (c?.delta?.content) text += c.delta.content;
    if (c?.finish_reason) finish = c.finish_reason;
    if (c?.logprobs?.content) lp.push(...c.logprobs.content);
  }
  return { text, finish, lp: { content: lp } };
}

const schema = {
  type: "object", additionalProperties: false, required: ["name", "age"],
  properties: { name: { type: "string" }, age: { type: "integer" },
                tags: { type: "array", items: { type: "string" }, maxItems: 3 }, kind: { enum: ["cat", "dog", null] } } };
const validPerson = (o) => o !== null && typeof o === "object" && !Array.isArray(o) &&
  Object.keys(o).every((k) => ["name", "age", "tags", "kind"].includes(k)) &&
  typeof o.name === "string" && Number.isInteger(o.age) &&
  (o.tags === undefined || (Array.isArray(o.tags) && o.tags.length <= 3 && o.tags.every((t) => typeof t === "string"))) &&
  (o.kind === undefined || o.kind === null || o.kind === "cat" || o.kind === "dog");
const parse = (t) => { try { return JSON.parse(t); } catch { return undefined; } };

for (const seed of [1, 2, 3]) for (const stream of [false, true]) {
  const o = await answer({ model: "m", messages: msgs, temperature: 1, seed, max_tokens: 40,
                           response_format: { type: "json_object" } }, stream);
  const v = parse(o.text);
  check(v !== undefined && typeof v === "object" && !Array.isArray(v) && v !== null,
        `json_object seed ${seed} stream ${stream}: ${JSON.stringify(o.text)}`);
  const p = await answer({ model: "m", messages: msgs, temperature: 1, seed, max_tokens: 48,
                           response_format: { type: "json_schema", json_schema: { name: "person", strict: true, schema } } },
                         stream);
  check(validPerson(parse(p.text)), `json_schema seed ${seed} stream ${stream}: ${JSON.stringify(p.text)}`);
}

// logprobs: greedy, so the chosen token is the top-1; streamed entries equal the non-streamed ones
const a = await answer({ model: "m", messages: msgs, temperature: 0, max_tokens: 10, logprobs: true, top_logprobs: 4 }, false);
const b = await answer({ model: "m", messages: msgs, temperature: 0, max_tokens: 10, logprobs: true, top_logprobs: 4 }, true);
check(a.lp.content.length === 10 && b.lp.content.length === 10, "logprobs: one entry per token");
check(JSON.stringify(a.lp.content) === JSON.stringify(b.lp.content), "logprobs: streamed == not streamed");
for (const e of a.lp.content) {
  check(typeof e.token === "string" && Array.isArray(e.bytes) && e.logprob <= 0 && e.top_logprobs.length === 4 &&
        e.top_logprobs[0].token === e.token && e.top_logprobs[0].logprob === e.logprob &&
        e.top_logprobs.reduce((s, t) => s + Math.exp(t.logprob), 0) <= 1 + 1e-9, `logprobs entry ${JSON.stringify(e)}`);
}

async function expectError(params, status, needle, what) {
  sent++;
  try { await client.chat.completions.create(params); check(false, what + ": no error"); }
  catch (e) { check(e.status === status && String(e.error?.message).includes(needle), `${what}: ${e.status} ${e.message}`); }
}
await expectError({ model: "m", messages: msgs, tools: [{ type: "function", function: { name: "f", parameters: {} } }] },
                  400, "not trained", "tools refused");
await expectError({ model: "m", messages: msgs, n: 17 }, 400, "'n' = 17 is outside 1..16", "n > 16 refused");
await expectError({ model: "m", messages: msgs, max_tokens: 5, max_completion_tokens: 6 }, 400, "differ", "max tokens conflict");
await expectError({ model: "m", messages: msgs, response_format: { type: "json_schema", json_schema: { name: "x",
                    schema: { type: "string", format: "email" } } } }, 400, "'format'", "schema keyword refused");
sent++;
try { await client.completions.create({ model: "m", prompt: "x", echo: true }); check(false, "echo: no error"); }
catch (e) { check(e.status === 400 && e.error?.param === "echo", `echo refused: ${e.status} ${e.message}`); }

// n > 1: choice i is the n = 1 request with seed + i (chat, streamed and not)
const solo = [];
for (let i = 0; i < 3; i++)
  solo.push(await answer({ model: "m", messages: msgs, temperature: 1, seed: 70 + i, max_tokens: 6 }, false));
check(new Set(solo.map((x) => x.text)).size > 1, "n: the seeds give different answers (else the check below sees nothing)");
sent++;
const many = await client.chat.completions.create({ model: "m", messages: msgs, temperature: 1, seed: 70, max_tokens: 6, n: 3 });
check(many.choices.length === 3 && many.choices.every((c, i) => c.index === i && c.message.content === solo[i].text),
      `n=3: ${JSON.stringify(many.choices.map((c) => c.message.content))} != ${JSON.stringify(solo.map((x) => x.text))}`);
sent++;
const ms = await client.chat.completions.create({ model: "m", messages: msgs, temperature: 1, seed: 70, max_tokens: 6, n: 3,
                                                  stream: true });
const texts = ["", "", ""], fins = [null, null, null];
for await (const chunk of ms) for (const c of chunk.choices) {
  texts[c.index] += c.delta?.content ?? "";
  if (c.finish_reason) fins[c.index] = c.finish_reason;
}
check(texts.every((t, i) => t === solo[i].text) && fins.every((f, i) => f === solo[i].finish), `n=3 streamed: ${JSON.stringify(texts)}`);

// /v1/completions through client.completions: greedy, the legacy logprobs, streamed == not streamed
sent++;
const cp = await client.completions.create({ model: "m", prompt: "Once upon a time", temperature: 0, max_tokens: 8, logprobs: 2 });
const c0 = cp.choices[0];
check(cp.object === "text_completion" && typeof c0.text === "string" && c0.index === 0, "completions shape");
const L = c0.logprobs;
check(L && L.tokens.length === cp.usage.completion_tokens && L.token_logprobs.length === L.tokens.length &&
      L.top_logprobs.length === L.tokens.length && L.text_offset.length === L.tokens.length, "completions logprobs lengths");
let off = 0, offOk = true;
for (let i = 0; L && i < L.tokens.length; i++) {
  offOk &&= L.text_offset[i] === off && L.top_logprobs[i][L.tokens[i]] === L.token_logprobs[i] &&
            Object.keys(L.top_logprobs[i]).length <= 3 && L.token_logprobs[i] <= 0;
  off += [...L.tokens[i]].length;
}
check(offOk, `completions text_offset / top_logprobs: ${JSON.stringify(L)}`);
if (c0.finish_reason === "length" && !L.tokens.some((t) => t.includes("\\x"))) check(L.tokens.join("") === c0.text, `completions tokens join to the text: ${JSON.stringify(L.tokens)}`);
sent++;
const cs = await client.completions.create({ model: "m", prompt: "Once upon a time", temperature: 0, max_tokens: 8, logprobs: 2,
                                             stream: true });
let ctext = "", cfin = null, ctoks = [];
for await (const chunk of cs) {
  const c = chunk.choices[0];
  if (!c) continue;
  ctext += c.text;
  if (c.finish_reason) cfin = c.finish_reason;
  if (c.logprobs) ctoks.push(...c.logprobs.tokens);
}
check(ctext === c0.text && cfin === c0.finish_reason && JSON.stringify(ctoks) === JSON.stringify(L.tokens),
      `completions streamed ${JSON.stringify(ctext)} != ${JSON.stringify(c0.text)}`);

sent++;
const alias = await client.chat.completions.create({ model: "m", messages: msgs, temperature: 0, max_completion_tokens: 3 });
check(alias.usage.completion_tokens <= 3, "max_completion_tokens");

const after = await metrics();
check(total(after) - total(before) === sent, `metrics: requests_total grew by ${total(after) - total(before)}, sent ${sent}`);
check(after['minicpmv_requests_total{status="client_error"}'] - before['minicpmv_requests_total{status="client_error"}'] === 5,
      "metrics: client errors");
check(after["minicpmv_request_duration_seconds_count"] === after['minicpmv_requests_total{status="ok"}'], "metrics: histogram count");

console.log(`api.mjs: ${pass} passed, ${fail} failed`);
process.exit(fail ? 1 : 0);
