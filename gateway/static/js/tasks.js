// The sidebar: the create form and the task list (polled; newest first, as the API returns it).

import { api } from "./api.js";
import { $, clip, el, fmtAgo, TERMINAL } from "./dom.js";

const POLL_MS = 3000;
const PAGE = 50;

function when(t) {
  const pct = Math.round((t.progress || 0) * 100);
  return `${fmtAgo(t.created_at)}${TERMINAL.has(t.status) ? "" : ` · ${pct}%`}`;
}

export class TaskList {
  constructor(listEl, totalEl, moreBtn) {
    this.listEl = listEl;
    this.totalEl = totalEl;
    this.moreBtn = moreBtn;
    this.limit = PAGE;
    this.selected = null;
    this.timer = null;
    this.moreBtn.addEventListener("click", () => {
      this.limit = Math.min(200, this.limit + PAGE);
      this.refresh();
    });
  }

  start() {
    this.refresh();
    return this;
  }

  select(id) {
    this.selected = id;
    for (const a of this.listEl.querySelectorAll("a.task-item")) a.classList.toggle("active", a.dataset.id === id);
  }

  /** Live state of the open task: patch its list item in place until the next poll. */
  update(state) {
    const a = this.listEl.querySelector(`a.task-item[data-id="${CSS.escape(state.task_id || "")}"]`);
    if (!a) return;
    a.dataset.status = state.status;
    const pill = a.querySelector(".pill");
    pill.dataset.status = state.status;
    pill.textContent = state.status;
    const pct = Math.round((state.progress || 0) * 100);
    a.querySelector(".mini-progress span").style.width = `${pct}%`;
    a.querySelector(".when").textContent = when({ ...state, created_at: a.dataset.created });
  }

  async refresh() {
    clearTimeout(this.timer);
    try {
      const body = await api.listTasks(this.limit, 0);
      this.render(body);
    } catch (err) {
      this.listEl.replaceChildren(el("li.muted", { text: `Could not load tasks: ${err.message}` }));
    } finally {
      // Poll faster nowhere: the open task gets its live state over the WebSocket.
      this.timer = setTimeout(() => this.refresh(), document.hidden ? POLL_MS * 5 : POLL_MS);
    }
  }

  render({ tasks, total }) {
    this.totalEl.textContent = total ? `(${total})` : "";
    this.moreBtn.hidden = tasks.length >= total || this.limit >= 200;
    if (!tasks.length) {
      this.listEl.replaceChildren(el("li.muted.empty-list", { text: "No tasks yet." }));
      return;
    }
    this.listEl.replaceChildren(
      ...tasks.map((t) => {
        const pct = Math.round((t.progress || 0) * 100);
        // Which node runs it (several nodes on PostgreSQL, docs/deploy.md).
        const flags = [t.test_mode ? "test" : null, llmFlag(t), t.node ? `node ${t.node}` : null].filter(Boolean);
        return el(
          "li",
          null,
          el(
            `a.task-item${t.id === this.selected ? ".active" : ""}`,
            { href: `#/task/${t.id}`, dataset: { id: t.id, status: t.status, created: t.created_at } },
            el("span.req", { text: clip(t.requirement, 120) }),
            el(
              "span.task-meta",
              null,
              el("span.pill.small", { dataset: { status: t.status }, text: t.status }),
              el("span.muted.when", { text: when(t) }),
              ...flags.map((f) => el("span.flag", { text: f })),
            ),
            el("span.mini-progress", null, el("span", { style: `width:${pct}%` })),
          ),
        );
      }),
    );
  }
}

/** The list's tag for the LLM a task runs on (the REST task's `llm` field). */
export function llmFlag(t) {
  if (t.llm === "scripted") return "scripted LLM";
  if (t.llm === "synthetic" || (t.options && t.options.synthetic)) return "synthetic";
  return null;
}

/** Words for the task view's LLM line. */
export function llmText(t) {
  if (t.llm === "synthetic" || (t.options && t.options.synthetic)) return "synthetic workload";
  if (t.llm === "scripted") return t.test_mode ? "offline scripted LLM · test mode" : "offline scripted LLM · no real LLM configured";
  if (t.llm === "configured") return "real LLM";
  return t.test_mode ? "offline scripted LLM · test mode" : "";
}

/** Wire the create form; `onCreated(task)` opens the new task. */
export function setupCreateForm(form, onCreated) {
  const errEl = $("#create-error", form);
  const btn = $("#create-btn", form);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    errEl.hidden = true;
    const body = {
      requirement: $("#requirement", form).value.trim(),
      test_mode: $("#test-mode", form).checked,
      use_qa: $("#use-qa", form).checked,
      disconnect_policy: $("#disconnect-policy", form).value,
    };
    if ($("#demo-pace", form).checked) body.pace = "demo";
    if ($("#synthetic-on", form).checked) {
      body.synthetic = {
        events: Number($("#synthetic-events", form).value) || 1,
        rate: Number($("#synthetic-rate", form).value) || 0,
      };
    }
    if (!body.requirement) {
      errEl.textContent = "Describe what to build first.";
      errEl.hidden = false;
      return;
    }
    btn.disabled = true;
    try {
      onCreated(await api.createTask(body));
    } catch (err) {
      errEl.textContent = err.status === 401 ? "The server needs an API token (the lock button at the top right)." : err.message;
      errEl.hidden = false;
    } finally {
      btn.disabled = false;
    }
  });
  // Ctrl/Cmd+Enter submits from the requirement box.
  $("#requirement", form).addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });
}
