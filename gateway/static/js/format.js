// Readable one-line bodies for timeline rows, per event type; anything unknown shows as JSON.

import { clip, el, fmtBytes, fmtCost, fmtInt, fmtMs } from "./dom.js";

const SUMMARY_CHARS = 280;

const shortName = (s) => String(s || "").split(".").pop();

function json(value, pretty = false) {
  try {
    return pretty ? JSON.stringify(value, null, 2) : JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/** A collapsed "more" block: the full text only becomes DOM when opened (cheap for 10k rows). */
export function expander(label, getText, cls = "") {
  const pre = el(`pre.detail${cls ? `.${cls}` : ""}`);
  const box = el("details.more-box", null, el("summary", { text: label }), pre);
  box.addEventListener(
    "toggle",
    () => {
      if (box.open && !pre.textContent) pre.textContent = getText();
    },
    { passive: true },
  );
  return box;
}

function text(s, cls) {
  return el(`span${cls ? `.${cls}` : ""}`, { text: s });
}

// Warnings MetaGPT logs about its own plumbing (harmless for the user's task).
const INTERNAL_WARNINGS = [/Message no recipients/];

/** True for a LOG event that is one of MetaGPT's internal warnings. */
export function isInternalWarning(p) {
  const msg = String((p && p.message) ?? "");
  return INTERNAL_WARNINGS.some((re) => re.test(msg));
}

/** A one-line gist of a JSON object: its short scalar fields, else its keys. */
function jsonGist(obj) {
  if (obj && typeof obj.docs === "object" && obj.docs) {
    // MetaGPT's document bundles: name the documents.
    const names = Object.values(obj.docs).map((d) => [d.root_path, d.filename].filter(Boolean).join("/"));
    return `documents: ${names.join(", ")}`;
  }
  const pairs = [];
  for (const [k, v] of Object.entries(obj)) {
    if ((typeof v === "string" && v.length <= 60) || typeof v === "number" || typeof v === "boolean") {
      pairs.push(`${k}=${v}`);
    }
  }
  if (pairs.length) return pairs.slice(0, 6).join("  ");
  return `{${Object.keys(obj).slice(0, 8).join(", ")}}`;
}

/** JSON, or JSON whose quotes arrived escaped (some MetaGPT messages); else null. */
function parseJsonish(s) {
  for (const attempt of [() => JSON.parse(s), () => JSON.parse(JSON.parse(`"${s}"`))]) {
    try {
      return attempt();
    } catch {
      /* try the next reading */
    }
  }
  return null;
}

function contentBlock(content, extraLabel) {
  const trimmed = String(content).trim();
  if (!trimmed) return [text("(empty)", "muted")];
  const obj = trimmed.startsWith("{") ? parseJsonish(trimmed) : null;
  if (obj && typeof obj === "object") {
    return [text(clip(jsonGist(obj), SUMMARY_CHARS), "content mono"), expander("JSON", () => JSON.stringify(obj, null, 2))];
  }
  const first = clip(String(content).trim().replace(/\s+/g, " "), SUMMARY_CHARS);
  const nodes = [text(first, "content")];
  if (String(content).length > SUMMARY_CHARS || extraLabel) {
    nodes.push(expander(extraLabel || "full text", () => String(content)));
  }
  return nodes;
}

function tryPrettyJson(s) {
  try {
    return JSON.stringify(JSON.parse(s), null, 2);
  } catch {
    return String(s);
  }
}

/** Body nodes and an optional CSS modifier for one event. */
export function describe(ev, handlers = {}) {
  const p = ev.payload || {};
  switch (ev.event_type) {
    case "MESSAGE": {
      if (typeof p.content === "string") {
        const route = [
          p.cause_by ? shortName(p.cause_by) : null,
          p.send_to && p.send_to.length ? `→ ${p.send_to.map(shortName).join(", ")}` : null,
        ]
          .filter(Boolean)
          .join(" ");
        return { nodes: [route ? text(route, "tag") : null, ...contentBlock(p.content)] };
      }
      if (p.seq !== undefined) {
        // The synthetic workload: seq, emit time and padding.
        const pad = p.pad ? ` · pad ${fmtBytes(p.pad.length)}` : "";
        return { nodes: [text(`synthetic message #${p.seq}${pad}`, "content")] };
      }
      break;
    }
    case "ACTION_START":
    case "ACTION_END": {
      const ended = ev.event_type === "ACTION_END";
      const state = !ended ? "started" : p.ok === false ? `✗ failed after ${fmtMs(p.duration_ms)}` : `✓ ${fmtMs(p.duration_ms)}`;
      return {
        nodes: [text(p.action ?? "action", "content"), p.file ? el("code.file", { text: p.file }) : null, text(state, "muted")],
        cls: ended && p.ok === false ? "error" : undefined,
      };
    }
    case "NODE_FILLED":
      return {
        nodes: [
          text(`filled ${p.node ?? "node"}`, "content"),
          expander("structured output", () => tryPrettyJson(p.content ?? "")),
        ],
      };
    case "FILE_WRITTEN": {
      const link = el("a.file-link", {
        href: "#",
        text: p.path,
        onclick: (e) => {
          e.preventDefault();
          handlers.openFile?.(p.path);
        },
      });
      const meta = [p.kind, fmtBytes(p.size)].filter(Boolean).join(" · ");
      return {
        nodes: [
          link,
          text(meta, "muted"),
          p.preview ? expander("preview", () => p.preview + (p.preview_truncated ? "\n…" : "")) : null,
        ],
      };
    }
    case "COST":
      return { nodes: [text(costLine(p), "content")] };
    case "ROUND":
      return {
        nodes: [
          text(`round ${p.round}${p.n_round ? ` of ${p.n_round}` : ""}`, "content"),
          p.total_cost != null ? text(`spent ${fmtCost(p.total_cost)}`, "muted") : null,
        ],
        cls: "round",
      };
    case "LOG":
      if (isInternalWarning(p)) {
        // MetaGPT's own bookkeeping, not something the agents did: folded away, one click open.
        const gist = INTERNAL_WARNINGS.find((re) => re.test(String(p.message)))?.source.replace(/\\/g, "") ?? "";
        return {
          nodes: [expander(`MetaGPT internal warning: ${gist}`, () => String(p.message ?? ""), "internal")],
          cls: "internal",
        };
      }
      return { nodes: [text(`[${p.level ?? "log"}]`, "tag"), ...contentBlock(p.message ?? "")], cls: "log" };
    case "ERROR": {
      const msg = p.error ?? p.message ?? json(p);
      const where = [p.action, p.file].filter(Boolean).join(" ");
      return { nodes: [where ? text(where, "tag") : null, ...contentBlock(msg)], cls: "error" };
    }
    case "FLOW_START":
      return {
        nodes: [
          text(
            `flow started · LLM ${p.llm ?? "?"}${p.model ? ` (${p.model})` : ""} · ${p.n_round ?? "?"} rounds` +
              `${p.use_qa ? " · with QA" : ""}`,
            "content",
          ),
          expander("details", () => json(p, true)),
        ],
      };
    case "FLOW_END":
      return {
        nodes: [
          text(
            `flow ${p.ok === false ? "failed" : "finished"} · ${p.rounds ?? "?"} rounds · ` +
              `${fmtCost(p.total_cost)} · ${Array.isArray(p.files) ? p.files.length : p.files ?? 0} code files · ${fmtMs(p.duration_ms)}`,
            "content",
          ),
        ],
        cls: p.ok === false ? "error" : "ok",
      };
    default:
      break;
  }
  const raw = json(p);
  return {
    nodes: [
      text(clip(raw, SUMMARY_CHARS), "content mono"),
      raw.length > SUMMARY_CHARS ? expander("payload", () => json(p, true)) : null,
    ],
  };
}

export function costLine(p) {
  const tokens = `${fmtInt(p.prompt_tokens)} → ${fmtInt(p.completion_tokens)} tokens`;
  const total = p.total_cost != null ? ` (total ${fmtCost(p.total_cost)})` : "";
  return `${tokens} · ${fmtCost(p.cost)}${total}`;
}
