// The chat page of llmq serve in headless Chromium (Debian's chromium), driven over the
// DevTools protocol: the page sends a scripted message, the reply streams in, tokens/s is
// shown, a second turn continues the conversation; a screenshot is written. Usage:
//   node --experimental-websocket chat_page.mjs URL API_KEY OUT.png
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [url, key, png] = process.argv.slice(2);
let fails = 0;
const ok = (m) => console.log('ok: ' + m);
const bad = (m) => { console.log('FAIL: ' + m); fails++; };
const profile = mkdtempSync(join(tmpdir(), 'llmq-chromium-'));
const chrome = spawn('chromium', ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--remote-debugging-port=0',
                                  `--user-data-dir=${profile}`, '--window-size=900,700', 'about:blank'],
                     { stdio: ['ignore', 'ignore', 'pipe'] });
const exited = new Promise((r) => chrome.on('exit', r));
const killAll = async () => {  // after chromium has exited (it writes its profile until then)
  chrome.kill('SIGKILL');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
  try { rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 }); } catch { /* a leftover temp dir */ }
};
const deadline = setTimeout(async () => { bad('timed out'); await killAll(); process.exit(1); }, 90000);

const wsUrl = await new Promise((resolve, reject) => {
  let err = '';
  chrome.stderr.on('data', (d) => {
    err += d;
    const m = err.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  chrome.on('exit', (c) => reject(new Error('chromium exited ' + c + ': ' + err)));
});
const ws = new WebSocket(wsUrl);
await new Promise((r) => ws.addEventListener('open', r, { once: true }));
let id = 0;
const pending = new Map();
ws.addEventListener('message', (e) => {
  const m = JSON.parse(e.data);
  if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
});
const send = (method, params = {}, sessionId) => new Promise((resolve) => {
  const i = ++id;
  pending.set(i, resolve);
  ws.send(JSON.stringify({ id: i, method, params, ...(sessionId ? { sessionId } : {}) }));
});
const page = `${url}/?key=${encodeURIComponent(key)}&max_tokens=64&temperature=0&prompt=${encodeURIComponent('Tell me about the sea.')}`;
const { result: { targetId } } = await send('Target.createTarget', { url: page });
const { result: { sessionId } } = await send('Target.attachToTarget', { targetId, flatten: true });
const evaluate = async (expr) => (await send('Runtime.evaluate', { expression: expr, returnByValue: true }, sessionId)).result?.result?.value;
async function waitFor(expr, what) {
  for (let i = 0; i < 600; i++) {
    const v = await evaluate(expr);
    if (v) return v;
    await new Promise((r) => setTimeout(r, 100));
  }
  bad('waiting for ' + what);
  return null;
}
// Partial text seen before the end: the reply streams.
const partial = await waitFor(`(() => { const a = document.querySelectorAll('.assistant'); const t = a.length ? a[a.length - 1].textContent : '';
                                        return t.length > 0 && !a[a.length - 1].dataset.done ? t : (a.length && a[a.length - 1].dataset.done ? '(done)' : ''); })()`, 'the first tokens');
await waitFor(`document.querySelectorAll('.msg[data-done]').length === 1`, 'the first reply');
const reply = await evaluate(`document.querySelector('.assistant').textContent`);
const status = await evaluate(`document.getElementById('status').textContent`);
reply && reply.length > 0 && !reply.startsWith('error') ? ok(`reply streamed (${JSON.stringify(reply.slice(0, 60))})`) : bad(`no reply: ${reply}`);
partial && partial !== '(done)' ? ok(`text appeared before the reply ended (${partial.length} chars)`) : console.log('note: the reply finished before a partial state was seen');
/tok\/s/.test(status || '') ? ok(`status shows speed: ${status}`) : bad(`status: ${status}`);
// Second turn: the conversation so far is sent with it.
await evaluate(`document.getElementById('input').value = 'And the sky?'; document.getElementById('form').requestSubmit(); true`);
await waitFor(`document.querySelectorAll('.msg[data-done]').length === 2`, 'the second reply');
const n = await evaluate(`document.querySelectorAll('.msg').length`);
n === 4 ? ok('two turns: 4 messages on the page') : bad(`messages on the page: ${n}`);
const errs = await evaluate(`document.querySelectorAll('.msg.error').length`);
errs === 0 ? ok('no error messages') : bad(`${errs} error message(s): ` + await evaluate(`document.querySelector('.msg.error').textContent`));
const shot = await send('Page.captureScreenshot', { format: 'png' }, sessionId);
if (shot.result?.data) {
  writeFileSync(png, Buffer.from(shot.result.data, 'base64'));
  ok(`screenshot: ${png}`);
} else bad('no screenshot');
clearTimeout(deadline);
ws.close();
await killAll();
process.exit(fails ? 1 : 0);
