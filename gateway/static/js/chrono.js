// The chronological view: every event of the task in event-id order, all agents together
// (the per-agent lanes are the other view). Consecutive LLM text of one agent is one row.

import { el, fmtClock, fmtInt } from "./dom.js";
import { describe } from "./format.js";

const CAP = 1500; // rows kept in the DOM; older ones are counted, the lanes still hold them

export class Chrono {
  constructor(root, handlers) {
    this.root = root;
    this.handlers = handlers;
    this.reset();
  }

  reset() {
    this.rows = 0;
    this.dropped = 0;
    this.stream = null; // {role, pre, ids, row}: the LLM text row being extended
    this.note = el("p.muted.small.chrono-note", { hidden: true });
    this.list = el("div.chrono-rows");
    this.root.replaceChildren(this.note, this.list);
  }

  push(events) {
    const frag = document.createDocumentFragment();
    for (const ev of events) {
      const role = ev.agent_role || "System";
      if (ev.event_type === "LLM_STREAM" && this.stream && this.stream.role === role) {
        this.stream.pre.append(String((ev.payload && ev.payload.text) ?? ""));
        this.stream.ids.push(ev.event_id);
        this.stream.row.dataset.ids = this.stream.ids.join(" ");
        continue;
      }
      const row = el(
        `div.ev.ev-${ev.event_type}`,
        { dataset: { ids: String(ev.event_id), role } },
        el("span.ev-id", { text: `#${ev.event_id}` }),
        el("span.ev-time", { text: fmtClock(ev.timestamp), title: ev.timestamp }),
        el("span.ev-role", { text: role }),
      );
      if (ev.event_type === "LLM_STREAM") {
        const pre = el("pre.stream", { text: String((ev.payload && ev.payload.text) ?? "") });
        row.append(el("div.ev-body", null, pre));
        this.stream = { role, pre, ids: [ev.event_id], row };
      } else {
        const { nodes, cls } = describe(ev, this.handlers);
        if (cls) row.classList.add(cls);
        row.append(el("div.ev-body", null, ...nodes));
        this.stream = null;
      }
      frag.append(row);
      this.rows += 1;
    }
    this.list.append(frag);
    while (this.list.childElementCount > CAP) {
      this.list.firstElementChild.remove();
      this.dropped += 1;
    }
    if (this.dropped) {
      this.note.hidden = false;
      this.note.textContent = `${fmtInt(this.dropped)} earlier rows not shown here (the per-agent view has them all).`;
    }
  }
}
