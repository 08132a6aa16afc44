// One task's WebSocket stream: resumes with ?last_event_id after any drop, hands events on
// exactly once and strictly in order, and reports the connection state on its own.

import { api, getToken, wsUrl } from "./api.js";
import { TERMINAL as TERMINAL_OK } from "./dom.js";

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 10_000;
// The gateway sends a heartbeat after 15 s of silence; three missed ones mean a dead link.
const SILENCE_LIMIT_MS = 45_000;
// Out-of-order events wait this long for the missing ones before we resync from the log.
const GAP_WAIT_MS = 1500;

export const CLOSE_NORMAL = 1000;
export const CLOSE_NOT_FOUND = 4404;
const CLOSE_CLIENT_RESYNC = 4000; // ours: "start again from lastId"

export class TaskStream {
  /**
   * @param {string} taskId
   * @param {{onEvents(events: object[]): void, onState(state: object): void,
   *          onConn(conn: string, detail?: string): void, onError(message: string): void}} handlers
   */
  constructor(taskId, handlers) {
    this.taskId = taskId;
    this.h = handlers;
    this.lastId = 0; // highest event id handed on; everything <= it is a duplicate
    this.pending = new Map(); // early arrivals (id > lastId + 1), keyed by id
    this.status = null;
    this.ws = null;
    this.attempt = 0;
    this.connections = 0;
    this.stopped = false;
    this.retryTimer = null;
    this.gapTimer = null;
    this.silenceTimer = null;
    this.onOnline = () => this.retryNow();
    window.addEventListener("online", this.onOnline);
  }

  start() {
    this.connect();
    return this;
  }

  /** Stop for good (the user left the task); no reconnect. */
  stop() {
    this.stopped = true;
    window.removeEventListener("online", this.onOnline);
    clearTimeout(this.retryTimer);
    clearTimeout(this.gapTimer);
    clearTimeout(this.silenceTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = null;
      ws.close(1000, "client left");
    }
  }

  /** Tests and the "reconnect" button: hang up as if the network dropped; we resume. */
  drop() {
    if (this.ws) this.ws.close(CLOSE_CLIENT_RESYNC, "dropped by client");
    else this.retryNow();
  }

  retryNow() {
    if (this.stopped || this.ws || this.ended) return;
    clearTimeout(this.retryTimer);
    this.connect();
  }

  get ended() {
    return TERMINAL_OK.has(this.status) && this._closedClean;
  }

  async connect() {
    if (this.opening) return;
    this.retryTimer = null;
    this._closedClean = false;
    this.h.onConn(this.connections ? "reconnecting" : "connecting");
    // Stay connected after a final state: a follow-up or a resume streams in on this socket.
    const params = { last_event_id: this.lastId, follow: "conversation" };
    if (getToken()) {
      // With authentication on, each connection uses a fresh short-lived ticket.
      this.opening = true;
      try {
        params.ticket = (await api.ticket(this.taskId)).ticket;
      } catch {
        this.opening = false;
        this.closed({ code: 4401 }); // back off and retry like any failed connection
        return;
      } finally {
        this.opening = false;
      }
      if (this.stopped || this.ws) return;
    }
    const ws = new WebSocket(wsUrl(`/ws/tasks/${encodeURIComponent(this.taskId)}`, params));
    this.ws = ws;
    // Anything buffered beyond the resume point comes again from the server, in order.
    this.pending.clear();
    clearTimeout(this.gapTimer);
    ws.onmessage = (m) => {
      if (ws !== this.ws) return;
      this.touch();
      let msg;
      try {
        msg = JSON.parse(m.data);
      } catch {
        return;
      }
      this.handle(msg);
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      clearTimeout(this.silenceTimer);
      this.closed(e);
    };
  }

  touch() {
    clearTimeout(this.silenceTimer);
    this.silenceTimer = setTimeout(() => this.drop(), SILENCE_LIMIT_MS);
  }

  handle(msg) {
    const data = msg && msg.data;
    switch (msg && msg.type) {
      case "connected":
        this.connections += 1;
        this.attempt = 0;
        this.h.onConn("live");
        break;
      case "event":
        this.accept(data);
        break;
      case "state":
        this.status = data.status;
        this.h.onState(data);
        // The run ended; the socket stays open for the conversation's next run.
        if (TERMINAL_OK.has(data.status)) this.h.onConn("ended");
        else if (this.connections) this.h.onConn("live");
        break;
      case "heartbeat":
        // The server has persisted more than we hold and nothing is in flight: resync.
        if (data && data.last_event_id > this.lastId && !this.pending.size) this.scheduleGapCheck();
        break;
      case "error":
        this.h.onError(data && data.message ? data.message : "stream error");
        break;
      default:
        break; // unknown types are for newer clients
    }
  }

  accept(ev) {
    const id = ev && ev.event_id;
    if (!Number.isInteger(id) || id <= this.lastId || this.pending.has(id)) return;
    if (id !== this.lastId + 1) {
      this.pending.set(id, ev);
      this.scheduleGapCheck();
      return;
    }
    const out = [ev];
    this.lastId = id;
    while (this.pending.has(this.lastId + 1)) {
      const next = this.pending.get(this.lastId + 1);
      this.pending.delete(this.lastId + 1);
      out.push(next);
      this.lastId += 1;
    }
    if (!this.pending.size) clearTimeout(this.gapTimer);
    this.h.onEvents(out);
  }

  scheduleGapCheck() {
    if (this.gapTimer) clearTimeout(this.gapTimer);
    const at = this.lastId;
    this.gapTimer = setTimeout(() => {
      this.gapTimer = null;
      if (this.lastId === at) this.drop(); // still stuck: reconnect from lastId
    }, GAP_WAIT_MS);
  }

  closed(e) {
    if (this.stopped) return;
    if (e.code === CLOSE_NOT_FOUND) {
      this.h.onConn("not found");
      this.stopped = true;
      return;
    }
    if (e.code === CLOSE_NORMAL && TERMINAL_OK.has(this.status)) {
      this._closedClean = true;
      this.h.onConn("ended");
      return;
    }
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** this.attempt);
    const delay = Math.round(base * (0.5 + Math.random() / 2)); // jitter: no thundering herd
    this.attempt += 1;
    this.h.onConn("reconnecting", `retry in ${(delay / 1000).toFixed(1)} s`);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
