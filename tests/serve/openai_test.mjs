// llmq serve driven by the official OpenAI client (npm openai), checked against `llmq generate`
// on the same model, seeds and settings. Usage:
//   node openai_test.mjs NODE_MODULES URL API_KEY MODEL_DIR LLMQ
// Prints ok:/FAIL: lines; exits 1 on any failure.
import { createRequire } from 'node:module';
import { execFileSync } from 'node:child_process';

const [nm, url, key, modelDir, llmq] = process.argv.slice(2);
const require = createRequire(nm + '/');
const OpenAI = require('openai').default ?? require('openai');
const client = new OpenAI({ baseURL: url + '/v1', apiKey: key, maxRetries: 0, timeout: 120000 });

let fails = 0;
const ok = (m) => console.log('ok: ' + m);
const bad = (m) => { console.log('FAIL: ' + m); fails++; };
const check = (cond, m) => (cond ? ok(m) : bad(m));
const eq = (a, b, m) => check(JSON.stringify(a) === JSON.stringify(b), m + (JSON.stringify(a) === JSON.stringify(b) ? '' : ` :: ${JSON.stringify(a)} != ${JSON.stringify(b)}`));

// `llmq generate --json` with the API's defaults (no top-k/top-p/min-p cut unless given).
function generate(args) {
  const out = execFileSync(llmq, ['generate', '-m', modelDir, '-t', '1', '--json', '--top-k', '0', '--top-p', '1',
                                  '--min-p', '0', ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return JSON.parse(out).results;
}

const model = (await client.models.list()).data[0].id;
check(typeof model === 'string' && model.length > 0, `models.list names the model (${model})`);

// 1. Completions, greedy, non-streaming: text and usage equal llmq generate's.
const prompt = 'In the beginning God created';
const c1 = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0 });
const g1 = generate(['-p', prompt, '-n', '16', '--temperature', '0']);
eq(c1.choices[0].text, g1[0].text, 'completion text equals llmq generate (greedy)');
eq([c1.usage.prompt_tokens, c1.usage.completion_tokens], [g1[0].prompt_tokens, g1[0].tokens.length], 'usage counts');
check(c1.object === 'text_completion' && c1.id.startsWith('cmpl-'), 'completion object and id');

// 2. Streaming completion: the pieces concatenate to the same text; usage chunk at the end.
let streamed = '', usage = null, finish = null, chunks = 0;
for await (const ch of await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, stream: true,
                                                          stream_options: { include_usage: true } })) {
  chunks++;
  if (ch.usage) usage = ch.usage;
  for (const c of ch.choices) { streamed += c.text; if (c.finish_reason) finish = c.finish_reason; }
}
eq(streamed, c1.choices[0].text, `streamed completion equals the non-streamed one (${chunks} chunks)`);
check(usage && usage.completion_tokens === c1.usage.completion_tokens, 'stream usage chunk');
eq(finish, c1.choices[0].finish_reason, 'stream finish_reason');

// 3. Sampling with a seed, n = 3: choice i equals llmq generate's sequence i (seed + i).
const s3 = await client.completions.create({ model, prompt, max_tokens: 12, temperature: 0.9, seed: 7, n: 3 });
const g3 = generate(['-p', prompt, '-p', prompt, '-p', prompt, '-n', '12', '--temperature', '0.9', '--seed', '7']);
eq(s3.choices.map((c) => c.text), g3.map((r) => r.text), 'n = 3 seeded choices equal llmq generate --seed 7 (three prompts)');
check(new Set(s3.choices.map((c) => c.text)).size > 1, 'the choices differ from each other');

// 4. Chat, non-streaming and streaming, against llmq generate --chat.
const messages = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Name a color.' }];
const ch1 = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
const gc = generate(['--chat', '--system', 'You are terse.', '-p', 'Name a color.', '-n', '12', '--temperature', '0']);
eq(ch1.choices[0].message.content, gc[0].text, 'chat reply equals llmq generate --chat');
eq(ch1.choices[0].message.role, 'assistant', 'chat role');
let chatStream = '', sawRole = false;
for await (const ch of await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0, stream: true })) {
  for (const c of ch.choices) { if (c.delta.role) sawRole = true; if (c.delta.content) chatStream += c.delta.content; }
}
eq(chatStream, ch1.choices[0].message.content, 'streamed chat equals the non-streamed reply');
check(sawRole, 'the first chat chunk carries the assistant role');

// 5. Stop strings: a piece of the greedy text ends the completion before it.
const full = c1.choices[0].text;
const stopAt = full.slice(Math.floor(full.length / 2), Math.floor(full.length / 2) + 3);
if (stopAt.length === 3) {
  const st = await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, stop: [stopAt] });
  eq(st.choices[0].text, full.slice(0, full.indexOf(stopAt)), `stop string ${JSON.stringify(stopAt)} ends the text`);
  eq(st.choices[0].finish_reason, 'stop', 'finish_reason stop');
  let ss = '';
  for await (const ch of await client.completions.create({ model, prompt, max_tokens: 16, temperature: 0, stop: [stopAt], stream: true }))
    for (const c of ch.choices) ss += c.text;
  eq(ss, st.choices[0].text, 'the stop string is held back while streaming');
}

// 6. Logprobs: the chosen greedy token is the top alternative, logprobs <= 0.
const lp = await client.completions.create({ model, prompt, max_tokens: 6, temperature: 0, logprobs: 2 });
const L = lp.choices[0].logprobs;
check(L.tokens.length === 6 && L.token_logprobs.length === 6 && L.top_logprobs.length === 6, 'completion logprobs: one entry per token');
check(L.token_logprobs.every((x, i) => x <= 0 && Math.abs(x - Math.max(...Object.values(L.top_logprobs[i]))) < 1e-6),
      'greedy token = best alternative, logprob <= 0');
const clp = await client.chat.completions.create({ model, messages, max_tokens: 4, temperature: 0, logprobs: true, top_logprobs: 3 });
const C = clp.choices[0].logprobs.content;
check(C.length === clp.usage.completion_tokens && C.every((e) => e.top_logprobs.length === 3 && e.logprob === e.top_logprobs[0].logprob),
      'chat logprobs: content entries with 3 alternatives, the chosen one first');
const ec = await client.completions.create({ model, prompt, max_tokens: 2, temperature: 0, echo: true, logprobs: 0 });
check(ec.choices[0].logprobs.token_logprobs[0] === null && ec.choices[0].logprobs.tokens.length === c1.usage.prompt_tokens + 2,
      'echo with logprobs: prompt tokens first (the first without a logprob)');

// 7. Errors come back as the client's typed errors with the right status.
for (const [what, req, status] of [
  ['temperature -1', { model, prompt, temperature: -1 }, 400],
  ['n 0', { model, prompt, n: 0 }, 400],
  ['unknown model', { model: 'nope', prompt }, 404],
  ['prompt longer than the context', { model, prompt: 'word '.repeat(600), max_tokens: 4 }, 400],
]) {
  try {
    await client.completions.create(req);
    bad(`${what}: accepted`);
  } catch (e) {
    check(e.status === status && e.error && typeof e.error.message === 'string', `${what}: ${e.status} ${e.constructor.name}: ${e.error?.message}`);
  }
}
try {
  await new OpenAI({ baseURL: url + '/v1', apiKey: 'wrong', maxRetries: 0 }).models.list();
  bad('wrong API key accepted');
} catch (e) {
  check(e.status === 401 && e.constructor.name === 'AuthenticationError', `wrong API key: ${e.status} ${e.constructor.name}`);
}

// 8. Batch invariance over HTTP: 16 concurrent greedy requests of mixed lengths, each equal
// to the same request sent alone (integer-quantized weights: bit for bit, logprobs included).
const words = 'the whale ship sea captain white deep water night morning'.split(' ');
const prompts = Array.from({ length: 16 }, (_, i) => Array.from({ length: 2 + (i * 7) % 37 }, (_, k) => words[(i + k * 3) % words.length]).join(' '));
const alone = [];
for (const p of prompts) alone.push(await client.completions.create({ model, prompt: p, max_tokens: 10, temperature: 0, logprobs: 1, ignore_eos: true }));
const together = await Promise.all(prompts.map((p) => client.completions.create({ model, prompt: p, max_tokens: 10, temperature: 0, logprobs: 1, ignore_eos: true })));
let same = 0;
for (let i = 0; i < 16; i++)
  same += JSON.stringify([alone[i].choices[0].text, alone[i].choices[0].logprobs.token_logprobs]) ===
          JSON.stringify([together[i].choices[0].text, together[i].choices[0].logprobs.token_logprobs]);
eq(same, 16, '16 concurrent requests: text and logprobs identical to each sent alone');

process.exit(fails ? 1 : 0);
