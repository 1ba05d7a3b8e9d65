// The drover dashboard: the token form, the runs list, a run (its plan as a
// graph, live from the event stream, a task's output streaming, the
// operator's actions), schedules and fleet snapshots. Hash routes:
// #/runs, #/runs/<id>, #/schedules, #/fleet. Everything comes from the
// documented API (api.js); nothing is loaded from elsewhere.

import { api, follow, token, setToken, forgetToken, whenUnauthorized, ApiError } from './api.js';
import { RunGraph, GLYPH, LEGEND } from './graph.js';

const $ = (sel, root = document) => root.querySelector(sel);

const RUN_STATES = ['queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled', 'aborted', 'rolling_back', 'rolled_back'];
const FINAL = new Set(['succeeded', 'failed', 'cancelled', 'rolled_back']);

/** The run actions: when each makes sense, and what the confirmation says. */
const ACTIONS = [
  { key: 'pause', label: 'Pause', when: ['queued', 'running'], ask: 'Pause run {id}? Tasks already running finish; no new task starts until it is resumed.' },
  { key: 'resume', label: 'Resume', when: ['paused', 'aborted'], ask: 'Resume run {id}?' },
  { key: 'cancel', label: 'Cancel', when: ['queued', 'running', 'paused'], ask: 'Cancel run {id}? Running tasks are stopped.' },
  { key: 'retry', label: 'Retry run', when: ['failed', 'cancelled', 'aborted'], ask: 'Retry run {id}: all its failed and cancelled tasks?' },
  { key: 'rollback', label: 'Roll back', when: ['succeeded', 'failed', 'cancelled', 'aborted'], ask: 'Roll back run {id}? What it did is undone (servers deleted, taskservs removed).' },
];

let me = null; // { name, role }
let dispose = () => {};

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') e.textContent = v;
    else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function when(ms) {
  return ms ? new Date(ms).toLocaleString() : '—';
}

function duration(ms) {
  if (ms === null || ms === undefined || ms < 0) return '—';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, '0')} min`;
}

function badge(status) {
  return el('span', { class: `badge st-${status}`, 'data-status': status }, status.replace('_', ' '));
}

function canSteer() {
  return me && (me.role === 'operator' || me.role === 'admin');
}

function alertBox() {
  return el('div', { class: 'alert', role: 'alert', 'data-testid': 'alert' });
}

function showError(box, e) {
  box.textContent = e instanceof ApiError ? `${e.status ? `${e.status}: ` : ''}${e.message}` : String(e);
  box.classList.add('shown');
}

function clearError(box) {
  box.textContent = '';
  box.classList.remove('shown');
}

// ---------------------------------------------------------------- login

function showLogin(message) {
  dispose();
  dispose = () => {};
  me = null;
  $('#view').hidden = true;
  $('#view').replaceChildren();
  $('#nav').hidden = true;
  $('#who').hidden = true;
  $('#login').hidden = false;
  $('#token-error').textContent = message || '';
  $('#token-input').value = '';
  $('#token-input').focus();
}

async function signIn() {
  try {
    me = await api('/whoami');
  } catch (e) {
    if (e.status === 401) {
      forgetToken();
      showLogin(`Token refused: ${e.message}`);
    } else {
      showLogin(`Cannot check the token: ${e.message}`);
    }
    return;
  }
  $('#login').hidden = true;
  $('#nav').hidden = false;
  $('#who').hidden = false;
  $('#whoami').textContent = `${me.name} (${me.role})`;
  $('#whoami').dataset.role = me.role;
  $('#view').hidden = false;
  route();
}

// ---------------------------------------------------------------- routing

function route() {
  if (!me) return;
  dispose();
  dispose = () => {};
  const hash = location.hash || '#/runs';
  const view = $('#view');
  view.replaceChildren();
  let m;
  let section = 'runs';
  if ((m = hash.match(/^#\/runs\/(.+)$/))) {
    dispose = runView(view, decodeURIComponent(m[1]));
  } else if (hash === '#/schedules') {
    section = 'schedules';
    dispose = schedulesView(view);
  } else if (hash === '#/fleet') {
    section = 'fleet';
    dispose = fleetView(view);
  } else {
    dispose = runsView(view);
  }
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const h1 = $('h1', view);
  if (h1) {
    h1.tabIndex = -1;
    h1.focus({ preventScroll: true });
  }
}

/** Call `f` now and every `ms` while the page is visible; a stopper. */
function every(ms, f) {
  let stopped = false;
  let timer = 0;
  const tick = async () => {
    if (stopped) return;
    if (!document.hidden) {
      try {
        await f();
      } catch {
        /* shown by f */
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---------------------------------------------------------------- runs

function runsView(view) {
  const status = el('select', { id: 'f-status', 'data-testid': 'status-filter' },
    el('option', { value: '' }, 'any'),
    RUN_STATES.map((s) => el('option', { value: s }, s.replace('_', ' '))));
  const wf = el('input', { id: 'f-workflow', type: 'search', 'data-testid': 'workflow-filter', placeholder: 'name contains…', autocomplete: 'off' });
  const box = alertBox();
  const tbody = el('tbody');
  const summary = el('p', { class: 'muted', 'aria-live': 'polite', 'data-testid': 'runs-summary' });
  view.append(
    el('h1', {}, 'Runs'),
    el('form', { class: 'filters', role: 'search', 'aria-label': 'Filter runs', onsubmit: (e) => e.preventDefault() },
      el('label', { for: 'f-status' }, 'Status'), status,
      el('label', { for: 'f-workflow' }, 'Workflow'), wf),
    box,
    summary,
    el('div', { class: 'table-wrap' },
      el('table', { class: 'runs', 'data-testid': 'runs-table' },
        el('caption', { class: 'sr-only' }, 'Runs, newest first'),
        el('thead', {}, el('tr', {},
          ['Run', 'Status', 'Workflow', 'Submitted by', 'Started', 'Duration'].map((h) => el('th', { scope: 'col' }, h)))),
        tbody)),
  );
  let last = null;
  const draw = () => {
    if (!last) return;
    const needle = wf.value.trim().toLowerCase();
    const runs = last.runs.filter((r) => !needle || r.workflow.toLowerCase().includes(needle));
    const now = Date.now();
    tbody.replaceChildren(...runs.map((r) => el('tr', { 'data-testid': 'run-row', 'data-run-id': r.run_id, 'data-status': r.status },
      el('td', {}, el('a', { href: `#/runs/${encodeURIComponent(r.run_id)}` }, r.run_id)),
      el('td', {}, badge(r.status)),
      el('td', {}, r.workflow),
      el('td', {}, r.submitted_by || '—'),
      el('td', {}, when(r.created_at_ms)),
      el('td', {}, duration((FINAL.has(r.status) ? r.updated_at_ms : now) - r.created_at_ms)),
    )));
    if (!runs.length) tbody.append(el('tr', {}, el('td', { colspan: 6, class: 'muted' }, 'No runs match.')));
    summary.textContent = `${runs.length} run${runs.length === 1 ? '' : 's'} shown · ${last.queue_depth} queued`;
  };
  const load = async () => {
    const q = new URLSearchParams({ limit: '200' });
    if (status.value) q.set('status', status.value);
    try {
      last = await api(`/workflows?${q}`);
      clearError(box);
      draw();
    } catch (e) {
      showError(box, e);
    }
  };
  status.addEventListener('change', load);
  wf.addEventListener('input', draw);
  return every(2000, load);
}

// ---------------------------------------------------------------- a run

/** A journal event's effect on its task: [state, rollback] (undefined = unchanged). */
function taskEffect(ev) {
  switch (ev.event) {
    case 'task_started': return ['running', undefined];
    case 'task_succeeded': return ['succeeded', undefined];
    case 'task_failed': return [ev.will_retry ? 'waiting' : 'failed', undefined];
    case 'task_retrying': return ['waiting', undefined];
    case 'task_skipped': return ['skipped', undefined];
    case 'task_cancelled': return ['cancelled', undefined];
    case 'undo_started': return [null, 'undoing'];
    case 'undo_succeeded': return [null, 'undone'];
    case 'undo_failed': return [null, `undo failed: ${ev.error}`];
    case 'not_undoable': return [null, `cannot be undone: ${ev.reason}`];
    default: return null;
  }
}

/** Run-level events: the status they imply, and a line for the timeline. */
function runEffect(ev) {
  switch (ev.event) {
    case 'run_started': return ['running', ev.resumed ? 'run resumed' : 'run started'];
    case 'run_paused': return ['paused', 'run paused'];
    case 'run_unpaused': return ['running', 'run unpaused'];
    case 'cancel_requested': return [null, 'cancel requested'];
    case 'run_finished': return [ev.status, `run finished: ${ev.status}${ev.reason ? ` — ${ev.reason}` : ''}`];
    case 'rollback_started': return ['rolling_back', `rollback started${ev.by_hand ? ' (by hand)' : ''}: ${ev.reason}`];
    case 'rollback_finished': return [null, `rollback finished${ev.complete ? '' : ' (incomplete)'}`];
    case 'checkpoint': return [null, null];
    default: return null;
  }
}

function runView(view, id) {
  const box = alertBox();
  const notice = el('p', { class: 'notice', role: 'status', 'data-testid': 'notice' });
  view.append(el('h1', {}, 'Run ', el('code', {}, id)), el('p', { class: 'muted', text: 'Loading…' }));
  let closed = false;
  const cleanups = [];
  const stop = () => {
    closed = true;
    cleanups.forEach((f) => f());
  };
  (async () => {
    let graph;
    let status;
    try {
      [graph, status] = await Promise.all([api(`/workflows/${encodeURIComponent(id)}/graph`), api(`/workflows/${encodeURIComponent(id)}/status`)]);
    } catch (e) {
      view.replaceChildren(el('h1', {}, 'Run ', el('code', {}, id)), box, el('p', {}, el('a', { href: '#/runs' }, 'Back to the runs')));
      showError(box, e);
      return;
    }
    if (closed) return;
    const started = performance.now();
    buildRun(view, id, graph, status, box, notice, cleanups, () => closed);
    window.droverRenderMs = performance.now() - started;
  })();
  return stop;
}

function buildRun(view, id, graph, status, box, notice, cleanups, isClosed) {
  const enc = encodeURIComponent(id);
  let runStatus = status.status;
  let lastStatus = status;
  const history = new Map(); // task -> [{at, text}]
  const h1 = el('h1', {}, 'Run ', el('code', {}, id));
  const statusEl = el('span', { 'data-testid': 'run-status' });
  const reason = el('p', { class: 'reason', 'data-testid': 'run-reason' });
  const meta = el('p', { class: 'muted' });
  const counters = el('dl', { class: 'counters', 'data-testid': 'counters' });
  const progress = el('progress', { max: 100, value: 0, id: 'run-progress', 'aria-label': 'Progress' });
  const timeline = el('ol', { class: 'timeline', 'data-testid': 'timeline', 'aria-live': 'polite', 'aria-label': 'Run events, latest first' });

  // Actions
  const actions = el('div', { class: 'actions', role: 'toolbar', 'aria-label': 'Run actions', 'data-testid': 'actions' });
  const buttons = new Map();
  const opSelect = el('select', { id: 'retry-op', 'data-testid': 'retry-op-select' }, graph.operations.map((o) => el('option', { value: o }, o)));
  const act = async (key, body, label) => {
    const a = ACTIONS.find((x) => x.key === key);
    const text = key === 'retry' && body ? `Retry operation ${body.operation} of run ${id}?` : a.ask.replace('{id}', id);
    if (!window.confirm(text)) return;
    clearError(box);
    notice.textContent = `${label}: sent…`;
    try {
      const r = await api(`/workflows/${enc}/${key}`, { method: 'POST', body });
      notice.textContent = `${label}: accepted (run ${r.status}).`;
    } catch (e) {
      notice.textContent = '';
      showError(box, e);
    }
    await refresh();
    if (!events.open) openEvents();
  };
  if (canSteer()) {
    for (const a of ACTIONS) {
      const b = el('button', { type: 'button', 'data-testid': `action-${a.key}`, onclick: () => act(a.key, undefined, a.label) }, a.label);
      buttons.set(a.key, b);
      actions.append(b);
    }
    const rb = el('button', { type: 'button', 'data-testid': 'action-retry-op', onclick: () => act('retry', { operation: opSelect.value }, `Retry ${opSelect.value}`) }, 'Retry operation');
    buttons.set('retry-op', rb);
    actions.append(el('span', { class: 'group' }, el('label', { for: 'retry-op' }, 'Operation'), opSelect, rb));
  } else {
    actions.append(el('p', { class: 'muted', 'data-testid': 'read-only' }, `Read-only: a ${me ? me.role : 'viewer'} token cannot steer runs.`));
  }

  // Graph tools
  const search = el('input', { id: 'task-search', type: 'search', 'data-testid': 'task-search', placeholder: 'task id, server…', autocomplete: 'off' });
  const found = el('span', { class: 'muted', 'aria-live': 'polite', 'data-testid': 'search-count' });
  const zoomLabel = el('span', { class: 'muted', 'data-testid': 'zoom-level' }, '100 %');
  const host = el('div', { class: 'graph', 'data-testid': 'graph', tabindex: '-1' });
  const tools = el('div', { class: 'graph-tools', role: 'toolbar', 'aria-label': 'Graph' },
    el('label', { for: 'task-search' }, 'Find a task'), search, found,
    el('span', { class: 'group' },
      el('button', { type: 'button', 'aria-label': 'Zoom out', 'data-testid': 'zoom-out', onclick: () => showZoom(g.zoom(1 / 1.25)) }, '−'),
      zoomLabel,
      el('button', { type: 'button', 'aria-label': 'Zoom in', 'data-testid': 'zoom-in', onclick: () => showZoom(g.zoom(1.25)) }, '+'),
      el('button', { type: 'button', 'data-testid': 'zoom-fit', onclick: () => showZoom(g.fit()) }, 'Fit'),
      el('button', { type: 'button', 'data-testid': 'zoom-reset', onclick: () => showZoom(g.zoom(1, true)) }, '100 %')),
    el('span', { class: 'group' },
      el('button', { type: 'button', 'data-testid': 'collapse-all', onclick: () => g.collapseAll(true) }, 'Collapse all'),
      el('button', { type: 'button', 'data-testid': 'expand-all', onclick: () => g.collapseAll(false) }, 'Expand all')),
  );
  const legend = el('ul', { class: 'legend', 'aria-label': 'Legend' },
    LEGEND.map((s) => el('li', { 'data-state': s }, el('span', { class: 'swatch', 'aria-hidden': 'true' }, GLYPH[s]), s)),
    el('li', { 'data-rollback': 'undone' }, el('span', { class: 'swatch', 'aria-hidden': 'true' }, '↺'), 'rolled back'));

  // The task panel
  const panel = el('aside', { class: 'task-panel', 'aria-labelledby': 'task-title', 'data-testid': 'task-panel' });
  const panelEmpty = () => panel.replaceChildren(el('h2', { id: 'task-title' }, 'Task'), el('p', { class: 'muted' }, 'Select a task in the graph (click it, or Tab to it and press Enter) to see its attempts, errors and output.'));
  panelEmpty();
  let output = null;

  const hadFocus = view.contains(document.activeElement);
  view.replaceChildren(
    el('div', { class: 'run-head' },
      el('div', {}, h1, el('p', {}, statusEl, ' ', el('span', { class: 'muted' }, graph.workflow)), meta, reason),
      el('div', { class: 'progress' }, counters, el('label', { for: 'run-progress', class: 'sr-only' }, 'Progress'), progress)),
    actions, box, notice,
    tools, legend,
    el('div', { class: 'run-body' }, host, panel),
    el('section', { class: 'events', 'aria-labelledby': 'events-title' }, el('h2', { id: 'events-title' }, 'Run events'), timeline),
  );

  if (hadFocus) {
    h1.tabIndex = -1;
    h1.focus({ preventScroll: true });
  }
  const g = new RunGraph(host, graph, { onSelect: (t) => showTask(t) });
  applyStatus(status);
  g.render();
  const showZoom = (s) => { zoomLabel.textContent = `${Math.round(s * 100)} %`; };
  search.addEventListener('input', () => {
    const r = g.search(search.value);
    found.textContent = search.value.trim() ? `${r.count} match${r.count === 1 ? '' : 'es'}` : '';
  });
  search.addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    e.preventDefault();
    const r = g.search(search.value);
    if (r.first) {
      g.select(r.first);
      g.focusTask(r.first);
    }
  });

  function drawHead() {
    statusEl.replaceChildren(badge(runStatus));
    statusEl.dataset.status = runStatus;
    const c = g.counts();
    const pct = c.total ? Math.floor((100 * c.settled) / c.total) : 0;
    counters.dataset.total = c.total;
    counters.dataset.succeeded = c.succeeded;
    counters.dataset.failed = c.failed;
    counters.dataset.percent = pct;
    const item = (k, v, cls) => [el('dt', {}, k), el('dd', { class: cls }, String(v))];
    counters.replaceChildren(...item('Tasks', c.total), ...item('Done', c.succeeded, 'ok'), ...item('Failed', c.failed, c.failed ? 'bad' : ''), ...item('Running', c.running), ...item('Progress', `${pct} %`), ...(c.undone ? item('Undone', c.undone, 'undone') : []));
    progress.value = pct;
    progress.textContent = `${pct} %`;
    for (const a of ACTIONS) {
      const b = buttons.get(a.key);
      if (b) b.disabled = !a.when.includes(runStatus);
    }
    const rb = buttons.get('retry-op');
    if (rb) rb.disabled = !ACTIONS.find((a) => a.key === 'retry').when.includes(runStatus);
    document.title = `${runStatus} · ${graph.workflow} · drover`;
  }

  function applyStatus(s) {
    lastStatus = s;
    runStatus = s.status;
    reason.textContent = s.reason || '';
    meta.textContent = `Submitted by ${s.submitted_by || '—'} · started ${when(s.created_at_ms)} · ${duration((FINAL.has(s.status) ? s.updated_at_ms : Date.now()) - s.created_at_ms)}`;
    for (const op of s.operations) for (const t of op.tasks) g.setState(t.id, t.status, t.rollback || null);
    g.settle && g.els && g.settle();
    drawHead();
    if (g.selected) showTask(g.selected, true);
  }

  async function refresh() {
    try {
      applyStatus(await api(`/workflows/${enc}/status`));
    } catch (e) {
      showError(box, e);
    }
  }

  let headTimer = 0;
  const drawSoon = () => {
    if (!headTimer) headTimer = setTimeout(() => { headTimer = 0; g.settle(); drawHead(); }, 100);
  };

  const addLine = (at, text, cls) => {
    timeline.prepend(el('li', { class: cls || '' }, el('time', { datetime: new Date(at).toISOString() }, new Date(at).toLocaleTimeString()), ' ', text));
    while (timeline.children.length > 100) timeline.lastChild.remove();
  };

  const events = { open: false, handle: null, last: null };
  function openEvents() {
    events.open = true;
    events.handle = follow(`/workflows/${enc}/events?follow=true`, {
      after: events.last,
      onEvent: (m) => {
        if (m.event !== 'transition') return;
        const j = m.data;
        events.last = j.seq;
        const ev = j.event || {};
        const te = j.node ? taskEffect(ev) : null;
        if (te && g.byId.has(j.node)) {
          g.setState(j.node, te[0], te[1]);
          const h = history.get(j.node) || [];
          h.push({ at: j.at_ms, ev });
          history.set(j.node, h);
          if (ev.event === 'task_failed' && !ev.will_retry) addLine(j.at_ms, `${j.node} failed: ${ev.error}`, 'bad');
          if (ev.event === 'undo_succeeded') addLine(j.at_ms, `${j.node} undone`, 'undone');
          if (ev.event === 'undo_failed') addLine(j.at_ms, `${j.node}: undo failed: ${ev.error}`, 'bad');
          if (ev.event === 'not_undoable') addLine(j.at_ms, `${j.node} cannot be undone: ${ev.reason}`, 'bad');
          if (g.selected === j.node) showTask(j.node, true);
          drawSoon();
          return;
        }
        const re = runEffect(ev);
        if (re) {
          if (re[0]) runStatus = re[0];
          if (re[1]) addLine(j.at_ms, re[1], ev.event.startsWith('rollback') ? 'undone' : '');
          drawSoon();
          if (ev.event === 'run_finished' || ev.event === 'rollback_finished') refresh();
        }
      },
      onEnd: () => {
        events.open = false;
        refresh();
      },
      onError: (e) => showError(box, e),
    });
  }
  openEvents();
  const poll = setInterval(() => { if (!document.hidden && !FINAL.has(runStatus)) refresh(); }, 10000);
  cleanups.push(() => {
    if (events.handle) events.handle.close();
    if (output) output.close();
    clearInterval(poll);
    clearTimeout(headTimer);
  });

  function taskStatus(tid) {
    for (const op of lastStatus.operations) for (const t of op.tasks) if (t.id === tid) return t;
    return null;
  }

  let shownTask = null;
  let pre = null;
  function showTask(tid, update) {
    if (!tid) {
      if (output) output.close();
      output = null;
      shownTask = null;
      panelEmpty();
      return;
    }
    const t = g.byId.get(tid);
    const st = taskStatus(tid) || {};
    const rows = [
      ['State', el('span', { 'data-testid': 'task-state' }, badge(t.state))],
      ['Server', t.server || st.server || '—'],
      ['Taskserv', t.taskserv || '—'],
      ['Action', st.action || '—'],
      ['Attempts', String(st.attempts ?? '—')],
      ['Time', duration(st.duration_ms)],
    ];
    if (st.error) rows.push(['Error', el('span', { class: 'bad', 'data-testid': 'task-error' }, st.error)]);
    if (st.failure) rows.push(['Failure', st.failure]);
    if (t.rollback || st.rollback) rows.push(['Rollback', el('span', { 'data-testid': 'task-rollback' }, t.rollback || st.rollback)]);
    const attempts = el('ol', { class: 'attempts', 'data-testid': 'task-attempts' },
      (history.get(tid) || []).map((h) => el('li', {}, el('time', {}, new Date(h.at).toLocaleTimeString()), ' ', describe(h.ev))));
    const details = el('dl', { class: 'task-details' }, rows.map(([k, v]) => [el('dt', {}, k), el('dd', {}, v)]));
    if (update && shownTask === tid) {
      panel.querySelector('.task-details').replaceWith(details);
      panel.querySelector('.attempts').replaceWith(attempts);
      return;
    }
    shownTask = tid;
    if (output) output.close();
    pre = el('pre', { class: 'output', 'data-testid': 'task-output', 'aria-live': 'polite', 'aria-label': `Output of ${tid}`, tabindex: '0' });
    panel.replaceChildren(
      el('h2', { id: 'task-title' }, el('code', {}, tid)),
      el('button', { type: 'button', class: 'close', 'aria-label': 'Close the task panel', onclick: () => g.select(null) }, '×'),
      details,
      el('h3', {}, 'Attempts'), attempts,
      el('h3', {}, 'Output'), pre,
    );
    let lines = 0;
    output = follow(`/workflows/${enc}/logs?follow=true&task=${encodeURIComponent(tid)}`, {
      onEvent: (m) => {
        if (m.event !== 'log') return;
        const span = el('span', { class: m.data.stream === 'stderr' ? 'stderr' : '' }, `${m.data.line}\n`);
        pre.append(span);
        if (++lines > 5000) pre.firstChild.remove();
        pre.scrollTop = pre.scrollHeight;
      },
      onEnd: () => {
        if (!lines) pre.textContent = '(no output)';
        pre.dataset.ended = 'true';
      },
      onError: (e) => { pre.textContent = `Output unavailable: ${e.message}`; },
    });
  }
  drawHead();
  return g;
}

function describe(ev) {
  switch (ev.event) {
    case 'task_started': return `attempt ${ev.attempt} started`;
    case 'task_succeeded': return `attempt ${ev.attempt} succeeded in ${duration(ev.duration_ms)}`;
    case 'task_failed': return `attempt ${ev.attempt} failed (${ev.kind || 'transient'}${ev.will_retry ? ', will retry' : ''}): ${ev.error}`;
    case 'task_retrying': return `attempt ${ev.next_attempt} in ${duration(ev.delay_ms)}`;
    case 'task_skipped': return `skipped: ${ev.reason}`;
    case 'task_cancelled': return `cancelled: ${ev.reason}`;
    case 'undo_started': return `undo started (${ev.action})`;
    case 'undo_succeeded': return 'undone';
    case 'undo_failed': return `undo failed: ${ev.error}`;
    case 'not_undoable': return `cannot be undone: ${ev.reason}`;
    default: return ev.event;
  }
}

// ---------------------------------------------------------------- schedules

function schedulesView(view) {
  const box = alertBox();
  const tbody = el('tbody');
  view.append(
    el('h1', {}, 'Schedules'), box,
    el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'schedules-table' },
      el('caption', { class: 'sr-only' }, 'Schedules, oldest first'),
      el('thead', {}, el('tr', {}, ['Schedule', 'Starts', 'When', 'Next', 'Last run', 'State', ''].map((h) => el('th', { scope: 'col' }, h)))),
      tbody)),
  );
  const steer = async (s, action) => {
    if (!window.confirm(`${action === 'pause' ? 'Pause' : 'Resume'} schedule ${s.id}?`)) return;
    try {
      await api(`/schedules/${encodeURIComponent(s.id)}/${action}`, { method: 'POST' });
      clearError(box);
    } catch (e) {
      showError(box, e);
    }
    load();
  };
  const load = async () => {
    let list;
    try {
      list = await api('/schedules');
      clearError(box);
    } catch (e) {
      showError(box, e);
      return;
    }
    tbody.replaceChildren(...list.schedules.map((s) => el('tr', { 'data-testid': 'schedule-row', 'data-schedule': s.id, 'data-paused': String(s.paused) },
      el('td', {}, el('code', {}, s.id)),
      el('td', {}, `${s.kind}: ${s.target}`),
      el('td', {}, `${s.cron} (${s.timezone})`),
      el('td', {}, s.paused ? '—' : (s.next_run_ms ? when(s.next_run_ms) : '—')),
      el('td', {}, s.last_run ? el('a', { href: `#/runs/${encodeURIComponent(s.last_run.run_id || '')}` }, s.last_status || 'run') : '—'),
      el('td', {}, s.paused ? badge('paused') : badge('active')),
      el('td', {}, canSteer()
        ? el('button', { type: 'button', 'data-testid': s.paused ? 'schedule-resume' : 'schedule-pause', onclick: () => steer(s, s.paused ? 'resume' : 'pause') }, s.paused ? 'Resume' : 'Pause')
        : ''),
    )));
    if (!list.schedules.length) tbody.append(el('tr', {}, el('td', { colspan: 7, class: 'muted' }, 'No schedules.')));
  };
  return every(5000, load);
}

// ---------------------------------------------------------------- fleet

function fleetView(view) {
  const box = alertBox();
  const tbody = el('tbody');
  view.append(
    el('h1', {}, 'Fleet'),
    el('h2', {}, 'Snapshots'),
    el('p', { class: 'muted' }, 'Files and command outputs recorded from servers (drover fleet snapshot); drift is checked against them with drover fleet drift.'),
    box,
    el('div', { class: 'table-wrap' }, el('table', { 'data-testid': 'snapshots-table' },
      el('caption', { class: 'sr-only' }, 'Fleet snapshots'),
      el('thead', {}, el('tr', {}, ['Snapshot', 'Name', 'Taken', 'Fleet file', 'Records'].map((h) => el('th', { scope: 'col' }, h)))),
      tbody)),
  );
  const load = async () => {
    let list;
    try {
      list = await api('/fleet/snapshots');
      clearError(box);
    } catch (e) {
      showError(box, e);
      return;
    }
    tbody.replaceChildren(...list.snapshots.map((s) => el('tr', { 'data-testid': 'snapshot-row' },
      el('td', {}, el('code', {}, s.id)),
      el('td', {}, s.name || '—'),
      el('td', {}, when(s.created_at_ms)),
      el('td', {}, s.file),
      el('td', {}, `${((s.spec && s.spec.files) || []).length} files, ${((s.spec && s.spec.commands) || []).length} commands`),
    )));
    if (!list.snapshots.length) tbody.append(el('tr', {}, el('td', { colspan: 5, class: 'muted' }, 'No snapshots.')));
  };
  return every(10000, load);
}

// ---------------------------------------------------------------- start

function start() {
  $('#token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = $('#token-input').value.trim();
    if (!t) return;
    setToken(t);
    $('#token-error').textContent = 'Checking…';
    signIn();
  });
  $('#forget').addEventListener('click', () => {
    forgetToken();
    showLogin('Token forgotten.');
  });
  whenUnauthorized((e) => {
    forgetToken();
    showLogin(`Token refused: ${e.message}`);
  });
  window.addEventListener('hashchange', route);
  if (token()) signIn();
  else showLogin('');
}

start();
