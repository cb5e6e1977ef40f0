// The chat page served at / by llmq serve: one self-contained HTML file (no CDN, no build
// step) that streams /v1/chat/completions and shows tokens per second.
#pragma once

namespace llmq::serve {

inline constexpr const char* kChatPage = R"HTML(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>llmq chat</title>
<style>
body{font-family:system-ui,sans-serif;max-width:820px;margin:0 auto;padding:1rem;background:#fafafa;color:#222}
h1{font-size:1.2rem;margin:.2rem 0 1rem}
#log{display:flex;flex-direction:column;gap:.6rem;margin-bottom:1rem}
.msg{padding:.6rem .8rem;border-radius:.5rem;white-space:pre-wrap;line-height:1.4}
.user{background:#dbeafe;align-self:flex-end;max-width:85%}
.assistant{background:#fff;border:1px solid #ddd;max-width:95%}
.error{background:#fee2e2}
form{display:flex;gap:.5rem}
textarea{flex:1;font:inherit;padding:.5rem;min-height:3rem}
button{font:inherit;padding:.5rem 1rem}
#status{color:#666;font-size:.85rem;margin-top:.5rem;min-height:1.2em}
details{margin-bottom:.8rem;font-size:.9rem}
details label{display:inline-block;margin-right:1rem}
input[type=number]{width:5rem}
</style></head><body>
<h1>llmq chat <span id="model" style="color:#666;font-weight:normal"></span></h1>
<details><summary>settings</summary>
<label>system <input id="system" size="40" placeholder="(none)"></label>
<label>temperature <input id="temperature" type="number" step="0.1" min="0" value="0.7"></label>
<label>max tokens <input id="max_tokens" type="number" min="1" value="256"></label>
<label>API key <input id="key" type="password" size="16"></label>
</details>
<div id="log"></div>
<form id="form"><textarea id="input" placeholder="Message (Enter sends, Shift+Enter for a new line)"></textarea>
<button id="send" type="submit">Send</button></form>
<div id="status"></div>
<script>
const log = document.getElementById('log'), input = document.getElementById('input'), status = document.getElementById('status');
const conv = [];
function headers() {
  const h = {'Content-Type': 'application/json'}, k = document.getElementById('key').value;
  if (k) h['Authorization'] = 'Bearer ' + k;
  return h;
}
fetch('/v1/models', {headers: headers()}).then(r => r.json()).then(j => {
  if (j.data) document.getElementById('model').textContent = j.data[0].id;
}).catch(() => {});
function add(role, text) {
  const d = document.createElement('div');
  d.className = 'msg ' + role;
  d.textContent = text;
  log.appendChild(d);
  window.scrollTo(0, document.body.scrollHeight);
  return d;
}
input.addEventListener('keydown', e => {
  if (e.key === 'Enter' && !e.shiftKey) { e.preventDefault(); document.getElementById('form').requestSubmit(); }
});
document.getElementById('form').addEventListener('submit', async e => {
  e.preventDefault();
  const text = input.value.trim();
  if (!text) return;
  input.value = '';
  conv.push({role: 'user', content: text});
  add('user', text);
  const out = add('assistant', '');
  const sys = document.getElementById('system').value;
  const messages = (sys ? [{role: 'system', content: sys}] : []).concat(conv);
  const body = {messages, stream: true, stream_options: {include_usage: true},
                temperature: parseFloat(document.getElementById('temperature').value),
                max_tokens: parseInt(document.getElementById('max_tokens').value)};
  document.getElementById('send').disabled = true;
  const t0 = performance.now();
  let first = 0, ntok = 0, reply = '';
  try {
    const r = await fetch('/v1/chat/completions', {method: 'POST', headers: headers(), body: JSON.stringify(body)});
    if (!r.ok) { const j = await r.json(); throw new Error(j.error ? j.error.message : r.statusText); }
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = '';
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += dec.decode(value, {stream: true});
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i); buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ')) continue;
        const data = ev.slice(6);
        if (data === '[DONE]') continue;
        const j = JSON.parse(data);
        if (j.error) throw new Error(j.error.message);
        if (j.usage) ntok = j.usage.completion_tokens;
        for (const c of j.choices || []) {
          const piece = c.delta && c.delta.content;
          if (piece) {
            if (!first) first = performance.now();
            reply += piece;
            out.textContent = reply;
            window.scrollTo(0, document.body.scrollHeight);
          }
        }
        const secs = (performance.now() - (first || t0)) / 1000;
        status.textContent = ntok ? `${ntok} tokens, ${(ntok / Math.max(secs, 1e-3)).toFixed(1)} tok/s` : 'streaming...';
      }
    }
    conv.push({role: 'assistant', content: reply});
    const ttft = first ? ((first - t0) / 1000).toFixed(2) : '-';
    const secs = (performance.now() - (first || t0)) / 1000;
    status.textContent = `${ntok} tokens, ${(ntok / Math.max(secs, 1e-3)).toFixed(1)} tok/s, first token after ${ttft} s`;
    out.dataset.done = '1';
  } catch (err) {
    out.className = 'msg error';
    out.textContent = 'error: ' + err.message;
    out.dataset.done = '1';
  }
  document.getElementById('send').disabled = false;
  input.focus();
});
// ?prompt=TEXT[&max_tokens=N&temperature=T&key=K] sends one message on load (scripted checks).
const q = new URLSearchParams(location.search);
for (const k of ['max_tokens', 'temperature', 'key', 'system']) if (q.get(k) !== null) document.getElementById(k).value = q.get(k);
if (q.get('prompt')) { input.value = q.get('prompt'); document.getElementById('form').requestSubmit(); }
</script></body></html>
)HTML";

}  // namespace llmq::serve
