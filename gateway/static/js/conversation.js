// The conversation of the open task: its runs as a thread, and a box for the next requirement.
// A COMPLETED task takes a follow-up (POST /messages); a CANCELLED or FAILED one can resume
// (POST /resume). The stream stays connected across runs (?follow=conversation), so the new
// run's events arrive in the same timeline.

import { api } from "./api.js";
import { $, el, fmtClock, toast } from "./dom.js";

const KIND = { start: "Requirement", retry: "Retry", follow_up: "Follow-up", resume: "Resumed" };

export class Conversation {
  constructor() {
    this.box = $("#conversation");
    this.thread = $("#thread");
    this.form = $("#followup-form");
    this.text = $("#followup-text");
    this.send = $("#followup-btn");
    this.resume = $("#resume-btn");
    this.error = $("#followup-error");
    this.taskId = null;
    this.status = null;
    this.form.addEventListener("submit", (e) => {
      e.preventDefault();
      this.submit();
    });
    this.resume.addEventListener("click", () => this.act(() => api.resumeTask(this.taskId)));
  }

  /** Show the runs of `task` (a GET /api/tasks/{id} answer). */
  show(task) {
    if (task.id !== this.taskId) return;
    const runs = task.runs || [];
    this.thread.replaceChildren(
      ...runs.map((r) =>
        el(
          "li.run",
          { dataset: { status: r.status, kind: r.kind } },
          el("span.run-kind", { text: `${KIND[r.kind] || r.kind} · run ${r.run}` }),
          el("p.run-requirement", { text: r.requirement }),
          el("span.muted.small", {
            text: `${r.status}${r.first_event_id ? ` · events ${r.first_event_id}–${r.last_event_id ?? "…"}` : ""}${r.started_at ? ` · ${fmtClock(r.started_at)}` : ""}`,
          }),
        ),
      ),
    );
    this.setStatus(task.status);
  }

  open(id) {
    this.taskId = id;
    this.thread.replaceChildren();
    this.error.hidden = true;
    this.text.value = "";
  }

  setStatus(status) {
    const changed = status !== this.status;
    this.status = status;
    this.send.disabled = status !== "COMPLETED";
    this.text.disabled = status !== "COMPLETED";
    this.resume.hidden = !(status === "CANCELLED" || status === "FAILED");
    if (changed && this.taskId) this.refresh();
  }

  refresh() {
    const id = this.taskId;
    api.getTask(id).then((t) => this.show(t)).catch(() => {});
  }

  submit() {
    const requirement = this.text.value.trim();
    if (!requirement) {
      this.fail("Write the next requirement first");
      return;
    }
    this.act(() => api.sendMessage(this.taskId, requirement)).then((ok) => {
      if (ok) this.text.value = "";
    });
  }

  async act(call) {
    this.error.hidden = true;
    this.send.disabled = true;
    try {
      this.show(await call());
      return true;
    } catch (err) {
      this.fail(err.message);
      toast(err.message, "error");
      this.setStatus(this.status);
      return false;
    }
  }

  fail(message) {
    this.error.textContent = message;
    this.error.hidden = false;
  }
}
