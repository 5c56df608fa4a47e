// gen_corpus.mjs: writes a seeded corpus of test strings (JSON array) for the tokenizer parity test.
// usage: node tests/js/gen_corpus.mjs [seed] [count] > corpus.json
//        node tests/js/gen_corpus.mjs --big MB > big.txt   (mixed text for throughput measurements)
// The strings avoid the code points where the JS oracle's regex differs from HF's Oniguruma
// (docs/TOKENIZER.md): U+0085, U+FEFF, U+017F and code points unassigned in Unicode 14. NUL is avoided too
// (the C side reads the corpus with cJSON, whose strings end at NUL). U+180E is included on purpose: it
// checks the PCRE2 \s fix.
function mulberry32(a) {
  return function () {
    a |= 0; a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const args = process.argv.slice(2);
const big = args[0] === "--big";
const seed = big ? 7 : Number(args[0] ?? 1234);
const count = big ? 0 : Number(args[1] ?? 4000);
const rnd = mulberry32(seed);
const ri = (n) => Math.floor(rnd() * n);
const pick = (a) => a[ri(a.length)];
const cp = (lo, hi) => String.fromCodePoint(lo + ri(hi - lo + 1));

// Ranges fully assigned in Unicode 14 (and not among the excluded code points).
const SCRIPTS = [
  [0x61, 0x7a], [0x41, 0x5a], [0xc0, 0xff], [0x100, 0x17e], [0x391, 0x3a1], [0x3a3, 0x3a9], [0x3b1, 0x3c9],
  [0x410, 0x44f], [0x531, 0x556], [0x5d0, 0x5ea], [0x621, 0x64a], [0x905, 0x939], [0xe01, 0xe2e],
  [0x10d0, 0x10fa], [0x1200, 0x1248], [0x3041, 0x3096], [0x30a1, 0x30fa], [0x4e00, 0x9fa5], [0xac00, 0xd7a3],
  [0x300, 0x36f], // combining marks (\p{M}: neither letter nor number)
];
const DIGITS = [[0x30, 0x39], [0x660, 0x669], [0x966, 0x96f], [0xff10, 0xff19], [0xb2, 0xb3], [0x2160, 0x2188], [0x2460, 0x249b]];
const SYMBOLS = [[0x21, 0x2f], [0x3a, 0x40], [0x5b, 0x60], [0x7b, 0x7e], [0xa1, 0xbf], [0x2190, 0x21ff], [0x2200, 0x22ff],
  [0x2500, 0x257f], [0xff01, 0xff0f], [0x1f600, 0x1f64f], [0x1f300, 0x1f3fa], [0x2010, 0x2027], [0x3001, 0x3003]];
const SPACES = [" ", " ", " ", "  ", "\t", "\n", "\n\n", "\r\n", "\r", "\v", "\f", "\u00a0", "\u2000", "\u2003", "\u200a",
  "\u3000", "\u2028", "\u2029", "\u1680", "\u202f", "\u205f", "\u180e", " \n ", "\n   ", "\t\t", "   \n\n"];
const WORDS = ("the of and to in is you that it he was for on are as with his they I at be this have from or one had by word " +
  "but not what all were we when your can said there use an each which she do how their if will up other about out many " +
  "then them these so some her would make like him into time has look two more write go see number no way could people " +
  "tokenizer encoding transformer Llama MiniCPM vision hello world über naïve café résumé Straße").split(" ");
const CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D", "'Re", "'vE",
  "n't", "N'T", "'", "''", "’s", "'x"];
const SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
  "<|reserved_special_token_0|>", "<|reserved_special_token_5|>", "<|reserved_special_token_250|>", "<|eot_id",
  "<|eot_id|", "<|", "|>", "<image>", "</image>", "<unk>", "(<image>./</image>)", "<slice>", "<<|eot_id|>>"];
const EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🇫🇷", "❤️", "✔︎", "🏳️‍🌈", "🤖", "🧑🏿‍💻"];
const CODE = [
  "int main(int argc, char **argv) {\n    return 0;\n}\n", "def f(x):\n\tif x >= 10:\n\t\treturn x**2\n    return None\n",
  "for (i = 0; i < n; i++) a[i] += b[i] * 3.5e-4;", "x = {'key': [1, 2, 3], \"v\": None}  # comment\r\n",
  "if (a && !b || c != d) { printf(\"%d\\n\", a); }", "SELECT * FROM t WHERE id=42 AND name LIKE '%foo%';",
  "<div class=\"a\">&nbsp;</div>\n", "    \n    \n        pass\n", "#include <stdio.h>\n#define N 1024\n",
  "const re = /^[a-z]+$/gi; // regex", "a_b_c = x->y.z[0] >> 2;", "λx.x + 1 => fn", "$HOME/.cache/~tmp/file-name_v2.txt",
];

function piece() {
  switch (ri(14)) {
    case 0: case 1: return pick(WORDS);
    case 2: { const [lo, hi] = pick(SCRIPTS); let s = ""; for (let i = 1 + ri(8); i > 0; i--) s += cp(lo, hi); return s; }
    case 3: { const [lo, hi] = pick(DIGITS); let s = ""; for (let i = 1 + ri(12); i > 0; i--) s += cp(lo, hi); return s; }
    case 4: { const [lo, hi] = pick(SYMBOLS); let s = ""; for (let i = 1 + ri(4); i > 0; i--) s += cp(lo, hi); return s; }
    case 5: case 6: return pick(SPACES);
    case 7: return pick(CONTRACTIONS);
    case 8: return pick(SPECIALS);
    case 9: return pick(EMOJI);
    case 10: return pick(CODE);
    case 11: return String(ri(1e9)) + pick([".", ",", "", "%", "e5", "th"]) + String(ri(1000));
    case 12: { let s = ""; for (let i = 1 + ri(20); i > 0; i--) s += String.fromCharCode(32 + ri(95)); return s; }
    default: return pick(["!", "!!", "?!", "...", "--", "—", "“", "”", "«", "»", "'", "\"", "(", ")", "[", "]", "¿", "¡"]);
  }
}

function text() {
  switch (ri(20)) {
    case 0: { let s = ""; for (let i = 60 + ri(300); i > 0; i--) s += cp(0x61, 0x7a); return s; } // long BPE word
    case 1: { const [lo, hi] = pick(SCRIPTS); let s = ""; for (let i = 50 + ri(150); i > 0; i--) s += cp(lo, hi); return s; }
    case 2: return pick(SPACES).repeat(1 + ri(200)) + (ri(2) ? pick(WORDS) : "");
    case 3: return String.fromCodePoint(1 + ri(0x7f)); // one ASCII char (no NUL)
    case 4: return pick(["", " ", "\n", "a", "é", "你", "😀", "!", "'s", "  x", "x  ", " \n"]);
    default: { let s = ""; for (let i = 1 + ri(25); i > 0; i--) s += piece() + (ri(3) ? " " : ""); return s; }
  }
}

if (big) {
  const target = Number(args[1] ?? 4) * 1e6;
  const out = [];
  let n = 0;
  while (n < target) { const s = text() + "\n"; out.push(s); n += Buffer.byteLength(s); }
  process.stdout.write(out.join(""));
} else {
  const corpus = [];
  for (let i = 0; i < count; i++) corpus.push(text());
  process.stdout.write(JSON.stringify(corpus));
}
