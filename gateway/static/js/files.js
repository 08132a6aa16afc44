// The generated files: a folder tree and a code viewer. Listing refreshes as files appear.

import { api } from "./api.js";
import { renderCode } from "./code.js";
import { el, fmtBytes } from "./dom.js";

const MAX_SHOWN_BYTES = 2_000_000;

function buildTree(files) {
  const root = { dirs: new Map(), files: [] };
  for (const f of files) {
    const parts = f.path.split("/");
    let node = root;
    for (const part of parts.slice(0, -1)) {
      if (!node.dirs.has(part)) node.dirs.set(part, { dirs: new Map(), files: [] });
      node = node.dirs.get(part);
    }
    node.files.push({ ...f, name: parts[parts.length - 1] });
  }
  return root;
}

export class FilesView {
  constructor({ tree, code, path, size, count, download }) {
    this.downloadEl = download;
    this.treeEl = tree;
    this.codeEl = code;
    this.pathEl = path;
    this.sizeEl = size;
    this.countEl = count;
    this.taskId = null;
    this.timer = null;
    this.seq = 0;
  }

  reset(taskId) {
    this.taskId = taskId;
    this.files = [];
    this.selected = null;
    this.seq += 1;
    clearTimeout(this.timer);
    this.timer = null;
    this.countEl.textContent = "";
    this.treeEl.replaceChildren(el("p.muted", { text: "No files yet." }));
    this.pathEl.textContent = "Select a file";
    this.sizeEl.textContent = "";
    if (this.downloadEl) this.downloadEl.hidden = true;
    this.codeEl.replaceChildren();
  }

  /** Reload the listing soon; bursts of FILE_WRITTEN events become one request. */
  refreshSoon(delay = 600) {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      this.refresh();
    }, delay);
  }

  async refresh() {
    const id = this.taskId;
    const seq = this.seq;
    let body;
    try {
      body = await api.listFiles(id);
    } catch (err) {
      if (seq !== this.seq) return;
      const why = err.status === 404 ? "File listing is not available for this task." : `Could not list files: ${err.message}`;
      this.treeEl.replaceChildren(el("p.muted", { text: why }));
      return;
    }
    if (seq !== this.seq) return; // another task was opened meanwhile
    const files = Array.isArray(body) ? body : body.files || [];
    const same = files.length === this.files.length && files.every((f, i) => f.path === this.files[i].path && f.size === this.files[i].size);
    this.files = files;
    this.countEl.textContent = files.length ? String(files.length) : "";
    if (same && this.treeEl.querySelector(".tree-root")) return;
    this.renderTree();
    if (this.selected && files.some((f) => f.path === this.selected)) this.open(this.selected, false);
  }

  renderTree() {
    if (!this.files.length) {
      this.treeEl.replaceChildren(el("p.muted", { text: "No files yet." }));
      return;
    }
    const render = (node, depth) => {
      const ul = el(depth ? "ul" : "ul.tree-root");
      const dirs = [...node.dirs.entries()].sort(([a], [b]) => a.localeCompare(b));
      for (const [name, child] of dirs) {
        const details = el("details", { open: true }, el("summary.dir", { text: name }), render(child, depth + 1));
        ul.append(el("li", null, details));
      }
      for (const f of node.files.sort((a, b) => a.name.localeCompare(b.name))) {
        const btn = el(
          "button.file",
          {
            type: "button",
            dataset: { path: f.path },
            title: `${f.path} · ${fmtBytes(f.size)}`,
            onclick: () => this.open(f.path),
          },
          el("span.fname", { text: f.name }),
          el("span.fsize", { text: fmtBytes(f.size) }),
        );
        if (f.path === this.selected) btn.classList.add("selected");
        ul.append(el("li", null, btn));
      }
      return ul;
    };
    this.treeEl.replaceChildren(render(buildTree(this.files), 0));
  }

  async open(path, select = true) {
    const id = this.taskId;
    const seq = this.seq;
    this.selected = path;
    if (select) {
      for (const b of this.treeEl.querySelectorAll("button.file")) b.classList.toggle("selected", b.dataset.path === path);
    }
    const meta = this.files.find((f) => f.path === path);
    this.pathEl.textContent = path;
    this.sizeEl.textContent = meta ? fmtBytes(meta.size) : "";
    if (this.downloadEl) this.downloadEl.hidden = false;
    if (meta && meta.size > MAX_SHOWN_BYTES) {
      this.codeEl.replaceChildren(el("p.muted", { text: `Too large to show here (${fmtBytes(meta.size)}).` }));
      return;
    }
    let text;
    try {
      text = await api.getFile(id, path);
    } catch (err) {
      if (seq === this.seq) this.codeEl.replaceChildren(el("p.error", { text: `Could not load ${path}: ${err.message}` }));
      return;
    }
    if (seq !== this.seq || this.selected !== path) return;
    const lines = renderCode(this.codeEl, text, path);
    this.sizeEl.textContent = `${lines} lines · ${fmtBytes(meta ? meta.size : text.length)}`;
  }
}
