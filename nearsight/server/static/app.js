// nearsight web page: search by text, by an uploaded image, or by a result ("more like this").
// Plain browser JavaScript, no build step. All URLs are relative, so the page works under a path prefix.
"use strict";

const TOKEN_KEY = "nearsight.token";
const PAGE = 30;

const $ = (id) => document.getElementById(id);
const els = {
  form: $("search-form"), query: $("query"), encoder: $("encoder"), upload: $("upload"),
  results: $("results"), info: $("query-info"), error: $("error"), more: $("more"),
  stats: $("collection-stats"), tokenForm: $("token-form"), token: $("token"), drop: $("drop-overlay"),
};

// The current query: {kind: "text"|"id"|"image", value, label}; paging repeats it with a larger offset.
let current = null;
let offset = 0;
let generation = 0; // answers to an older query are dropped when they arrive late
let thumbUrls = [];
let serverLimits = {};  // /api/stats limits (upload bytes, k): batch.js checks a batch's size against them

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (response.ok) return response;
  let code = "error", message = response.statusText || ("HTTP " + response.status);
  try {
    const body = await response.json();
    if (body && body.error) { code = body.error.code; message = body.error.message; }
  } catch (_) { /* not JSON: keep the status text */ }
  if (response.status === 401) askForToken(token() ? "The saved token was refused." : "");
  throw new ApiError(response.status, code, message);
}

function askForToken(note) {
  els.tokenForm.hidden = false;
  els.tokenForm.querySelector("label").textContent =
    (note ? note + " " : "") + "This server needs an access token:";
  els.token.focus();
}

function showError(err) {
  els.error.textContent = err instanceof ApiError ? `${err.message} (${err.status})` : String(err.message || err);
  els.error.hidden = false;
}

function clearError() { els.error.hidden = true; els.error.textContent = ""; }

async function loadStats() {
  try {
    const stats = await (await api("api/stats")).json();
    els.stats.textContent = `${stats.items.toLocaleString()} images`;
    serverLimits = stats.limits || {};
    suggestText(stats.text || {});
    const chosen = els.encoder.value;
    els.encoder.replaceChildren(new Option("auto", ""));
    for (const e of stats.encoders) {
      const label = `${e.name} (${e.modalities.join("+")})`;
      els.encoder.add(new Option(label, e.name, false, e.name === chosen));
    }
    els.tokenForm.hidden = true;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

// The text box suggests only what this collection can answer: what its trained text model learnt, or
// that text needs one.
let feedbackOn = false;
function suggestText(text) {
  feedbackOn = Boolean(text.feedback);
  const examples = (text.examples || []).map((t) =>
    t.replace(/^a photo of (a|an) /, "").replace(/\.$/, "").replace(/^(A|An) /, (m) => m.toLowerCase()));
  if (!text.encoder) {
    els.query.placeholder = "Text search needs a text model (nearsight train); drop a photo to search by image";
  } else if (examples.length) {
    els.query.placeholder = `Describe a picture, e.g. ${examples.slice(0, 3).join(", ")}`;
  } else {
    els.query.placeholder = "Describe a picture";
  }
}

// With `serve --feedback`, opening a result of a text search records it and the results above it, which
// the user passed over: training triples for `nearsight train`. Best effort: a failure is not shown.
function sendFeedback(fig) {
  if (!feedbackOn || !current || current.kind !== "text") return;
  const above = [];
  for (let f = fig.previousElementSibling; f; f = f.previousElementSibling) above.push(Number(f.dataset.id));
  api("api/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ text: current.value, opened: Number(fig.dataset.id), passed_over: above.reverse() }) })
    .catch(() => {});
}

// The query in words, for the status line (views.js heads the results with the query itself).
function describe(q) {
  if (q.kind === "text") return `“${q.value}”`;
  if (q.kind === "id") return q.label ? `more like “${q.label}”` : "more like this";
  if (q.kind === "batch") return `${q.items.length} queries`;
  return `image ${q.label}`;
}

// ``push``: record the query in the address bar (views.js), so Back returns to the previous one and the
// link can be shared; restoring a query from the address bar searches without pushing again.
async function search(q, append = false, push = true) {
  const mine = ++generation;
  if (!append) {
    offset = 0; current = q;
    if (push && typeof pushQuery === "function") pushQuery(q);
    if (typeof showQuery === "function") showQuery(q);
  }
  clearError();
  let extra;
  try {
    extra = typeof searchOptions === "function" ? searchOptions() : {}; // filters, min similarity, collapse
  } catch (err) {  // a filter input the API would refuse (e.g. "12, x" as ids): say so before asking it
    els.info.textContent = "";
    if (!append) clearResults();
    showError(err);
    return;
  }
  if (q.kind === "batch") return searchBatch(q, extra, mine);  // batch.js: one call, results per query
  els.info.textContent = "Searching " + describe(q) + "…";
  const encoder = els.encoder.value;
  let options;
  if (q.kind === "image") {
    const form = new FormData();
    form.append("image", q.value, q.label);
    form.append("k", String(PAGE));
    form.append("offset", String(offset));
    if (encoder) form.append("encoder", encoder);
    for (const [name, value] of Object.entries(extra)) {
      form.append(name, typeof value === "object" ? JSON.stringify(value) : String(value));
    }
    options = { method: "POST", body: form };
  } else {
    const body = { [q.kind]: q.value, k: PAGE, offset, ...extra };
    if (encoder) body.encoder = encoder;
    options = { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  }
  try {
    const answer = await (await api("api/search", options)).json();
    if (mine !== generation) return;
    render(answer, append);
  } catch (err) {
    if (mine !== generation) return;
    els.info.textContent = "";
    if (!append) clearResults();
    showError(err);
  }
}

function clearResults() {
  for (const url of thumbUrls) URL.revokeObjectURL(url);
  thumbUrls = [];
  els.results.replaceChildren();
  els.results.classList.remove("batched");
  els.more.hidden = true;
}

function render(answer, append) {
  if (!append) clearResults();
  const shown = offset + answer.results.length;
  els.info.textContent = `${describe(current)}: ${shown} result${shown === 1 ? "" : "s"} ` +
    `in ${answer.took_ms.toFixed(1)} ms with ${answer.encoder}`;
  for (const r of answer.results) els.results.append(card(r));
  offset = shown;
  els.more.hidden = answer.results.length < PAGE;
}

function card(r) {
  const fig = document.createElement("figure");
  fig.className = "result";
  fig.dataset.id = String(r.id);
  fig.tabIndex = 0;
  fig.title = `#${r.id} (${r.width}×${r.height}) — open for details and more like this`;
  const img = document.createElement("img");
  img.alt = r.caption || `image ${r.id}`;
  img.loading = "lazy";
  img.width = 160;
  img.height = Math.max(1, Math.round(160 * r.height / Math.max(1, r.width)));
  setThumbnail(img, r.thumbnail_url);
  const caption = document.createElement("figcaption");
  const score = document.createElement("span");
  score.className = "score";
  // A similarity a person can read (cosine, or exp(-distance / typical distance) for L2 encoders).
  if (r.similarity !== undefined) {  // browse cards (views.js) have no score
    score.textContent = `${Math.round(100 * r.similarity)}%`;
    score.title = `similarity ${r.similarity.toFixed(3)}, raw score ${r.score.toFixed(4)}`;
    caption.append(score);
  }
  if (r.group_size > 1) {
    const copies = document.createElement("span");
    copies.className = "copies";
    copies.textContent = `+${r.group_size - 1}`;
    copies.title = `${r.group_size - 1} near-copies of this photo were folded into it`;
    caption.append(" ", copies);
  }
  if (r.caption) {
    const text = document.createElement("span");
    text.className = "caption";
    text.textContent = r.caption;
    caption.append(" ", text);
  }
  fig.append(img, caption);
  const more = () => {
    sendFeedback(fig);
    return typeof openDetail === "function" ? openDetail(r.id) : search({ kind: "id", value: r.id });
  };
  fig.addEventListener("click", more);
  fig.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); more(); } });
  return fig;
}

// <img src> cannot carry an Authorization header: with a token, fetch the thumbnail and show a blob URL.
async function setThumbnail(img, url) {
  if (!token()) { img.src = url; return; }
  try {
    const blob = await (await api(url)).blob();
    const objectUrl = URL.createObjectURL(blob);
    thumbUrls.push(objectUrl);
    img.src = objectUrl;
  } catch (_) { img.alt = "thumbnail unavailable"; }
}

// One file: an image search (paged); several: one batch search, results grouped per image (batch.js).
function searchFiles(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  const notImages = files.filter((f) => f.type && !f.type.startsWith("image/"));
  if (notImages.length) {
    showError(new Error(`${notImages.map((f) => f.name).join(", ")} ${notImages.length === 1 ? "is not an image" : "are not images"}`));
    return;
  }
  if (files.length === 1) search({ kind: "image", value: files[0], label: files[0].name });
  else search(batchQuery(files.map((f) => ({ kind: "image", value: f, label: f.name }))));
}

// "#12", "#12 #40 7": item ids typed into the search box, one (more like it) or several (a batch).
function typedIds(text) {
  if (!/^#\d+([\s,]+#?\d+)*$/.test(text)) return null;
  return text.split(/[\s,#]+/).filter(Boolean).map(Number);
}

// -- heavy image jobs (complete, colorize, recolor) ---------------------------------------------
// The image tools go through the job API rather than the synchronous routes, so a completion that
// waits behind others shows its queue position, then its stage and progress, and can be cancelled:
//   const answer = await runJob("complete", formOrObject, (s) => { note.textContent = jobLabel(s); }, abort.signal);
// resolves to the route's own answer; a failed job rejects with its ApiError (503 when the queue is full),
// and aborting the signal cancels the job on the server.
const JOB_POLL_MS = 500;

function jobLabel(status) {
  if (status.state === "queued") return `Queued, position ${status.queue_position}…`;
  if (status.state === "running") return `${status.stage || "starting"}… ${Math.round(100 * status.fraction)}%`;
  return status.state === "done" ? "Done" : status.state[0].toUpperCase() + status.state.slice(1);
}

async function runJob(method, body, onStatus = () => {}, signal = null) {
  const json = !(body instanceof FormData);
  const submit = { method: "POST", body: json ? JSON.stringify(body) : body,
                   headers: json ? { "Content-Type": "application/json" } : {} };
  let status = await (await api(`api/jobs?method=${encodeURIComponent(method)}`, submit)).json();
  const url = `api/jobs/${encodeURIComponent(status.id)}`;
  onStatus(status);
  while (status.state === "queued" || status.state === "running") {
    if (signal && signal.aborted) {
      await api(url, { method: "DELETE" }).catch(() => {}); // already finished: nothing to cancel
      throw new DOMException("the job was cancelled", "AbortError");
    }
    await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
    status = await (await api(url)).json();
    onStatus(status);
  }
  return (await api(`${url}/result`)).json(); // a failed or cancelled job rejects with its error here
}

// -- events ------------------------------------------------------------------------------------
els.form.addEventListener("submit", (e) => {
  e.preventDefault();
  const text = els.query.value.trim();
  const ids = typedIds(text);
  if (ids && ids.length === 1) search({ kind: "id", value: ids[0] });
  else if (ids) search(batchQuery(ids.map((id) => ({ kind: "id", value: id }))));
  else if (text) search({ kind: "text", value: text });
});

els.upload.addEventListener("change", () => {
  searchFiles(els.upload.files);
  els.upload.value = ""; // the same file chosen again still fires change
});

els.encoder.addEventListener("change", () => { if (current) search(current); });
els.more.addEventListener("click", () => { if (current) search(current, true); });

els.tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const t = els.token.value.trim();
  if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  els.token.value = "";
  els.tokenForm.hidden = true;
  loadStats();
  if (current) search(current);
});

// Drag and drop anywhere on the page.
let dragDepth = 0;
window.addEventListener("dragenter", (e) => {
  if (!e.dataTransfer || !Array.from(e.dataTransfer.types).includes("Files")) return;
  dragDepth++;
  els.drop.hidden = false;
});
window.addEventListener("dragleave", () => { if (--dragDepth <= 0) { dragDepth = 0; els.drop.hidden = true; } });
window.addEventListener("dragover", (e) => e.preventDefault());
window.addEventListener("drop", (e) => {
  e.preventDefault();
  dragDepth = 0;
  els.drop.hidden = true;
  searchFiles(e.dataTransfer && e.dataTransfer.files);
});

loadStats();
