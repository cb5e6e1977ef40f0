// Writes a Hugging Face byte-level BPE tokenizer.json's vocabulary in the tiktoken format
// Meta ships Llama 3's tokenizer.model in: one "base64(token bytes) rank" line per token,
// ranks = ids. usage: node scripts/hf_to_tiktoken.cjs tokenizer.json tokenizer.model
const fs = require('fs');
const [src, dst] = process.argv.slice(2);
const tok = JSON.parse(fs.readFileSync(src, 'utf8'));
// GPT-2's byte <-> code point table, inverted.
const fromCp = new Map();
let n = 0;
for (let b = 0; b < 256; b++) {
  const printable = (b >= 33 && b <= 126) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  fromCp.set(printable ? b : 256 + n++, b);
}
const lines = [];
for (const [s, id] of Object.entries(tok.model.vocab)) {
  const bytes = Buffer.from(Array.from(s, (c) => fromCp.get(c.codePointAt(0))));
  lines[id] = `${bytes.toString('base64')} ${id}`;
}
fs.writeFileSync(dst + '.tmp', lines.join('\n') + '\n');
fs.renameSync(dst + '.tmp', dst);
