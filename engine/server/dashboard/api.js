// The dashboard's only way to the server: the documented API, with the
// token the operator entered (kept in sessionStorage: this tab's session
// only). Event streams are read with fetch() so they carry the token too.

const KEY = 'drover.token';

export function token() {
  return sessionStorage.getItem(KEY) || '';
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

/** An API answer other than 2xx: its HTTP status, code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let onUnauthorized = () => {};

/** What to do when the server refuses the token (401). */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

function headers(extra) {
  return Object.assign({ Authorization: `Bearer ${token()}` }, extra);
}

/** Call an endpoint; its JSON body, or an ApiError. */
export async function api(path, { method = 'GET', body } = {}) {
  const init = { method, headers: headers({ Accept: 'application/json' }), cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `The server cannot be reached (${e.message}).`);
  }
  const text = await r.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!r.ok) {
    const err = new ApiError(r.status, data && data.code, (data && data.message) || `${r.status} ${r.statusText}`);
    if (r.status === 401) onUnauthorized(err);
    throw err;
  }
  return data;
}

/** Parse one SSE block (`id:`, `event:`, `data:` lines); null for comments only. */
function parseBlock(block) {
  let id = null;
  let event = 'message';
  const data = [];
  let any = false;
  for (const line of block.split('\n')) {
    if (!line || line.startsWith(':')) continue;
    const i = line.indexOf(':');
    const field = i < 0 ? line : line.slice(0, i);
    let value = i < 0 ? '' : line.slice(i + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    any = true;
    if (field === 'id') id = value;
    else if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
  }
  if (!any) return null;
  let parsed = null;
  try {
    parsed = JSON.parse(data.join('\n'));
  } catch {
    parsed = data.join('\n');
  }
  return { id, event, data: parsed };
}

/**
 * Follow a server-sent event stream. `onEvent(ev)` for each event; `onEnd()`
 * when the server ends the stream (the run is over). A dropped connection is
 * reopened after the last event seen (Last-Event-ID), with a growing delay.
 * Returns { close(), lastId() }.
 */
export function follow(path, { onEvent, onEnd = () => {}, onError = () => {}, after = null }) {
  const ctrl = new AbortController();
  let last = after;
  let closed = false;
  let delay = 500;
  const run = async () => {
    while (!closed) {
      try {
        const h = headers({ Accept: 'text/event-stream' });
        if (last !== null) h['Last-Event-ID'] = String(last);
        const r = await fetch(path, { headers: h, signal: ctrl.signal, cache: 'no-store' });
        if (!r.ok) {
          let msg = `${r.status} ${r.statusText}`;
          try {
            msg = (await r.json()).message || msg;
          } catch {
            /* not JSON */
          }
          const err = new ApiError(r.status, null, msg);
          if (r.status === 401) onUnauthorized(err);
          onError(err);
          if (r.status >= 400 && r.status < 500) return;
          throw err;
        }
        delay = 500;
        const reader = r.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const ev = parseBlock(buf.slice(0, end));
            buf = buf.slice(end + 2);
            if (!ev) continue;
            if (ev.id !== null) last = ev.id;
            onEvent(ev);
          }
        }
        if (!closed) onEnd();
        return;
      } catch (e) {
        if (closed || e.name === 'AbortError') return;
        await new Promise((res) => setTimeout(res, delay));
        delay = Math.min(delay * 2, 10000);
      }
    }
  };
  run();
  return {
    close() {
      closed = true;
      ctrl.abort();
    },
    lastId: () => last,
  };
}
