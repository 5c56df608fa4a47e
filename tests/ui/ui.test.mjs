// ui.test.mjs: drives the chat page of `minicpmv serve` (src/ui/index.html) in headless chromium through
// puppeteer-core (tests/server/setup.sh installs it; it downloads no browser), against the tiny model.
// Usage: node ui.test.mjs BIN MODEL OUTDIR. Env: PUPPETEER_MODULE (the puppeteer-core folder), CHROMIUM
// (default /usr/bin/chromium). Starts its own server: API key on, a load delay (so the page meets the
// 503 "loading" state), --max-body 1MiB and --max-image-pixels 100000 (the error paths). Expected
// answers come from the API itself (a request written here, not taken from the page), never from the
// page. Writes OUTDIR/screenshot.png (desktop) and OUTDIR/phone.png. Prints "ui.test.mjs: N passed,
// M failed" and exits non-zero on any failure.
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const puppeteer = require(process.env.PUPPETEER_MODULE);

const [BIN, MODEL, OUT] = process.argv.slice(2);
const KEY = "ui-test-key-1234";
const IMG = "tests/fixtures/image/gen200x150_q90_444.jpg";     // 30000 pixels: accepted
const IMG_BIG = "tests/fixtures/image/gen640x480_q90.jpg";      // 307200 pixels: over --max-image-pixels
const LOAD_DELAY = 8;                                           // seconds the server waits before loading
let pass = 0, fail = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };
const t0 = Date.now();
const log = (m) => console.error(`ui.test.mjs: ${((Date.now() - t0) / 1000).toFixed(1)} s ${m}`);
mkdirSync(OUT, { recursive: true });

// the browser first: it is the slow part, and the server's load delay runs from the server's start
const browser = await puppeteer.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"],
});
let server = null;
const finish = async (code) => {
  await browser.close().catch(() => {});
  if (server && server.exitCode === null) {
    server.kill("SIGTERM");
    await new Promise((r) => { server.once("exit", r); setTimeout(r, 15000); });
    // 0 after the drain (under ASan/LSan a leak or a fault would show here)
    check(server.exitCode === 0, `the server exits 0 on SIGTERM (got ${server.exitCode}); its stderr: ${serr.slice(-2000)}`);
  }
  console.log(`ui.test.mjs: ${pass} passed, ${fail} failed`);
  process.exit(code ?? (fail ? 1 : 0));
};

server = spawn(BIN, ["serve", "--model", MODEL, "--port", "0", "--quiet", "--ctx", "1024", "--drain-timeout", "0",
  "--max-body", "1MiB", "--max-image-pixels", "100000"],
  { env: { ...process.env, MINICPMV_API_KEY: KEY, MINICPMV_TEST_LOAD_DELAY: String(LOAD_DELAY) }, stdio: ["ignore", "pipe", "pipe"] });
let serr = "";
server.stdout.on("data", () => {});
const U = await new Promise((resolve) => {
  server.stderr.on("data", (d) => {
    serr += d;
    const m = serr.match(/bound to (http:\/\/127\.0\.0\.1:\d+);/);
    if (m) resolve(m[1]);
  });
  server.on("exit", () => resolve(null));
  setTimeout(() => resolve(null), 30000);
});
process.on("SIGTERM", () => { server.kill("SIGKILL"); process.exit(1); }); // run.sh's timeout: leave no server behind
if (!U) { fail++; console.error("FAIL the server did not start: " + serr); await finish(1); }
log(`server bound at ${U}`);

try { // every way out goes through finish(): the browser and the server are stopped
// ---- the page over plain HTTP: headers, bytes, CSP hashes computed here from the source file ----
const src = readFileSync("src/ui/index.html");
const srcText = src.toString("utf8");
const b64hash = (s) => createHash("sha256").update(s, "utf8").digest("base64");
const block = (tag) => { const m = srcText.match(new RegExp(`^<${tag}>([\\s\\S]*?)^</${tag}>`, "m")); return m ? m[1] : null; };
{
  const r = await fetch(U + "/");
  const body = Buffer.from(await r.arrayBuffer());
  const csp = r.headers.get("content-security-policy") || "";
  check(r.status === 200, `GET / without the API key: ${r.status} (the page is open; the API is not)`);
  check(r.headers.get("content-type") === "text/html; charset=utf-8", `GET / content type: ${r.headers.get("content-type")}`);
  check(body.equals(src), "GET / answers src/ui/index.html byte for byte");
  check(block("script") && csp.includes(`script-src 'sha256-${b64hash(block("script"))}'`), `CSP allows the page's script by its hash: ${csp}`);
  check(block("style") && csp.includes(`style-src 'sha256-${b64hash(block("style"))}'`), "CSP allows the page's style by its hash");
  check(/^default-src 'none';/.test(csp) && csp.includes("connect-src 'self'") && !/https?:|\*/.test(csp) && !csp.includes("unsafe"),
    `CSP: nothing but this server and the two hashes: ${csp}`);
  check(r.headers.get("x-content-type-options") === "nosniff", "nosniff");
  const r2 = await fetch(U + "/index.html");
  check(r2.status === 200 && Buffer.from(await r2.arrayBuffer()).equals(src), "GET /index.html is the page");
  const r3 = await fetch(U + "/v1/models");
  check(r3.status === 401, `GET /v1/models without the key: ${r3.status}`);
}

// ---- the browser ----
const page = await browser.newPage();
await page.setViewport({ width: 1000, height: 760 });
const problems = [], chats = [], foreign = [];
await page.evaluateOnNewDocument(() => {
  window.__csp = [];
  document.addEventListener("securitypolicyviolation", (e) => window.__csp.push(e.violatedDirective + " " + e.blockedURI));
});
page.on("pageerror", (e) => problems.push("page error: " + e.message));
page.on("console", (m) => { if (m.type() === "error" && !/status of 4\d\d|status of 503/.test(m.text())) problems.push("console: " + m.text()); });
page.on("request", (r) => {
  if (!r.url().startsWith(U + "/") && !r.url().startsWith("data:")) foreign.push(r.url());
  if (r.url() === U + "/v1/chat/completions" && r.method() === "POST") chats.push(r);
});
const body = async (r) => JSON.parse(r.postData() ?? await r.fetchPostData());
const text = (sel) => page.$eval(sel, (el) => el.textContent);
const visible = (sel) => page.$eval(sel, (el) => !el.hidden);
const wait = (fn, what, ms = 60000, ...args) =>
  page.waitForFunction(fn, { timeout: ms, polling: 50 }, ...args).then(() => true, () => { console.error(`(timed out waiting: ${what})`); return false; });
const health = async () => (await (await fetch(U + "/health")).json()).status;
const api = async (req) => { // the same request to the API, not streamed: the expected answer
  const r = await fetch(U + "/v1/chat/completions", { method: "POST", body: JSON.stringify(req),
    headers: { "Content-Type": "application/json", Authorization: "Bearer " + KEY } });
  const j = await r.json();
  if (r.status !== 200) throw new Error("API answered " + r.status + ": " + JSON.stringify(j));
  return j;
};

await page.goto(U + "/", { waitUntil: "domcontentloaded" });
log("page open");
// no key yet: the page asks for it
check(await wait(() => !document.getElementById("keybox").hidden, "the key box"), "without a key the page shows the API key box");
check(/401/.test(await text("#error")), `the 401 is explained: ${await text("#error")}`);
await page.type("#key", "wrong-key-0000");
await page.keyboard.press("Enter");
check(await wait(() => /incorrect API key/.test(document.getElementById("error").textContent), "incorrect key", 10000),
  `a wrong key: the server's message is shown: ${await text("#error")}`);
await page.$eval("#key", (el) => { el.value = ""; });
await page.type("#key", KEY);
await page.keyboard.press("Enter");
check(await page.evaluate(() => sessionStorage.getItem("minicpmv-api-key")) === KEY, "the key is kept in sessionStorage");
check(await wait(() => /loading/.test(document.getElementById("status").textContent), "loading status", 10000),
  `while the model loads the status says so: ${await text("#status")}`);

// 503 while loading: the question and the image come back to the composer
const file = await page.$("#file");
await file.uploadFile(IMG);
await wait(() => document.querySelectorAll("#pending img").length === 1, "the picked image", 5000);
await page.type("#question", "What");
const h0 = await health();
await page.keyboard.press("Enter");
check(await wait(() => /^503/.test(document.getElementById("error").textContent), "the 503", 10000),
  `503 while loading (server: ${h0}): ${await text("#error")}`);
check(/still loading/.test(await text("#error")) && /Retry in 1 s/.test(await text("#error")),
  `the 503 shows the server's message and its Retry-After: ${await text("#error")}`);
check(await page.$eval("#question", (el) => el.value) === "What" && (await page.$$("#pending img")).length === 1
  && (await page.$$("#log .msg")).length === 0, "a refused question and its image go back to the composer");
log("503 seen; waiting for the model");

check(await wait(() => document.getElementById("status").textContent === "ready", "ready"), "the page sees the model loaded");
check(await text("#model") === "minicpm-llama3-v-2_5", `the model's name: ${await text("#model")}`);
log("model loaded");
// settings: greedy, 8 tokens
await page.click("#toggle-settings");
check(await visible("#settings"), "Settings opens the settings");
await page.click("#temperature", { clickCount: 3 }); await page.type("#temperature", "0");
await page.click("#max_tokens", { clickCount: 3 }); await page.type("#max_tokens", "8");
await page.click("#toggle-settings");

// the first question, streamed: every update of the answer is recorded
await page.evaluate(() => {
  window.__updates = [];
  new MutationObserver(() => {
    const a = [...document.querySelectorAll("#log .msg.assistant .text")].pop();
    if (a && window.__updates[window.__updates.length - 1] !== a.textContent) window.__updates.push(a.textContent);
  }).observe(document.getElementById("log"), { childList: true, subtree: true, characterData: true });
});
await page.focus("#question");
const nChats = chats.length;
await page.keyboard.press("Enter");
const answered = (n) => wait((k) => document.querySelectorAll("#log .msg.assistant .meta").length === k
  && !document.getElementById("send").hidden, `answer ${n}`, 60000, n);
check(await answered(1), "the first answer completes");
log("first answer in the page");
const imgUrl = "data:image/jpeg;base64," + readFileSync(IMG).toString("base64");
const q1 = { role: "user", content: [{ type: "image_url", image_url: { url: imgUrl } }, { type: "text", text: "What" }] };
const e1 = await api({ messages: [q1], temperature: 0, top_p: 0.8, max_tokens: 8 });
const a1 = await text("#log .msg.assistant .text");
const upd = await page.evaluate(() => window.__updates);
check(a1.length > 0 && a1 === e1.choices[0].message.content,
  `the streamed answer equals the API's: ${JSON.stringify(a1)} vs ${JSON.stringify(e1.choices[0].message.content)}`);
check(upd.filter((u) => u.length).length > 1 && upd.every((u) => a1.startsWith(u)),
  `the answer arrived in several growing updates (${upd.length}): ${JSON.stringify(upd)}`);
check(chats.length === nChats + 1, "one request for the first question");
const b1 = await body(chats[chats.length - 1]);
check(b1.stream === true && b1.stream_options && b1.stream_options.include_usage === true && b1.temperature === 0 && b1.max_tokens === 8,
  `the page streams with usage and sends its settings: ${JSON.stringify({ ...b1, messages: undefined })}`);
const meta1 = await text("#log .msg.assistant .meta");
check(meta1.includes(`${e1.usage.prompt_tokens} prompt + ${e1.usage.completion_tokens} generated tokens`)
  && /first token \d+ ms/.test(meta1) && /\d+\.\d tokens\/s/.test(meta1), `timings: ${meta1}`);
log("first answer checked");

// Shift+Enter is a new line, not a send; Enter sends the follow-up with the whole conversation
await page.type("#question", "Tell me more");
await page.keyboard.down("Shift"); await page.keyboard.press("Enter"); await page.keyboard.up("Shift");
await page.type("#question", "please");
check(await page.$eval("#question", (el) => el.value) === "Tell me more\nplease" && chats.length === nChats + 1,
  "Shift+Enter adds a new line and sends nothing");
await page.keyboard.press("Enter");
check(await answered(2), "the follow-up answer completes");
const q2 = [q1, { role: "assistant", content: e1.choices[0].message.content }, { role: "user", content: [{ type: "text", text: "Tell me more\nplease" }] }];
const e2 = await api({ messages: q2, temperature: 0, top_p: 0.8, max_tokens: 8 });
const a2 = (await page.$$eval("#log .msg.assistant .text", (els) => els.map((e) => e.textContent)))[1];
check(a2 === e2.choices[0].message.content, `the follow-up equals the API's answer to the whole conversation: ${JSON.stringify(a2)} vs ${JSON.stringify(e2.choices[0].message.content)}`);
const b2 = await body(chats[chats.length - 1]);
check(b2.messages.length === 3 && JSON.stringify(b2.messages[0]) === JSON.stringify(q1) && b2.messages[1].content === a1,
  "the follow-up re-sends the first question with its image and the first answer");
await page.screenshot({ path: `${OUT}/screenshot.png` });
// a phone's width (isMobile would reload the page; the width is what the CSS sees)
await page.setViewport({ width: 390, height: 844 });
const over = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
check(over <= 0, `on a 390 px wide phone nothing overflows sideways (${over} px)`);
await page.screenshot({ path: `${OUT}/phone.png` });
await page.setViewport({ width: 1000, height: 760 });
log("follow-up checked, screenshots taken");

// Stop ends a long answer early: the text so far is kept, the server stops generating (its client left)
await page.click("#toggle-settings");
await page.click("#max_tokens", { clickCount: 3 }); await page.type("#max_tokens", "600");
await page.click("#toggle-settings");
await page.type("#question", "Go on");
await page.keyboard.press("Enter");
check(await wait(() => { const a = [...document.querySelectorAll("#log .msg.assistant .text")]; return a.length === 3 && a[2].textContent.length > 0; },
  "the third answer begins", 30000), "a long answer begins");
await page.click("#stop");
check(await answered(3), "Stop ends the answer");
const meta3 = (await page.$$eval("#log .msg.assistant .meta", (els) => els.map((e) => e.textContent)))[2];
check(/stopped$/.test(meta3) && !/600 generated/.test(meta3), `the stopped answer is kept and marked: ${meta3}`);
let idle = false;
for (let i = 0; i < 100 && !idle; i++) { idle = (await (await fetch(U + "/health")).json()).running === 0; if (!idle) await new Promise((r) => setTimeout(r, 50)); }
check(idle, "after Stop the server stops generating (its client left)");
log("stop checked");

// start over, then the error paths
await page.click("#new");
check((await page.$$("#log .msg")).length === 0 && await page.$eval("#question", (el) => el.value) === "", "New chat empties the conversation");
const big = `${OUT}/big.jpg`;
writeFileSync(big, randomBytes(1200 * 1024)); // 1.2 MiB: the request is over --max-body 1MiB
await file.uploadFile(big);
await wait(() => document.querySelectorAll("#pending img").length === 1, "the big file", 5000);
await page.type("#question", "What");
await page.keyboard.press("Enter");
check(await wait(() => /^413/.test(document.getElementById("error").textContent), "the 413", 20000)
  && /over the limit of 1048576 bytes/.test(await text("#error")), `an oversized upload: 413 with the server's message: ${await text("#error")}`);
check((await page.$$("#log .msg")).length === 0 && (await page.$$("#pending img")).length === 1, "after the 413 the image waits in the composer");
await page.click("#pending .thumb button");
check((await page.$$("#pending img")).length === 0, "the x button removes a picked image");
await file.uploadFile(IMG_BIG);
await wait(() => document.querySelectorAll("#pending img").length === 1, "the large image", 5000);
await page.focus("#question");
await page.keyboard.press("Enter");
check(await wait(() => /^400/.test(document.getElementById("error").textContent), "the 400", 20000)
  && /640x480 has 307200 pixels, over the limit of 100000/.test(await text("#error")),
  `an image over --max-image-pixels: 400 with the server's message: ${await text("#error")}`);
const b4 = await body(chats[chats.length - 1]);
check(b4.messages.length === 1, `after New chat the request holds the new question only (${b4.messages.length} messages)`);
// drop and paste (synthetic events carrying a real PNG made in the page)
await page.click("#pending .thumb button");
const dropped = await page.evaluate(async () => {
  const c = document.createElement("canvas"); c.width = 8; c.height = 8;
  const blob = await new Promise((r) => c.toBlob(r, "image/png"));
  const dt = () => { const d = new DataTransfer(); d.items.add(new File([blob], "x.png", { type: "image/png" })); return d; };
  document.getElementById("log").dispatchEvent(new DragEvent("drop", { dataTransfer: dt(), bubbles: true, cancelable: true }));
  document.getElementById("question").dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt(), bubbles: true, cancelable: true }));
  for (let i = 0; i < 100 && document.querySelectorAll("#pending img").length < 2; i++) await new Promise((r) => setTimeout(r, 20));
  return [...document.querySelectorAll("#pending img")].map((i) => i.src.slice(0, 22));
});
check(dropped.length === 2 && dropped.every((u) => u === "data:image/png;base64,"), `a dropped and a pasted image wait in the composer: ${JSON.stringify(dropped)}`);
await page.evaluate(() => { const dt = new DataTransfer(); dt.items.add(new File(["hello"], "notes.txt", { type: "text/plain" }));
  const i = document.getElementById("file"); i.files = dt.files; i.dispatchEvent(new Event("change")); });
check(/notes\.txt is not an image/.test(await text("#error")), `a file that is not an image is refused by name: ${await text("#error")}`);

check(problems.length === 0, `no page errors: ${JSON.stringify(problems)}`);
check((await page.evaluate(() => window.__csp)).length === 0, `no CSP violations: ${JSON.stringify(await page.evaluate(() => window.__csp))}`);
check(foreign.length === 0, `the page fetched nothing from elsewhere: ${JSON.stringify(foreign)}`);
log("done");
} catch (e) {
  fail++;
  console.error("FAIL the test stopped: " + (e && e.stack || e));
}
await finish();
