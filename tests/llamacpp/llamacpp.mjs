// Drives llama.cpp (the prebuilt libraries of npm node-llama-cpp) as the peer that checks
// llmq's GGUF files and that llmq's speed is compared with. One JSON line on stdout.
//   node llamacpp.mjs MODULES_DIR MODEL.gguf generate "ID ID ..." N THREADS   greedy N tokens
//   node llamacpp.mjs MODULES_DIR MODEL.gguf nll TOKEN_FILE CTX THREADS       mean NLL per window
//   node llamacpp.mjs MODULES_DIR MODEL.gguf bench PROMPT GEN THREADS         prefill / decode tok/s
//     (WARM=0: time the first, cold evaluation; REPS=N: best of N)
//   node llamacpp.mjs MODULES_DIR MODEL.gguf tokenize TEXT_FILE               ids of each line
import fs from "node:fs";
import path from "node:path";

const [modulesDir, modelPath, mode, ...args] = process.argv.slice(2);
const { getLlama, LlamaLogLevel } = await import(path.join(modulesDir, "node-llama-cpp", "dist", "index.js"));
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error, progressLogs: false });
const model = await llama.loadModel({ modelPath, gpuLayers: 0 });
const now = () => Number(process.hrtime.bigint()) / 1e9;

// LORA=FILE.gguf in the environment: the context runs with that LoRA adapter (scale 1).
async function context(size, threads, batch) {
  const lora = process.env.LORA ? { adapters: [{ filePath: process.env.LORA, scale: 1 }] } : undefined;
  return await model.createContext({ contextSize: size, threads, batchSize: batch ?? Math.min(size, 512), sequences: 1, lora });
}

if (mode === "generate") {
  // Greedy, one token at a time, past end-of-sequence tokens (as llmq --ignore-eos).
  const prompt = args[0].trim().split(/\s+/).map(Number);
  const n = Number(args[1]);
  const ctx = await context(prompt.length + n + 8, Number(args[2]));
  const seq = ctx.getSequence();
  const input = prompt.map((t, i) => (i + 1 < prompt.length ? t : [t, { generateNext: { token: true, options: { temperature: 0 } } }]));
  let res = await seq.controlledEvaluate(input);
  const out = [res[res.length - 1].next.token];
  while (out.length < n) {
    res = await seq.controlledEvaluate([[out[out.length - 1], { generateNext: { token: true, options: { temperature: 0 } } }]]);
    out.push(res[0].next.token);
  }
  console.log(JSON.stringify({ tokens: out }));
} else if (mode === "nll") {
  const toks = fs.readFileSync(args[0], "utf8").trim().split(/\s+/).map(Number);
  const win = Number(args[1]);
  const ctx = await context(win, Number(args[2]), win);
  let sum = 0, n = 0;
  const seq = ctx.getSequence();
  for (let w0 = 0; w0 + 1 < toks.length; w0 += win) {
    const w = toks.slice(w0, w0 + win);
    if (w.length < 2) break;
    await seq.clearHistory();  // each window is a fresh sequence, as llmq eval ppl scores it
    const input = w.map((t, i) => (i + 1 < w.length
      ? [t, { generateNext: { logits: true } }] : t));
    const res = await seq.controlledEvaluate(input);
    for (let i = 0; i + 1 < w.length; i++) {
      // -log softmax(logits)[target], with the max subtracted, in double
      const logits = res[i].next.logits;
      let mx = -Infinity;
      for (const v of logits.values()) mx = Math.max(mx, v);
      let z = 0;
      for (const v of logits.values()) z += Math.exp(v - mx);
      if (logits.size < model.tokens.nTokens) throw new Error(`only ${logits.size} logits returned`);
      sum += Math.log(z) + mx - logits.get(w[i + 1]);
      n++;
    }
  }
  console.log(JSON.stringify({ tokens: n, nll: sum / n, ppl: Math.exp(sum / n) }));
} else if (mode === "tokenize") {
  // One line of ids per input line (no BOS), as `llmq tokenizer encode` prints them.
  const lines = fs.readFileSync(args[0], "utf8").split("\n").filter((l) => l.length > 0);
  console.log(JSON.stringify({ ids: lines.map((l) => Array.from(model.tokenize(l, false))) }));
} else if (mode === "bench") {
  // Prefill: the prompt evaluated without sampling. Decode: node-llama-cpp's own generation
  // loop (seq.evaluate, greedy), timed from the first generated token to the last, so the
  // prompt is not counted; end-of-sequence tokens do not stop it early in this loop.
  const P = Number(args[0]), G = Number(args[1]), threads = Number(args[2]);
  const ctx = await context(P + G + 8, threads, P);
  const seq = ctx.getSequence();
  const prompt = Array.from({ length: P }, (_, i) => 1000 + ((i * 7919) % 5000));
  // Warm-up: the first evaluation after loading touches every page of the mapped weights
  // for the first time, which on this host's hypervisor costs about as much as the whole
  // prefill; WARM=0 in the environment times that cold evaluation instead.
  if (process.env.WARM !== "0") {
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    await seq.clearHistory();
  }
  // REPS=N in the environment: best of N timings of each (as llmq bench --reps N reports).
  const reps = Math.max(1, Number(process.env.REPS || 1));
  let bestPre = 0, bestDec = 0, n = 0;
  for (let r = 0; r < reps; r++) {
    await seq.clearHistory();
    const t0 = now();
    await seq.evaluateWithoutGeneratingNewTokens(prompt);
    const t1 = now();
    await seq.clearHistory();
    let tFirst = 0, tLast = 0;
    n = 0;
    for await (const t of seq.evaluate(prompt, { temperature: 0 })) {
      if (n === 0) tFirst = now();
      tLast = now();
      if (++n >= G) break;
    }
    bestPre = Math.max(bestPre, P / (t1 - t0));
    bestDec = Math.max(bestDec, (n - 1) / (tLast - tFirst));
  }
  console.log(JSON.stringify({ prefill_tok_s: bestPre, decode_tok_s: bestDec, tokens: n, threads, reps }));
} else {
  console.error(`unknown mode ${mode}`);
  process.exit(2);
}
await model.dispose();
