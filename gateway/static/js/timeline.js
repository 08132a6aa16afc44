// The live timeline: one lane per agent, rows appended incrementally in event-id order.
//
// Speed with 10k+ events: events are queued and applied once per animation frame; each lane
// keeps every row as a light model but only the newest CAP rows in the DOM ("show earlier"
// brings back older ones on demand). LLM_STREAM chunks grow one block per action instead of
// adding a row per chunk.

import { el, fmtClock, fmtInt, fmtMs } from "./dom.js";
import { costLine, describe } from "./format.js";

export const AGENTS = ["ProductManager", "Architect", "ProjectManager", "Engineer", "QaEngineer", "System"];
const LABELS = {
  ProductManager: "Product manager",
  Architect: "Architect",
  ProjectManager: "Project manager",
  Engineer: "Engineer",
  QaEngineer: "QA engineer",
  System: "System",
};
const CAP = 400; // rows kept in the DOM per lane
const PAGE = 500; // rows "show earlier" brings back at a time
const STREAM_MAX_CHARS = 200_000; // per block; the rest is counted, not shown
const FOLLOW_SLACK_PX = 48;
const growing = new Set(); // action cards whose streamed text grew in this flush

const TYPE_LABEL = {
  MESSAGE: "message",
  ACTION_START: "action",
  ACTION_END: "action end",
  LLM_STREAM: "llm",
  NODE_FILLED: "output",
  COST: "cost",
  FILE_WRITTEN: "file",
  ROUND: "round",
  LOG: "log",
  ERROR: "error",
  FLOW_START: "start",
  FLOW_END: "end",
};

function rowShell(ev, typeLabel, cls) {
  return el(
    `div.ev.ev-${cls}`,
    { dataset: { ids: String(ev.event_id) } },
    el("span.ev-id", { text: `#${ev.event_id}` }),
    el("span.ev-time", { text: fmtClock(ev.timestamp), title: ev.timestamp }),
    el("span.ev-type", { text: typeLabel }),
  );
}

/** A row for one event. */
class EventRow {
  constructor(ev, handlers) {
    this.ev = ev;
    this.handlers = handlers;
    this.el = null;
  }

  build() {
    const ev = this.ev;
    const { nodes, cls } = describe(ev, this.handlers);
    const row = rowShell(ev, TYPE_LABEL[ev.event_type] ?? ev.event_type.toLowerCase(), ev.event_type);
    if (cls) row.classList.add(cls);
    row.append(el("div.ev-body", null, ...nodes));
    this.el = row;
    return row;
  }
}

/**
 * An action card: ACTION_START … ACTION_END of one agent. LLM_STREAM chunks grow one text
 * block, COST goes into the header, and whatever else the agent did meanwhile (outputs, files,
 * logs) nests inside as sub-rows, in order. Also used headless (action = null) for LLM text
 * streamed outside any action.
 */
class ActionCard {
  constructor(ev, handlers) {
    this.first = ev;
    this.handlers = handlers;
    this.ids = ev.event_type === "ACTION_START" ? [ev.event_id] : [];
    const p = ev.event_type === "ACTION_START" ? ev.payload || {} : {};
    this.action = p.action ?? null;
    this.file = p.file ?? null;
    this.state = this.action ? "running" : "stream";
    this.duration = null;
    this.cost = null;
    this.text = "";
    this.hidden = 0; // chars beyond STREAM_MAX_CHARS
    this.children = [];
    this.follow = true; // keep the newest streamed text in view unless the reader scrolled up
    this.el = null;
    this.refs = null;
  }

  matches(p) {
    return this.action === (p.action ?? null) && (this.file ?? null) === (p.file ?? null);
  }

  addId(id) {
    this.ids.push(id);
    if (this.el) this.el.dataset.ids = this.ids.join(" ");
  }

  appendText(ev) {
    this.addId(ev.event_id);
    let chunk = String((ev.payload && ev.payload.text) ?? "");
    const room = Math.max(0, STREAM_MAX_CHARS - this.text.length);
    if (chunk.length > room) {
      this.hidden += chunk.length - room;
      chunk = chunk.slice(0, room);
    }
    this.text += chunk;
    if (!this.el) return;
    const { pre, textNode } = this.refs;
    pre.hidden = false;
    textNode.appendData(chunk);
    this.syncMeta();
    if (this.follow) growing.add(this); // scrolled once per flush, after all writes
  }

  scrollToEnd() {
    if (this.el && this.follow) this.refs.pre.scrollTop = this.refs.pre.scrollHeight;
  }

  setCost(ev) {
    this.addId(ev.event_id);
    this.cost = ev.payload || {};
    if (this.el) this.syncMeta();
  }

  addChild(ev) {
    const row = new EventRow(ev, this.handlers);
    this.children.push(row);
    if (this.el) this.refs.kids.append(row.build());
  }

  end(ev) {
    this.addId(ev.event_id);
    const p = ev.payload || {};
    this.state = p.ok === false ? "failed" : "ok";
    this.duration = p.duration_ms ?? null;
    if (this.el) this.syncMeta();
  }

  /** The task ended (or the agent moved on) without an ACTION_END for this card. */
  close(reason = "done") {
    if (this.state === "running" || this.state === "stream") {
      this.state = this.state === "stream" ? "done" : reason;
      if (this.el) this.syncMeta();
    }
  }

  syncMeta() {
    const { badge, costEl, chars } = this.refs;
    const label = {
      running: "running…",
      ok: `✓ ${fmtMs(this.duration)}`,
      failed: `✗ failed after ${fmtMs(this.duration)}`,
      stream: "streaming…",
      stopped: "■ stopped",
      done: "",
    }[this.state];
    badge.textContent = label ?? "";
    badge.dataset.state = this.state;
    this.el.classList.toggle("failed", this.state === "failed");
    costEl.textContent = this.cost ? costLine(this.cost) : "";
    const n = this.text.length + this.hidden;
    chars.textContent = n
      ? `${fmtInt(n)} chars streamed${this.hidden ? ` (first ${fmtInt(STREAM_MAX_CHARS)} shown)` : ""}`
      : "";
  }

  build() {
    const row = rowShell(this.first, this.action ? "action" : "llm", this.action ? "ACTION" : "LLM_STREAM");
    row.dataset.ids = this.ids.join(" ");
    const textNode = document.createTextNode(this.text);
    const pre = el("pre.stream", { hidden: !this.text }, textNode);
    pre.addEventListener(
      "scroll",
      () => (this.follow = pre.scrollHeight - pre.scrollTop - pre.clientHeight < FOLLOW_SLACK_PX),
      { passive: true },
    );
    const badge = el("span.badge");
    const costEl = el("span.muted.small.cost");
    const chars = el("span.muted.small");
    const kids = el("div.kids");
    for (const child of this.children) kids.append(child.build());
    const head = el(
      "div.action-head",
      null,
      el("b.action-name", { text: this.action ?? "LLM output" }),
      this.file ? el("code.file", { text: this.file }) : null,
      badge,
      el("span.spacer"),
      chars,
      costEl,
    );
    row.append(el("div.ev-body", null, head, pre, kids));
    this.el = row;
    this.refs = { pre, textNode, badge, costEl, chars, kids };
    this.syncMeta();
    if (this.text) growing.add(this);
    return row;
  }
}

class Lane {
  constructor(role, timeline) {
    this.role = role;
    this.timeline = timeline;
    this.rows = [];
    this.events = 0;
    this.open = null; // the ActionCard this agent's next events join
    this.domStart = 0; // rows[domStart..] are in the DOM
    this.cap = CAP;
    this.countEl = el("span.lane-count");
    this.stateEl = el("span.lane-state");
    this.moreBtn = el("button.more.ghost", { type: "button", hidden: true, onclick: () => this.showEarlier() });
    this.rowsEl = el("div.lane-rows");
    // Follow the newest row unless the reader scrolled up; learnt from scroll events so a
    // flush never has to read layout before writing.
    this.follow = true;
    this.rowsEl.addEventListener(
      "scroll",
      () => {
        const r = this.rowsEl;
        this.follow = r.scrollHeight - r.scrollTop - r.clientHeight < FOLLOW_SLACK_PX;
      },
      { passive: true },
    );
    const head = el(
      "header.lane-head",
      { onclick: () => this.section.classList.toggle("collapsed") },
      el("span.agent-dot"),
      el("h3", { text: LABELS[role] ?? role }),
      this.countEl,
      el("span.spacer"),
      this.stateEl,
      el("span.chevron", { text: "▾" }),
    );
    this.section = el("section.lane", { dataset: { role } }, head, this.moreBtn, this.rowsEl);
  }

  /** Apply one event to the models; returns a new row or null when it joined an open card. */
  add(ev) {
    this.events += 1;
    const type = ev.event_type;
    const open = this.open;
    if (type === "ACTION_START") {
      if (open) open.close("stopped");
      this.open = new ActionCard(ev, this.timeline.handlers);
      return this.open;
    }
    if (type === "LLM_STREAM") {
      if (open) {
        open.appendText(ev);
        return null;
      }
      this.open = new ActionCard(ev, this.timeline.handlers);
      this.open.appendText(ev);
      return this.open;
    }
    if (open && open.action) {
      if (type === "COST") {
        open.setCost(ev);
        return null;
      }
      if (type === "ACTION_END" && open.matches(ev.payload || {})) {
        open.end(ev);
        this.open = null;
        return null;
      }
      open.addChild(ev); // outputs, files, logs, errors of the running action
      return null;
    }
    if (open) open.close();
    this.open = null;
    return new EventRow(ev, this.timeline.handlers);
  }

  /** The task ended: nothing is running any more. */
  finish() {
    if (this.open) this.open.close("stopped");
    this.open = null;
  }

  /** Put new rows in the DOM (only those within the cap) and drop the oldest beyond it. */
  commit(added) {
    const from = Math.max(this.rows.length - added.length, this.rows.length - this.cap);
    if (from < this.rows.length) {
      const frag = document.createDocumentFragment();
      for (let i = Math.max(from, this.domStart); i < this.rows.length; i++) frag.append(this.rows[i].build());
      this.rowsEl.append(frag);
    }
    const keepFrom = Math.max(0, this.rows.length - this.cap);
    for (let i = this.domStart; i < keepFrom; i++) {
      const row = this.rows[i];
      if (row.el) {
        row.el.remove();
        row.el = null;
        row.refs = null;
      }
    }
    this.domStart = Math.max(this.domStart, keepFrom);
    this.syncHead();
  }

  showEarlier() {
    const start = Math.max(0, this.domStart - PAGE);
    const frag = document.createDocumentFragment();
    for (let i = start; i < this.domStart; i++) frag.append(this.rows[i].build());
    this.rowsEl.prepend(frag);
    this.cap += this.domStart - start;
    this.domStart = start;
    this.syncHead();
  }

  syncHead() {
    this.countEl.textContent = `${fmtInt(this.events)} event${this.events === 1 ? "" : "s"}`;
    this.moreBtn.hidden = this.domStart === 0;
    this.moreBtn.textContent = `Show ${fmtInt(Math.min(PAGE, this.domStart))} earlier (${fmtInt(this.domStart)} hidden)`;
  }
}

export class Timeline {
  /** @param {{openFile(path: string): void}} handlers */
  constructor(root, strip, handlers) {
    this.root = root;
    this.strip = strip;
    this.handlers = handlers;
    this.reset();
  }

  reset() {
    this.lanes = new Map();
    this.queue = [];
    this.scheduled = false;
    this.count = 0;
    this.active = null;
    this.nextFlushAt = 0;
    this.stats = { flushes: 0, flushMs: 0 }; // for perf checks: window.__metastream.perf()
    this.root.replaceChildren(el("p.muted.waiting", { text: "Waiting for the first event…" }));
    this.chips = new Map();
    growing.clear();
    this.strip.replaceChildren(...AGENTS.map((role) => this.chip(role)));
  }

  chip(role) {
    const count = el("span.chip-count", { text: "0" });
    const node = el(
      "button.chip",
      {
        type: "button",
        dataset: { role, state: "waiting" },
        title: `Jump to ${LABELS[role] ?? role}`,
        onclick: () => this.lanes.get(role)?.section.scrollIntoView({ behavior: "smooth", block: "start" }),
      },
      el("span.agent-dot"),
      el("span", { text: LABELS[role] ?? role }),
      count,
    );
    this.chips.set(role, { node, count });
    return node;
  }

  push(events) {
    for (const ev of events) this.queue.push(ev);
    if (this.scheduled) return;
    this.scheduled = true;
    // One DOM update per frame at most, and after a costly one wait a few times its length:
    // a burst (a replay of 10k+ events) then lands in a few big batches, where only each
    // lane's newest rows get built, instead of 100 frames of build-then-trim.
    const wait = Math.max(0, this.nextFlushAt - performance.now());
    const run = () => this.flush();
    setTimeout(() => {
      requestAnimationFrame(run);
      setTimeout(run, 250); // rAF does not run in hidden tabs
    }, wait);
  }

  lane(role) {
    let lane = this.lanes.get(role);
    if (lane) return lane;
    lane = new Lane(role, this);
    if (!this.lanes.size) this.root.replaceChildren();
    this.lanes.set(role, lane);
    // Lanes in pipeline order, unknown roles before System.
    const rank = (r) => {
      const i = AGENTS.indexOf(r);
      return i < 0 ? AGENTS.length - 1.5 : i;
    };
    const after = [...this.lanes.values()].find((l) => rank(l.role) > rank(role) && l !== lane);
    this.root.insertBefore(lane.section, after ? after.section : null);
    if (!this.chips.has(role)) this.strip.append(this.chip(role));
    return lane;
  }

  flush() {
    if (!this.scheduled) return;
    this.scheduled = false;
    const t0 = performance.now();
    const queue = this.queue;
    this.queue = [];
    const added = new Map();
    for (const ev of queue) {
      const lane = this.lane(ev.agent_role || "System");
      const row = lane.add(ev);
      if (row) {
        lane.rows.push(row);
        if (!added.has(lane)) added.set(lane, []);
        added.get(lane).push(row);
      } else if (!added.has(lane)) {
        added.set(lane, []);
      }
    }
    this.count += queue.length;
    for (const [lane, rows] of added) lane.commit(rows);
    // Scroll only after every write: one layout for all lanes.
    for (const lane of added.keys()) if (lane.follow) lane.rowsEl.scrollTop = lane.rowsEl.scrollHeight;
    for (const card of growing) card.scrollToEnd();
    growing.clear();
    for (const [role, lane] of this.lanes) {
      const chip = this.chips.get(role);
      chip.count.textContent = fmtInt(lane.events);
      if (chip.node.dataset.state === "waiting") chip.node.dataset.state = "done";
    }
    this.setActive(this.active);
    const took = performance.now() - t0;
    this.nextFlushAt = performance.now() + Math.min(500, took * 4);
    this.stats.flushes += 1;
    this.stats.flushMs += took;
  }

  /** Highlight the agent the task state names (null when the task ended). */
  setActive(role) {
    this.active = role;
    for (const [r, chip] of this.chips) {
      const lane = this.lanes.get(r);
      chip.node.dataset.state = r === role ? "active" : lane ? "done" : "waiting";
      lane?.section.classList.toggle("active", r === role);
      if (lane) lane.stateEl.textContent = r === role ? "working" : "";
    }
  }

  /** Event ids of the rows in the DOM, in DOM order (tests compare them with 1..N). */
  renderedIds() {
    const out = [];
    for (const node of this.root.querySelectorAll("[data-ids]")) {
      for (const s of node.dataset.ids.split(" ")) if (s) out.push(Number(s));
    }
    return out;
  }

  /** The task reached a final state: close whatever is still shown as running. */
  finish() {
    this.flush();
    for (const lane of this.lanes.values()) lane.finish();
  }

  /** Bring every hidden row back into the DOM. */
  expandAll() {
    this.flush();
    for (const lane of this.lanes.values()) while (lane.domStart > 0) lane.showEarlier();
  }
}

