// A run's plan drawn as SVG: operations as groups laid out in columns (in
// dependency order), tasks as nodes inside them (a grid when an operation
// has many), dependency edges between operations, and the selected task's
// own edges. Gates (join points doing no work) are not drawn: edges go
// through them. Colours come from the stylesheet by data-state, and every
// node also carries a glyph and an aria-label, so colour is never the only
// cue. Built as one string and inserted at once: 1,000+ nodes stay fast.

const SVGNS = 'http://www.w3.org/2000/svg';

/** A short glyph per state (colour is not the only cue). */
export const GLYPH = {
  pending: '○',
  ready: '◌',
  running: '▶',
  waiting: '◷',
  retrying: '↻',
  succeeded: '✓',
  failed: '✗',
  skipped: '–',
  cancelled: '⊘',
};

/** The states in the legend, in order. */
export const LEGEND = ['pending', 'running', 'waiting', 'succeeded', 'failed', 'skipped', 'cancelled'];

const SETTLED = new Set(['succeeded', 'failed', 'skipped', 'cancelled']);

export function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

const PAD = 8;
const HEAD = 30;
const COL_GAP = 70;
const ROW_GAP = 24;
const LABELED_MAX = 24; // up to this many tasks: one labelled row each
const LW = 230; // labelled node width
const LH = 22;
const LGAP = 4;
const CELL = 17; // grid cell of a compact node
const CW = 14;
const COLLAPSED_H = 40;

function stateLabel(t) {
  let s = t.state;
  if (t.rollback) s += `, rollback: ${t.rollback}`;
  return s;
}

export class RunGraph {
  /**
   * @param {HTMLElement} host where the SVG goes (a scrolling box)
   * @param {object} graph GET /workflows/{id}/graph
   * @param {object} opts { onSelect(taskId|null) }
   */
  constructor(host, graph, opts = {}) {
    this.host = host;
    this.onSelect = opts.onSelect || (() => {});
    this.scale = 1;
    this.selected = null;
    this.query = '';
    this.pending = new Map();
    this.frame = 0;
    this.collapsed = new Set();
    const nodes = graph.nodes;
    this.tasks = [];
    this.byId = new Map();
    this.byIndex = new Map();
    this.ops = graph.operations.map((id, index) => ({ id, index, tasks: [], level: 0 }));
    nodes.forEach((n, i) => {
      if (n.kind !== 'task') return;
      const t = { i, id: n.id, op: n.operation, server: n.server, taskserv: n.taskserv, state: 'pending', rollback: null };
      this.tasks.push(t);
      this.byId.set(n.id, t);
      this.byIndex.set(i, t);
      if (n.operation !== null && this.ops[n.operation]) this.ops[n.operation].tasks.push(t);
    });
    this.preds = nodes.map(() => []);
    this.succs = nodes.map(() => []);
    for (const e of graph.edges) {
      this.preds[e.to].push(e.from);
      this.succs[e.from].push(e.to);
    }
    this.isTask = (i) => this.byIndex.has(i);
    this.opEdges = this.computeOpEdges(nodes);
    this.computeLevels();
  }

  /** Operation-level edges: a task of one operation waits (through gates) for a task of another. */
  computeOpEdges(nodes) {
    const memo = new Map();
    const upOps = (i, seen = new Set()) => {
      if (this.isTask(i)) return new Set([this.byIndex.get(i).op]);
      if (memo.has(i)) return memo.get(i);
      if (seen.has(i)) return new Set();
      seen.add(i);
      const out = new Set();
      for (const p of this.preds[i]) for (const o of upOps(p, seen)) out.add(o);
      memo.set(i, out);
      return out;
    };
    const edges = new Set();
    nodes.forEach((n, i) => {
      if (n.kind !== 'task') return;
      const to = this.byIndex.get(i).op;
      for (const p of this.preds[i]) {
        for (const from of upOps(p)) {
          if (from !== null && from !== undefined && from !== to) edges.add(`${from}>${to}`);
        }
      }
    });
    return [...edges].map((s) => s.split('>').map(Number));
  }

  /** Each operation's column: the longest chain of operations before it. */
  computeLevels() {
    for (let pass = 0; pass < this.ops.length + 1; pass++) {
      let changed = false;
      for (const [a, b] of this.opEdges) {
        if (this.ops[b].level < this.ops[a].level + 1) {
          this.ops[b].level = this.ops[a].level + 1;
          changed = true;
        }
      }
      if (!changed) break;
    }
  }

  /** Sizes and positions of groups and nodes. */
  layout() {
    const cols = [];
    for (const op of this.ops) {
      (cols[op.level] ||= []).push(op);
    }
    let x = PAD;
    this.height = 0;
    for (const col of cols.filter(Boolean)) {
      let y = PAD;
      let colW = 0;
      for (const op of col) {
        const n = op.tasks.length;
        op.collapsedNow = this.collapsed.has(op.index);
        if (op.collapsedNow) {
          op.w = LW + 2 * PAD;
          op.h = HEAD + COLLAPSED_H;
          op.compact = false;
        } else if (n <= LABELED_MAX) {
          op.compact = false;
          op.w = LW + 2 * PAD;
          op.h = HEAD + Math.max(1, n) * (LH + LGAP) + PAD;
          op.tasks.forEach((t, k) => {
            t.x = PAD;
            t.y = HEAD + k * (LH + LGAP);
            t.w = LW;
            t.h = LH;
          });
        } else {
          op.compact = true;
          const c = Math.max(12, Math.min(40, Math.ceil(Math.sqrt(n * 1.6))));
          op.cols = c;
          op.w = Math.max(LW + 2 * PAD, c * CELL + 2 * PAD);
          op.h = HEAD + Math.ceil(n / c) * CELL + PAD;
          op.tasks.forEach((t, k) => {
            t.x = PAD + (k % c) * CELL;
            t.y = HEAD + Math.floor(k / c) * CELL;
            t.w = CW;
            t.h = CW;
          });
        }
        op.x = x;
        op.y = y;
        y += op.h + ROW_GAP;
        colW = Math.max(colW, op.w);
      }
      x += colW + COL_GAP;
      this.height = Math.max(this.height || 0, y);
    }
    this.width = Math.max(x - COL_GAP + PAD, 200);
    this.height = Math.max(this.height || 0, 100);
  }

  opCounts(op) {
    const c = { total: op.tasks.length, succeeded: 0, failed: 0, running: 0, other: 0 };
    for (const t of op.tasks) {
      if (t.state === 'succeeded') c.succeeded++;
      else if (t.state === 'failed') c.failed++;
      else if (t.state === 'running' || t.state === 'waiting' || t.state === 'retrying') c.running++;
      else c.other++;
    }
    return c;
  }

  opSummary(op) {
    const c = this.opCounts(op);
    return `${c.total} tasks · ✓${c.succeeded} ✗${c.failed} ▶${c.running}`;
  }

  taskMarkup(t) {
    const label = esc(`${t.id}: ${stateLabel(t)}`);
    const glyph = GLYPH[t.state] || '?';
    const text = this.ops[t.op] && this.ops[t.op].compact
      ? `<text class="glyph" x="${CW / 2}" y="${CW / 2 + 0.5}">${glyph}</text>`
      : `<text class="label" x="6" y="${LH / 2 + 0.5}">${glyph} ${esc(t.id)}</text>`;
    return `<g class="task" transform="translate(${t.x},${t.y})" data-task="${esc(t.id)}" data-state="${t.state}"${t.rollback ? ` data-rollback="${esc(rollbackKind(t.rollback))}"` : ''} tabindex="0" role="button" aria-label="${label}"><title>${label}</title><rect width="${t.w}" height="${t.h}" rx="3"></rect>${text}</g>`;
  }

  /** Draw everything again (after a collapse or at start). */
  render() {
    this.layout();
    const parts = [];
    parts.push(`<svg xmlns="${SVGNS}" class="dag" data-testid="graph-svg" role="group" aria-label="Plan: ${this.ops.length} operations, ${this.tasks.length} tasks" viewBox="0 0 ${this.width} ${this.height}" width="${this.width * this.scale}" height="${this.height * this.scale}">`);
    parts.push('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrowhead"></path></marker></defs>');
    parts.push('<g class="op-edges" aria-hidden="true">');
    for (const [a, b] of this.opEdges) {
      const A = this.ops[a];
      const B = this.ops[b];
      const x1 = A.x + A.w;
      const y1 = A.y + HEAD / 2;
      const x2 = B.x - 2;
      const y2 = B.y + HEAD / 2;
      const mx = (x1 + x2) / 2;
      parts.push(`<path d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}" marker-end="url(#arrow)"></path>`);
    }
    parts.push('</g>');
    for (const op of this.ops) {
      const exp = !op.collapsedNow;
      parts.push(`<g class="op" data-op="${esc(op.id)}" data-collapsed="${!exp}" transform="translate(${op.x},${op.y})">`);
      parts.push(`<rect class="op-box" width="${op.w}" height="${op.h}" rx="6"></rect>`);
      parts.push(`<g class="op-head" tabindex="0" role="button" aria-expanded="${exp}" aria-label="Operation ${esc(op.id)}: ${op.tasks.length} tasks; ${exp ? 'collapse' : 'expand'}" data-testid="op-head" data-op-index="${op.index}"><rect width="${op.w}" height="${HEAD - 4}" rx="6"></rect><text x="10" y="${HEAD / 2 - 1}">${exp ? '▾' : '▸'} ${esc(op.id)}</text><text class="op-count" x="${op.w - 10}" y="${HEAD / 2 - 1}" text-anchor="end">${esc(this.opSummary(op))}</text></g>`);
      if (exp) {
        for (const t of op.tasks) parts.push(this.taskMarkup(t));
      } else {
        parts.push(`<g class="op-summary" data-testid="op-summary" transform="translate(${PAD},${HEAD})"><rect width="${LW}" height="${COLLAPSED_H - 8}" rx="4"></rect><text x="8" y="${(COLLAPSED_H - 8) / 2}">${esc(this.opSummary(op))}</text></g>`);
      }
      parts.push('</g>');
    }
    parts.push('<g class="task-edges" aria-hidden="true"></g>');
    parts.push('</svg>');
    this.host.innerHTML = parts.join('');
    this.svg = this.host.firstElementChild;
    this.els = new Map();
    for (const el of this.svg.querySelectorAll('g.task')) this.els.set(el.dataset.task, el);
    this.opEls = [...this.svg.querySelectorAll('g.op')];
    this.bind();
    if (this.query) this.search(this.query, false);
    if (this.selected) this.highlight(this.selected);
  }

  bind() {
    if (this.bound) return;
    this.bound = true;
    const taskOf = (e) => e.target.closest && e.target.closest('g.task');
    const headOf = (e) => e.target.closest && e.target.closest('g.op-head');
    this.host.addEventListener('click', (e) => {
      const t = taskOf(e);
      if (t) return this.select(t.dataset.task);
      const h = headOf(e);
      if (h) return this.toggle(Number(h.dataset.opIndex));
    });
    this.host.addEventListener('keydown', (e) => {
      if (e.key !== 'Enter' && e.key !== ' ') return;
      const t = taskOf(e);
      const h = headOf(e);
      if (!t && !h) return;
      e.preventDefault();
      if (t) this.select(t.dataset.task);
      else {
        const idx = Number(h.dataset.opIndex);
        this.toggle(idx);
        const again = this.svg.querySelector(`g.op-head[data-op-index="${idx}"]`);
        if (again) again.focus();
      }
    });
    this.host.addEventListener(
      'wheel',
      (e) => {
        if (!e.ctrlKey && !e.metaKey) return;
        e.preventDefault();
        this.zoom(e.deltaY < 0 ? 1.15 : 1 / 1.15);
      },
      { passive: false },
    );
  }

  /** Collapse or expand an operation. */
  toggle(index, collapse) {
    const now = this.collapsed.has(index);
    const want = collapse === undefined ? !now : collapse;
    if (want === now) return;
    if (want) this.collapsed.add(index);
    else this.collapsed.delete(index);
    this.render();
  }

  collapseAll(collapse) {
    this.collapsed = collapse ? new Set(this.ops.map((o) => o.index)) : new Set();
    this.render();
  }

  /** Set the zoom factor (times the current one), keeping the view's centre. */
  zoom(factor, absolute) {
    const h = this.host;
    const cx = (h.scrollLeft + h.clientWidth / 2) / this.scale;
    const cy = (h.scrollTop + h.clientHeight / 2) / this.scale;
    this.scale = Math.min(4, Math.max(0.1, absolute ? factor : this.scale * factor));
    this.svg.setAttribute('width', this.width * this.scale);
    this.svg.setAttribute('height', this.height * this.scale);
    h.scrollLeft = cx * this.scale - h.clientWidth / 2;
    h.scrollTop = cy * this.scale - h.clientHeight / 2;
    return this.scale;
  }

  /** Zoom so the whole plan fits the box (never above 100 %). */
  fit() {
    const s = Math.min(this.host.clientWidth / this.width, this.host.clientHeight / this.height, 1);
    return this.zoom(s, true);
  }

  /** Queue a task's new state (applied at the next frame: bursts stay cheap). */
  setState(id, state, rollback) {
    const t = this.byId.get(id);
    if (!t) return;
    if (state) t.state = state;
    if (rollback !== undefined) t.rollback = rollback;
    this.pending.set(id, t);
    if (!this.frame) this.frame = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.frame = 0;
    if (!this.svg) {
      this.pending.clear();
      return;
    }
    const ops = new Set();
    for (const t of this.pending.values()) {
      ops.add(t.op);
      const el = this.els.get(t.id);
      if (!el) continue;
      el.dataset.state = t.state;
      if (t.rollback) el.dataset.rollback = rollbackKind(t.rollback);
      else delete el.dataset.rollback;
      const label = `${t.id}: ${stateLabel(t)}`;
      el.setAttribute('aria-label', label);
      el.firstChild.textContent = label;
      const text = el.lastChild;
      const glyph = GLYPH[t.state] || '?';
      text.textContent = text.classList.contains('glyph') ? glyph : `${glyph} ${t.id}`;
    }
    this.pending.clear();
    for (const i of ops) {
      const el = this.opEls[i];
      const op = this.ops[i];
      if (!el || !op) continue;
      const s = this.opSummary(op);
      el.querySelector('.op-count').textContent = s;
      const sum = el.querySelector('.op-summary text');
      if (sum) sum.textContent = s;
    }
  }

  /** Apply pending changes now (before reading the DOM). */
  settle() {
    if (this.frame) {
      cancelAnimationFrame(this.frame);
      this.flush();
    }
  }

  counts() {
    const c = { total: this.tasks.length, succeeded: 0, failed: 0, running: 0, settled: 0, undone: 0 };
    for (const t of this.tasks) {
      if (t.state === 'succeeded') c.succeeded++;
      if (t.state === 'failed') c.failed++;
      if (t.state === 'running' || t.state === 'waiting' || t.state === 'retrying') c.running++;
      if (SETTLED.has(t.state)) c.settled++;
      if (t.rollback === 'undone') c.undone++;
    }
    return c;
  }

  /** The tasks a task waits for, and those waiting for it (through gates). */
  neighbours(t) {
    const walk = (start, next) => {
      const out = new Set();
      const seen = new Set([start]);
      const stack = [...next[start]];
      while (stack.length) {
        const i = stack.pop();
        if (seen.has(i)) continue;
        seen.add(i);
        if (this.isTask(i)) out.add(this.byIndex.get(i));
        else stack.push(...next[i]);
      }
      return [...out];
    };
    return { up: walk(t.i, this.preds), down: walk(t.i, this.succs) };
  }

  /** Centre of a task in SVG coordinates (its group's summary when collapsed). */
  centre(t) {
    const op = this.ops[t.op];
    if (op.collapsedNow) return [op.x + PAD + LW / 2, op.y + HEAD + COLLAPSED_H / 2];
    return [op.x + t.x + t.w / 2, op.y + t.y + t.h / 2];
  }

  /** Where an edge meets a task: the middle of its left or right side. */
  anchor(t, side) {
    const op = this.ops[t.op];
    if (op.collapsedNow) return [op.x + PAD + (side === 'left' ? 0 : LW), op.y + HEAD + (COLLAPSED_H - 8) / 2];
    return [op.x + t.x + (side === 'left' ? -1 : t.w + 1), op.y + t.y + t.h / 2];
  }

  select(id) {
    const t = id ? this.byId.get(id) : null;
    this.selected = t ? id : null;
    this.highlight(this.selected);
    this.onSelect(this.selected);
  }

  highlight(id) {
    for (const el of this.svg.querySelectorAll('g.task.selected, g.task.upstream, g.task.downstream')) {
      el.classList.remove('selected', 'upstream', 'downstream');
      el.removeAttribute('aria-pressed');
    }
    const layer = this.svg.querySelector('g.task-edges');
    layer.innerHTML = '';
    const t = id && this.byId.get(id);
    if (!t) return;
    const el = this.els.get(id);
    if (el) {
      el.classList.add('selected');
      el.setAttribute('aria-pressed', 'true');
    }
    const { up, down } = this.neighbours(t);
    const lines = [];
    for (const [list, cls] of [[up, 'upstream'], [down, 'downstream']]) {
      for (const o of list) {
        const oe = this.els.get(o.id);
        if (oe) oe.classList.add(cls);
        const [from, to] = cls === 'upstream' ? [o, t] : [t, o];
        const [x1, y1] = this.anchor(from, 'right');
        if (from.op === to.op && !this.ops[from.op].collapsedNow) {
          // Within one operation: out of the right side and back in.
          const [x2, y2] = this.anchor(to, 'right');
          const bx = Math.max(x1, x2) + 26;
          lines.push(`<path class="${cls}" d="M${x1},${y1} C${bx},${y1} ${bx},${y2} ${x2 + 2},${y2}" marker-end="url(#arrow)"></path>`);
          continue;
        }
        const [x2, y2] = this.anchor(to, 'left');
        const mx = (x1 + x2) / 2;
        lines.push(`<path class="${cls}" d="M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}" marker-end="url(#arrow)"></path>`);
      }
    }
    layer.innerHTML = lines.join('');
  }

  /** Highlight tasks whose id contains `q`; scroll to the first. How many match. */
  search(q, scroll = true) {
    this.query = q;
    for (const el of this.svg.querySelectorAll('g.task.match')) el.classList.remove('match');
    const needle = q.trim().toLowerCase();
    if (!needle) return { count: 0, first: null };
    const hits = this.tasks.filter((t) => t.id.toLowerCase().includes(needle));
    // A hit in a collapsed operation opens it.
    const closed = new Set(hits.map((t) => t.op).filter((o) => this.collapsed.has(o)));
    if (closed.size && scroll) {
      for (const o of closed) this.collapsed.delete(o);
      this.render();
      return this.search(q, scroll);
    }
    for (const t of hits) {
      const el = this.els.get(t.id);
      if (el) el.classList.add('match');
    }
    if (scroll && hits.length) this.scrollTo(hits[0]);
    return { count: hits.length, first: hits[0] ? hits[0].id : null };
  }

  scrollTo(t) {
    const [x, y] = this.centre(t);
    this.host.scrollLeft = x * this.scale - this.host.clientWidth / 2;
    this.host.scrollTop = y * this.scale - this.host.clientHeight / 2;
  }

  focusTask(id) {
    const el = this.els.get(id);
    if (el) el.focus({ preventScroll: false });
  }
}

/** What the stylesheet keys on: undone, undoing, undo-failed, not-undoable. */
export function rollbackKind(r) {
  if (!r) return '';
  if (r === 'undone' || r === 'undoing') return r;
  if (r.startsWith('undo failed')) return 'undo-failed';
  if (r.startsWith('cannot be undone')) return 'not-undoable';
  return 'other';
}
