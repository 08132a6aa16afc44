// Page wiring: routing (#/task/<id>), the task header, tabs, theme and token.

import { api, getToken, onAuthError, setToken } from "./api.js";
import { $, fmtCost, fmtDuration, fmtInt, TERMINAL, toast } from "./dom.js";
import { Conversation } from "./conversation.js";
import { Chrono } from "./chrono.js";
import { FilesView } from "./files.js";
import { TaskStream } from "./stream.js";
import { llmText, setupCreateForm, TaskList } from "./tasks.js";
import { Timeline } from "./timeline.js";

const CONN_TEXT = {
  idle: "idle",
  connecting: "connecting…",
  live: "live",
  reconnecting: "reconnecting…",
  ended: "stream ended",
  "not found": "task not found",
};

const ui = {
  empty: $("#empty-view"),
  view: $("#task-view"),
  requirement: $("#t-requirement"),
  status: $("#t-status"),
  conn: $("#t-conn"),
  connText: $("#t-conn-text"),
  id: $("#t-id"),
  llm: $("#t-llm"),
  bar: $("#t-progress-bar"),
  barBox: $("#t-progressbar"),
  pct: $("#t-progress"),
  agent: $("#t-agent"),
  elapsed: $("#t-elapsed"),
  cost: $("#t-cost"),
  tokens: $("#t-tokens"),
  events: $("#t-events"),
  lastMessage: $("#t-last-message"),
  cancel: $("#cancel-btn"),
};

const conversation = new Conversation();
const timeline = new Timeline($("#timeline"), $("#agent-strip"), { openFile: (p) => showFile(p) });
const chrono = new Chrono($("#chrono"), { openFile: (p) => showFile(p) });
function selectView(name) {
  const chron = name === "chrono";
  $("#chrono").hidden = !chron;
  $("#timeline").hidden = chron;
  $("#agent-strip").hidden = chron;
  $("#view-chrono").classList.toggle("active", chron);
  $("#view-agents").classList.toggle("active", !chron);
  $("#view-chrono").setAttribute("aria-pressed", String(chron));
  $("#view-agents").setAttribute("aria-pressed", String(!chron));
  try {
    localStorage.setItem("metastream.view", name);
  } catch {
    /* not persisted */
  }
}
$("#view-agents").addEventListener("click", () => selectView("agents"));
$("#view-chrono").addEventListener("click", () => selectView("chrono"));
selectView(localStorage.getItem("metastream.view") === "chrono" ? "chrono" : "agents");
const files = new FilesView({
  tree: $("#file-tree"),
  code: $("#file-code"),
  path: $("#file-path"),
  size: $("#file-size"),
  count: $("#files-count"),
  download: $("#file-download"),
});
const tasks = new TaskList($("#task-list"), $("#task-total"), $("#more-tasks")).start();

let revealOnOpen = false; // scroll to the task view when it opens (after "Create & watch")
let current = null; // the open task: {id, stream, status, startedAt, completedAt, cost, tokens}
let headerQueued = false;

// --- the open task ---------------------------------------------------------------------------

function openTask(id) {
  if (current && current.id === id) return;
  closeTask();
  current = { id, stream: null, status: null, startedAt: null, completedAt: null, cost: null, tokens: null, conn: "idle" };
  ui.empty.hidden = true;
  ui.view.hidden = false;
  // Nothing of the previously open task may show through: every field starts blank, and the
  // status and Cancel wait for the server to confirm the task exists.
  ui.view.dataset.state = "loading";
  ui.id.textContent = id;
  ui.requirement.textContent = "…";
  ui.requirement.title = "";
  ui.llm.textContent = "";
  ui.lastMessage.textContent = "";
  ui.events.textContent = "0";
  ui.cost.textContent = "—";
  ui.tokens.textContent = "—";
  ui.elapsed.textContent = "—";
  applyState({ status: "PENDING", progress: 0, current_agent: null });
  ui.status.textContent = "…";
  ui.status.dataset.status = "";
  ui.cancel.disabled = true;
  timeline.reset();
  conversation.open(id);
  chrono.reset();
  files.reset(id);
  tasks.select(id);
  selectTab("timeline");
  const mine = current;
  const revealing = revealOnOpen;
  revealOnOpen = false;
  if (revealing) reveal();
  api
    .getTask(id)
    .then((t) => {
      if (mine !== current) return;
      ui.view.dataset.state = "ok";
      applyTask(t);
      conversation.show(t);
      if (revealing) tasks.refresh().finally(reveal);
    })
    .catch((err) => {
      if (mine !== current) return;
      if (err.status === 404) {
        showNotFound(mine);
        return;
      }
      ui.view.dataset.state = "error";
      ui.requirement.textContent = `Could not load the task: ${err.message}`;
    });
  files.refresh();
  current.stream = new TaskStream(id, {
    onEvents: (evs) => mine === current && onEvents(evs),
    onState: (s) => {
      if (mine !== current) return;
      applyState(s);
      conversation.setStatus(s.status);
      tasks.update(s);
      // Only the stream's final state comes after the last event; the REST copy may not.
      if (TERMINAL.has(s.status)) timeline.finish();
    },
    onConn: (c, detail) => {
      if (mine !== current) return;
      setConn(c, detail);
      if (c === "not found") showNotFound(mine);
    },
    onError: (m) => mine === current && toast(m, "error"),
  }).start();
}

/** An unknown (or garbage) id: only "Task not found", nothing to watch or cancel. */
function showNotFound(mine) {
  ui.view.dataset.state = "missing";
  ui.requirement.textContent = "Task not found";
  ui.lastMessage.textContent = "";
  ui.cancel.disabled = true;
  if (mine.stream) mine.stream.stop();
  timeline.reset();
  chrono.reset();
}

function closeTask() {
  if (current && current.stream) current.stream.stop();
  current = null;
  ui.view.hidden = true;
  ui.empty.hidden = false;
  tasks.select(null);
}

function applyTask(t) {
  ui.requirement.textContent = t.requirement;
  ui.requirement.title = t.requirement;
  ui.llm.textContent = llmText(t) + (t.node ? ` · node ${t.node}` : "");
  ui.llm.dataset.llm = t.llm || "";
  // The stream's state is fresher; only fill what it has not said yet.
  if (!current.status || current.status === "PENDING") applyState(t);
  else ui.cancel.disabled = TERMINAL.has(current.status);
}

function applyState(s) {
  if (!current) return;
  current.status = s.status;
  current.startedAt = s.started_at || current.startedAt;
  current.completedAt = s.completed_at || null;
  ui.status.textContent = s.status;
  ui.status.dataset.status = s.status;
  const pct = Math.round(Math.max(0, Math.min(1, s.progress || 0)) * 1000) / 10;
  ui.bar.style.width = `${pct}%`;
  ui.barBox.setAttribute("aria-valuenow", String(pct));
  ui.barBox.dataset.status = s.status;
  ui.pct.textContent = `${Number.isInteger(pct) ? pct : pct.toFixed(1)}%`;
  const done = TERMINAL.has(s.status);
  ui.agent.textContent = done ? "—" : s.current_agent || "—";
  if (s.last_message) ui.lastMessage.textContent = s.last_message;
  timeline.setActive(done ? null : s.current_agent || null);
  ui.cancel.disabled = done || ui.view.dataset.state !== "ok";
  ui.cancel.textContent = done ? "Finished" : "Cancel task";
  if (done) {
    files.refresh();
    tasks.refresh();
  }
  tickElapsed();
}

function onEvents(evs) {
  timeline.push(evs);
  chrono.push(evs);
  for (const ev of evs) {
    const p = ev.payload || {};
    switch (ev.event_type) {
      case "COST":
        if (p.total_cost != null) current.cost = p.total_cost;
        if (p.total_prompt_tokens != null) current.tokens = (p.total_prompt_tokens || 0) + (p.total_completion_tokens || 0);
        break;
      case "ROUND":
      case "FLOW_END":
        if (p.total_cost != null) current.cost = Math.max(current.cost || 0, p.total_cost);
        break;
      case "FLOW_START":
        if (p.llm !== "scripted") ui.llm.textContent = `LLM ${p.model || p.llm || ""}`;
        break;
      case "FILE_WRITTEN":
        files.refreshSoon();
        break;
      default:
        break;
    }
  }
  if (!headerQueued) {
    headerQueued = true;
    requestAnimationFrame(() => {
      headerQueued = false;
      if (!current) return;
      ui.events.textContent = fmtInt(current.stream.lastId);
      ui.cost.textContent = fmtCost(current.cost);
      ui.tokens.textContent = current.tokens == null ? "—" : fmtInt(current.tokens);
    });
  }
}

function setConn(conn, detail) {
  current.conn = conn;
  ui.conn.dataset.conn = conn;
  ui.connText.textContent = CONN_TEXT[conn] || conn;
  ui.conn.title = detail || "";
}

function tickElapsed() {
  if (!current || !current.startedAt) {
    ui.elapsed.textContent = "—";
    return;
  }
  const end = current.completedAt ? Date.parse(current.completedAt) : Date.now();
  ui.elapsed.textContent = fmtDuration(end - Date.parse(current.startedAt));
}
setInterval(tickElapsed, 1000);

ui.cancel.addEventListener("click", async () => {
  if (!current) return;
  const mine = current;
  // Cancelling stops the task's processes for good: ask first.
  const what = ui.requirement.textContent || mine.id;
  if (!window.confirm(`Cancel this task?\n\n${what.slice(0, 200)}\n\nIts agents stop and it cannot be resumed.`)) return;
  ui.cancel.disabled = true;
  ui.cancel.textContent = "Cancelling…";
  try {
    const t = await api.cancelTask(mine.id);
    if (mine === current) applyState(t);
    toast("Task cancelled");
  } catch (err) {
    toast(`Cancel failed: ${err.message}`, "error");
    if (mine === current) applyState({ status: mine.status, progress: parseFloat(ui.pct.textContent) / 100 });
  }
});

// --- tabs ------------------------------------------------------------------------------------

function selectTab(name) {
  for (const b of document.querySelectorAll(".tabs [data-tab]")) b.classList.toggle("active", b.dataset.tab === name);
  $("#tab-timeline").hidden = name !== "timeline";
  $("#tab-files").hidden = name !== "files";
  if (name === "files") files.refresh();
}
for (const b of document.querySelectorAll(".tabs [data-tab]")) b.addEventListener("click", () => selectTab(b.dataset.tab));

$("#file-download").addEventListener("click", () => {
  if (current && files.selected) api.downloadFile(current.id, files.selected).catch((err) => toast(`Download failed: ${err.message}`, "error"));
});
$("#zip-download").addEventListener("click", () => {
  if (current) api.downloadArchive(current.id).catch((err) => toast(`Download failed: ${err.message}`, "error"));
});

function showFile(path) {
  selectTab("files");
  files.open(path);
}

// --- create, routing -------------------------------------------------------------------------

setupCreateForm($("#create-form"), (task) => {
  tasks.refresh();
  // On a narrow screen the task view is below the form and the list: bring it into view
  // once it is open (and again once it is filled in, as the list above may have grown).
  revealOnOpen = window.matchMedia("(max-width: 900px)").matches;
  location.hash = `#/task/${task.id}`;
});

function reveal() {
  requestAnimationFrame(() => ui.view.scrollIntoView({ block: "start" }));
}

function route() {
  const m = location.hash.match(/^#\/task\/([^/?#]+)/);
  if (m) openTask(decodeURIComponent(m[1]));
  else closeTask();
}
window.addEventListener("hashchange", route);
$("#refresh-tasks").addEventListener("click", () => tasks.refresh());

// --- theme and token -------------------------------------------------------------------------

const THEMES = ["auto", "dark", "light"];
function applyTheme(name) {
  if (name === "auto") delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = name;
  $("#theme-label").textContent = name;
  try {
    localStorage.setItem("metastream.theme", name);
  } catch {
    /* not persisted */
  }
}
applyTheme(localStorage.getItem("metastream.theme") || "auto");
$("#theme-toggle").addEventListener("click", () => {
  const now = localStorage.getItem("metastream.theme") || "auto";
  applyTheme(THEMES[(THEMES.indexOf(now) + 1) % THEMES.length]);
});

function syncTokenLabel() {
  $("#token-label").textContent = getToken() ? "token set" : "no token";
}
syncTokenLabel();
$("#token-input").value = getToken();
$("#token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  setToken($("#token-input").value.trim());
  afterTokenChange();
});
$("#token-clear").addEventListener("click", () => {
  $("#token-input").value = "";
  setToken("");
  afterTokenChange();
});
function afterTokenChange() {
  syncTokenLabel();
  $("#token-box").open = false;
  $("#banner").hidden = true;
  tasks.refresh();
  if (current) current.stream.retryNow();
}
onAuthError(() => {
  const banner = $("#banner");
  banner.textContent = "This server requires an API token — set it with the lock button at the top right.";
  banner.hidden = false;
  $("#token-box").open = true;
});

// --- test hooks (used by tests/e2e/test_browser.py; harmless for people) ----------------------

window.__metastream = {
  dropSocket: () => current && current.stream.drop(),
  renderedIds: () => {
    timeline.flush();
    return timeline.renderedIds();
  },
  expandAll: () => timeline.expandAll(),
  perf: () => ({ ...timeline.stats }),
  info: () =>
    current && {
      id: current.id,
      status: current.status,
      conn: current.conn,
      lastId: current.stream.lastId,
      connections: current.stream.connections,
    },
};

route();
