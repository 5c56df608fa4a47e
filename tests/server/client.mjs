// client.mjs: drives `minicpmv serve` with the official OpenAI JS client (installed by setup.sh).
// Usage: node client.mjs BASE_URL IMAGE_PATH EXPECTED_TEXT EXPECTED_IMAGE_TEXT
// Prints "client.mjs: N passed, M failed" and exits non-zero on any failure.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const OpenAI = require(process.env.OPENAI_MODULE).default ?? require(process.env.OPENAI_MODULE);

const [base, imgPath, expText, expImg] = process.argv.slice(2);
const client = new OpenAI({ baseURL: base + "/v1", apiKey: "unused", maxRetries: 0, timeout: 60000 });
let pass = 0, fail = 0;
const check = (ok, what) => { if (ok) pass++; else { fail++; console.error("FAIL " + what); } };

const models = await client.models.list();
check(models.data.length === 1 && typeof models.data[0].id === "string", "models.list");

const plain = await client.chat.completions.create({
  model: "m", messages: [{ role: "user", content: "Hello there" }], temperature: 0, max_tokens: 16 });
check(plain.choices[0].message.content === expText, `plain: ${JSON.stringify(plain.choices[0].message.content)}`);
check(plain.usage.prompt_tokens === 12 && plain.usage.completion_tokens === 16, "plain usage");

const stream = await client.chat.completions.create({
  model: "m", messages: [{ role: "user", content: "Hello there" }], temperature: 0, max_tokens: 16, stream: true,
  stream_options: { include_usage: true } });
let text = "", usage = null, finish = null;
for await (const chunk of stream) {
  if (chunk.usage) usage = chunk.usage;
  const c = chunk.choices[0];
  if (c?.delta?.content) text += c.delta.content;
  if (c?.finish_reason) finish = c.finish_reason;
}
check(text === expText, `stream: ${JSON.stringify(text)}`);
check(finish === "length" && usage && usage.completion_tokens === 16, "stream finish/usage");

const url = "data:image/jpeg;base64," + readFileSync(imgPath).toString("base64");
const img = await client.chat.completions.create({
  model: "m", temperature: 0, max_tokens: 8,
  messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: "What" }] }] });
check(img.choices[0].message.content === expImg, `image: ${JSON.stringify(img.choices[0].message.content)}`);

// multi-turn about the same image: the answer of turn 1 goes back in
const turn2 = await client.chat.completions.create({
  model: "m", temperature: 0, max_tokens: 8,
  messages: [{ role: "user", content: [{ type: "image_url", image_url: { url } }, { type: "text", text: "What" }] },
             { role: "assistant", content: img.choices[0].message.content },
             { role: "user", content: "And then?" }] });
check(typeof turn2.choices[0].message.content === "string" && turn2.usage.prompt_tokens > img.usage.prompt_tokens,
      "multi-turn");

// errors surface as APIError with the status and OpenAI's error body
async function expectError(params, status, what) {
  try { await client.chat.completions.create(params); check(false, what + ": no error"); }
  catch (e) { check(e.status === status && typeof e.error?.message === "string", `${what}: ${e.status} ${e.message}`); }
}
await expectError({ model: "m", messages: [{ role: "robot", content: "x" }] }, 400, "unknown role");
await expectError({ model: "m", messages: [{ role: "user", content: "x" }], max_tokens: 1000000 }, 400, "too long");
await expectError({ model: "m", messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "data:image/png;base64,%%%" } }] }] }, 400, "bad base64");
await expectError({ model: "m", messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/a.png" } }] }] }, 400, "remote url");

console.log(`client.mjs: ${pass} passed, ${fail} failed`);
process.exit(fail ? 1 : 0);
