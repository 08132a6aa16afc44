// A deliberately small syntax colourer for the code viewer: comments, strings, numbers and
// keywords of the languages MetaGPT usually writes. One regex pass, DOM nodes only.

const KEYWORDS = {
  py: "and as assert async await break class continue def del elif else except False finally for from global if import in is lambda None nonlocal not or pass raise return self True try while with yield",
  js: "async await break case catch class const continue default delete do else export extends false finally for function if import in instanceof let new null of return super switch this throw true try typeof undefined var void while yield",
  sh: "case do done elif else esac export fi for function if in local return then until while",
};
const LANG_OF_EXT = { py: "py", js: "js", mjs: "js", ts: "js", tsx: "js", jsx: "js", sh: "sh", bash: "sh" };
const HASH_COMMENT = new Set(["py", "sh", "yaml", "yml", "toml", "txt"]);
const MAX_COLOURED_CHARS = 300_000; // beyond this, plain text stays fast

export function languageOf(path) {
  const ext = (path.split(".").pop() || "").toLowerCase();
  return LANG_OF_EXT[ext] || ext;
}

function tokenRegex(lang) {
  const comment = HASH_COMMENT.has(lang) ? String.raw`#.*` : String.raw`\/\/.*|\/\*[\s\S]*?\*\/`;
  const strings = lang === "py"
    ? String.raw`[rbfu]{0,2}"""[\s\S]*?"""|[rbfu]{0,2}'''[\s\S]*?'''|[rbfu]{0,2}"(?:\\.|[^"\\\n])*"|[rbfu]{0,2}'(?:\\.|[^'\\\n])*'`
    : String.raw`"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'|\x60(?:\\.|[^\x60\\])*\x60`;
  return new RegExp(`(${comment})|(${strings})|(\\b\\d[\\d_]*(?:\\.\\d+)?\\b)|([A-Za-z_][A-Za-z0-9_]*)`, "g");
}

/** Fill `target` with `text`, coloured when the language is known; returns the line count. */
export function renderCode(target, text, path) {
  const lang = languageOf(path);
  target.replaceChildren();
  const lines = text.split("\n").length;
  const gutter = document.createElement("div");
  gutter.className = "gutter";
  gutter.textContent = Array.from({ length: lines }, (_, i) => i + 1).join("\n");
  const code = document.createElement("pre");
  code.className = `src lang-${lang}`;
  const known = KEYWORDS[lang] || HASH_COMMENT.has(lang) || lang === "json";
  if (!known || text.length > MAX_COLOURED_CHARS) {
    code.textContent = text;
  } else {
    const kw = new Set((KEYWORDS[lang] || "").split(" "));
    const frag = document.createDocumentFragment();
    const re = tokenRegex(lang);
    let last = 0;
    const span = (cls, s) => {
      const n = document.createElement("span");
      n.className = cls;
      n.textContent = s;
      frag.append(n);
    };
    for (let m = re.exec(text); m; m = re.exec(text)) {
      const [tok, com, str, num, word] = m;
      if (word && !kw.has(word)) continue; // plain identifiers stay in the text run
      if (m.index > last) frag.append(text.slice(last, m.index));
      if (com) span("tok-com", tok);
      else if (str) span("tok-str", tok);
      else if (num) span("tok-num", tok);
      else span("tok-kw", tok);
      last = m.index + tok.length;
    }
    frag.append(text.slice(last));
    code.append(frag);
  }
  target.append(gutter, code);
  return lines;
}
