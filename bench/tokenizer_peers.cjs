// Peer encoders' single-thread throughput on the same lines as bench_tokenizer: tiktoken
// (WebAssembly build of OpenAI's Rust tiktoken, loaded with Llama 3's ranks and pattern) and
// llama3-tokenizer-js (pure JavaScript). Prints "name MB/s tokens" per encoder.
// usage: node tokenizer_peers.cjs REPO_ROOT FILE...
const fs = require('fs');
const path = require('path');
const [root, ...files] = process.argv.slice(2);
const nm = path.resolve(root, 'data/npm/node_modules');
const { Tiktoken } = require(path.join(nm, 'tiktoken'));
const l3m = require(path.join(nm, 'llama3-tokenizer-js/bundle/commonjs-llama3-tokenizer-with-baked-data.cjs'));
const l3 = l3m.llama3Tokenizer || l3m.default || l3m;
const pat = JSON.parse(fs.readFileSync(path.resolve(root, 'models/llama3-tokenizer/tokenizer.json'), 'utf8'))
  .pre_tokenizer.pretokenizers[0].pattern.Regex;
const ranks = fs.readFileSync(path.resolve(root, 'models/llama3-tiktoken/tokenizer.model'), 'utf8');
const tk = new Tiktoken(ranks, {}, pat);
const lines = files.flatMap((f) => fs.readFileSync(f, 'utf8').split('\n').filter((l) => l.length));
const bytes = lines.reduce((a, l) => a + Buffer.byteLength(l), 0);
const run = (name, fn, reps) => {
  let best = Infinity, toks = 0;
  for (let r = 0; r < reps; r++) {
    const t0 = process.hrtime.bigint();
    toks = 0;
    for (const l of lines) toks += fn(l).length;
    best = Math.min(best, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  console.log(`${name} ${(bytes / 1e6 / best).toFixed(2)} ${toks}`);
};
run('tiktoken-wasm', (l) => tk.encode_ordinary(l), 3);
run('llama3-tokenizer-js', (l) => l3.encode(l, { bos: false, eos: false }), 1);
tk.free();
