// nearsight web page, part 2: the page's state in the address bar, the browse grid on arrival, the query
// shown above its results, the search filters, and the detail view of one item. Uses app.js's api(),
// search(), card(), setThumbnail(), showError() and els; tools.js adds the complete / colorize tools.
"use strict";

const view = {
  queryView: $("query-view"), queryImage: $("query-image"), queryLabel: $("query-label"),
  browseView: $("browse-view"), browse: $("browse"), browseMore: $("browse-more"), browseOrder: $("browse-order"),
  detail: $("detail"), detailImage: $("detail-image"), detailTitle: $("detail-title"),
  detailCaption: $("detail-caption"), detailFields: $("detail-fields"), detailMore: $("detail-more"),
  detailDownload: $("detail-download"), filters: $("filters"), moreRow: $("more-row"),
};

// Filter inputs <-> URL parameters <-> search API fields.
const FILTER_PARAMS = ["path", "caption", "minw", "maxw", "minh", "maxh", "after", "before", "only", "never",
                       "minsim", "collapse"];
let encoders = [];            // the collection's encoders (from /api/stats), for "more like this" per encoder
let defaultImageEncoder = null;
// Kinds as /api/stats names them (a trained model's kind is "triplet", whatever its name), in the order a
// person would pick them after the default; "helper" encoders (stats) serve colorization and completion.
const KIND_ORDER = ["triplet", "clip", "cnn", "gist", "tiny", "gist-gray", "lab-layout", "tiny-gray"];
const ENCODER_NOTES = {
  triplet: "what this collection was trained to find", clip: "what is in the picture (and text)",
  cnn: "what is in the picture", gist: "the same scene layout", "lab-layout": "the same colour layout",
  tiny: "the same colours and layout", "gist-gray": "the same layout in gray (for colorization)",
  "tiny-gray": "the same light and dark layout (for colorization)",
};
const itemNames = new Map();  // id -> promise of {caption, filename}: what a person calls an item
let browseOffset = 0;
let browseSeed = Math.floor(Math.random() * 1e9);
let queryUrl = null;          // object URL of an uploaded query image
let detailUrls = [];

function filterInput(name) { return $("f-" + name); }

// The search API's extra fields from the filter inputs (app.js's search() adds them to every query).
function searchOptions() {
  const filter = {};
  const path = filterInput("path").value.trim();
  const caption = filterInput("caption").value.trim();
  const numbers = { minw: "min_width", maxw: "max_width", minh: "min_height", maxh: "max_height" };
  if (path) filter.path_prefix = path;
  if (caption) filter.caption = caption;
  for (const [name, field] of Object.entries(numbers)) {
    const value = filterInput(name).value;
    if (value !== "") filter[field] = Number(value);
  }
  // Dates are the user's days: from local midnight (after), up to the next local midnight (before).
  const after = filterInput("after").value, before = filterInput("before").value;
  if (after) filter.added_after = new Date(after + "T00:00").getTime() / 1000;
  if (before) filter.added_before = new Date(before + "T00:00").getTime() / 1000 + 86400;
  const only = idList("only", "Only items"), never = idList("never", "Never items");
  if (only) filter.ids = only;
  if (never) filter.exclude = never;
  const out = {};
  if (Object.keys(filter).length) out.filter = filter;
  const minsim = filterInput("minsim").value;
  if (minsim !== "") out.min_similarity = Number(minsim) / 100;
  if (filterInput("collapse").checked) out.collapse = true;
  return out;
}

// "12, 40 #7" -> [12, 40, 7]; null when empty; an Error naming the bad entry otherwise (search() shows it).
function idList(name, label) {
  const text = filterInput(name).value.trim();
  if (!text) return null;
  const parts = text.split(/[\s,]+/).filter(Boolean);
  const bad = parts.find((p) => !/^#?\d+$/.test(p));
  if (bad !== undefined) throw new Error(`${label}: “${bad}” is not an item id (ids are whole numbers, e.g. 12, 40)`);
  return parts.map((p) => Number(p.replace("#", "")));
}

function filtersToParams(params) {
  for (const name of FILTER_PARAMS) {
    const input = filterInput(name);
    const value = input.type === "checkbox" ? (input.checked ? "1" : "") : input.value.trim();
    if (value) params.set(name, value);
  }
}

function filtersFromParams(params) {
  let any = false;
  for (const name of FILTER_PARAMS) {
    const input = filterInput(name);
    const value = params.get(name) || "";
    if (input.type === "checkbox") input.checked = value === "1"; else input.value = value;
    any = any || Boolean(value);
  }
  if (any) view.filters.open = true;
}

// -- the address bar ----------------------------------------------------------------------------
function urlFor(q, extra = {}) {
  const params = new URLSearchParams();
  if (q && q.kind === "text") params.set("q", q.value);
  if (q && q.kind === "id") params.set("id", String(q.value));
  if (q && q.kind === "image") params.set("image", q.label);
  if (q && q.kind === "batch") {
    const ids = q.items.filter((i) => i.kind === "id").map((i) => i.value);
    if (ids.length) params.set("ids", ids.join(","));
    for (const i of q.items) if (i.kind === "image") params.append("image", i.label);
  }
  if (els.encoder.value) params.set("encoder", els.encoder.value);
  filtersToParams(params);
  for (const [k, v] of Object.entries(extra)) if (v !== null && v !== undefined && v !== "") params.set(k, v);
  const s = params.toString();
  return s ? "?" + s : location.pathname;
}

// Called by search(): one history entry per query. Uploaded files cannot be in a link, nor in the history
// state (Chromium hands back null for a state holding a File once the entry is left), so they stay in this
// page's memory under a key the history state holds: Back and Forward repeat an image search in this tab.
const uploads = new Map();  // history key -> the query's uploaded items [{kind: "image", value: File, label}]
let uploadKey = 0;

function pushQuery(q) {
  const files = q.kind === "image" ? [q] : q.kind === "batch" ? q.items.filter((i) => i.kind === "image") : [];
  const state = {};
  if (files.length) {
    state.uploads = ++uploadKey;
    uploads.set(state.uploads, files);
  }
  const url = urlFor(q);
  if (url === location.search || (url === location.pathname && !location.search)) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
}

function showQuery(q) {
  setTool("");
  view.browseView.hidden = true;
  view.moreRow.hidden = false;
  els.results.hidden = false;
  view.queryView.hidden = false;
  view.queryImage.hidden = true;
  if (queryUrl) { URL.revokeObjectURL(queryUrl); queryUrl = null; }
  view.queryLabel.replaceChildren();
  if (q.kind === "text") {
    setQueryLabel("Matching", `“${q.value}”`);
    if (els.query.value.trim() !== q.value) els.query.value = q.value;
  } else if (q.kind === "id") {
    // The query's own picture and what a person calls it (caption, else file name), not its id.
    setQueryLabel("Like", "…");
    view.queryImage.hidden = false;
    showItemThumbnail(view.queryImage, q.value);
    itemName(q.value).then((name) => {
      if (current !== q) return;  // another query came first
      q.label = name.caption || name.filename;
      setQueryLabel("Like", q.label, name.caption ? name.filename : "");
      view.queryImage.alt = `query: ${q.label}`;
    });
  } else if (q.kind === "batch") {
    const images = q.items.every((i) => i.kind === "image");
    setQueryLabel("Like", `${q.items.length} ${images ? "images" : "items"}`, "each with its own results");
  } else {
    setQueryLabel("Like", q.label);
    queryUrl = URL.createObjectURL(q.value);
    view.queryImage.src = queryUrl;
    view.queryImage.alt = `query: ${q.label}`;
    view.queryImage.hidden = false;
  }
}

function setQueryLabel(lead, name, sub = "") {
  const strong = document.createElement("strong");
  strong.textContent = name;
  view.queryLabel.replaceChildren(lead + " ", strong);
  if (sub) {
    const small = document.createElement("span");
    small.className = "muted";
    small.textContent = " " + sub;
    view.queryLabel.append(small);
  }
}

// {caption, filename} of an item, fetched once per page; a failed fetch says "item #id" (and is retried).
function itemName(id) {
  if (!itemNames.has(id)) {
    itemNames.set(id, api(`api/items/${id}`).then((r) => r.json())
      .then((it) => ({ caption: it.caption || "", filename: it.filename }))
      .catch(() => { itemNames.delete(id); return { caption: "", filename: `item #${id}` }; }));
  }
  return itemNames.get(id);
}

// Like app.js's setThumbnail, but the blob URL is not revoked with the results it sits above.
async function showItemThumbnail(img, id) {
  const url = `api/items/${id}/thumbnail`;
  if (!token()) { img.src = url; return; }
  try {
    if (queryUrl) URL.revokeObjectURL(queryUrl);
    queryUrl = URL.createObjectURL(await (await api(url)).blob());
    img.src = queryUrl;
  } catch (_) { img.alt = "thumbnail unavailable"; }
}

// Restore the page from the address bar (on arrival, Back and Forward).
function route(state) {
  const params = new URLSearchParams(location.search);
  filtersFromParams(params);
  const encoder = params.get("encoder");
  if (encoder && [...els.encoder.options].some((o) => o.value === encoder)) els.encoder.value = encoder;
  const tool = params.get("tool") || "";
  const item = params.get("item");
  if (tool) {
    setTool(tool);
  } else if (params.get("q")) {
    search({ kind: "text", value: params.get("q") }, false, false);
  } else if (params.get("id") && /^\d+$/.test(params.get("id"))) {
    search({ kind: "id", value: Number(params.get("id")) }, false, false);
  } else if (params.get("ids") && /^\d+(,\d+)*$/.test(params.get("ids"))) {
    search(batchQuery(params.get("ids").split(",").map((id) => ({ kind: "id", value: Number(id) }))), false, false);
  } else if (params.get("image") && state && uploads.has(state.uploads)) {
    const files = uploads.get(state.uploads);
    search(files.length === 1 ? files[0] : batchQuery(files), false, false);
  } else {
    showBrowse();
  }
  if (item && /^\d+$/.test(item)) openDetail(Number(item), false);
  else if (view.detail.open) view.detail.close();
}

window.addEventListener("popstate", (e) => route(e.state));

// -- browse (the page on arrival) -----------------------------------------------------------------
function showBrowse() {
  current = null;
  setTool("");
  view.queryView.hidden = true;
  clearResults();
  els.info.textContent = "";
  els.results.hidden = true;
  view.moreRow.hidden = true;
  view.browseView.hidden = false;
  if (!view.browse.children.length) loadBrowse(false);
}

async function loadBrowse(append) {
  if (!append) { browseOffset = 0; view.browse.replaceChildren(); }
  const order = view.browseOrder.value;
  try {
    const page = await (await api(`api/items?k=${PAGE}&offset=${browseOffset}&order=${order}&seed=${browseSeed}`)).json();
    for (const item of page.items) view.browse.append(card(item));
    browseOffset += page.items.length;
    view.browseMore.hidden = browseOffset >= page.total;
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

view.browseMore.addEventListener("click", () => loadBrowse(true));
els.tokenForm.addEventListener("submit", () => { if (!view.browseView.hidden) loadBrowse(false); });
view.browseOrder.addEventListener("change", () => { browseSeed = Math.floor(Math.random() * 1e9); loadBrowse(false); });

// -- detail view ------------------------------------------------------------------------------------
async function openDetail(id, push = true) {
  if (push) history.pushState(history.state, "", urlFor(current, { item: id, tool: currentTool() }));
  for (const url of detailUrls) URL.revokeObjectURL(url);
  detailUrls = [];
  view.detailTitle.textContent = `#${id}`;
  view.detailCaption.textContent = "";
  view.detailFields.replaceChildren();
  view.detailMore.replaceChildren();
  view.detailImage.removeAttribute("src");
  view.detail.dataset.id = String(id);
  if (!view.detail.open) view.detail.showModal();
  try {
    const it = await (await api(`api/items/${id}`)).json();
    if (view.detail.dataset.id !== String(id)) return;
    view.detailTitle.textContent = it.filename;
    view.detailCaption.textContent = it.caption || "";
    const fields = [["Size", `${it.width} × ${it.height} px`], ["File", `${(it.bytes / 1024).toFixed(0)} KB`],
                    ["Item", `#${it.id}`], ["SHA-256", it.sha256]];
    if (it.duplicates) fields.push(["Copies", `${it.duplicates} other file${it.duplicates === 1 ? "" : "s"}`]);
    for (const [k, v] of fields) {
      const dt = document.createElement("dt"), dd = document.createElement("dd");
      dt.textContent = k; dd.textContent = v;
      view.detailFields.append(dt, dd);
    }
    // The large image: the original when the server still has it, else the thumbnail.
    await setDetailImage(it.image_url, it.thumbnail_url, it.filename);
    moreLikeButtons(id);
    const first = view.detailMore.querySelector("button");
    if (first) first.focus();
  } catch (err) {
    view.detail.close();
    showError(err);
  }
}

// "More like this" per image encoder: the default (the best the collection holds) first, then the other
// encoders people pick, each saying what it finds; the helpers (gray and colour-layout descriptors, made for
// colorization and completion) behind a "More encoders" disclosure, so the common choice is not buried.
function moreLikeButtons(id) {
  const rank = (e) => (e.name === defaultImageEncoder ? -1
    : KIND_ORDER.includes(e.kind) ? KIND_ORDER.indexOf(e.kind) : KIND_ORDER.length);
  const image = encoders.filter((e) => e.modalities.includes("image")).sort((a, b) => rank(a) - rank(b));
  const button = (e) => {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "more-like" + (e.name === defaultImageEncoder ? "" : " secondary");
    b.dataset.encoder = e.name;
    // a trained model is named by whoever trained it ("text"): say it is the collection's trained model
    b.textContent = `More like this (${e.kind === "triplet" && e.name !== "triplet" ? e.name + ", trained" : e.name})`;
    b.title = ENCODER_NOTES[e.kind || e.name] || "";
    b.addEventListener("click", () => {
      closeDetail();
      els.encoder.value = e.name;
      search({ kind: "id", value: id });
    });
    return b;
  };
  const helpers = image.filter((e) => e.helper && e.name !== defaultImageEncoder);
  for (const e of image) if (!helpers.includes(e)) view.detailMore.append(button(e));
  if (helpers.length) {
    const more = document.createElement("details");
    more.className = "more-encoders";
    const summary = document.createElement("summary");
    summary.textContent = "More encoders";
    const row = document.createElement("div");
    row.className = "tool-row";
    row.append(...helpers.map(button));
    more.append(summary, row);
    view.detailMore.append(more);
  }
}

async function setDetailImage(imageUrl, thumbUrl, filename) {
  view.detailImage.alt = filename;
  view.detailDownload.download = filename;
  if (!token()) {
    view.detailImage.onerror = () => { view.detailImage.onerror = null; view.detailImage.src = thumbUrl; };
    view.detailImage.src = imageUrl;
    view.detailDownload.href = imageUrl;
    return;
  }
  for (const url of [imageUrl, thumbUrl]) {  // <img> and <a> cannot send the token: fetch, show a blob URL
    try {
      const blob = await (await api(url)).blob();
      const objectUrl = URL.createObjectURL(blob);
      detailUrls.push(objectUrl);
      view.detailImage.src = objectUrl;
      view.detailDownload.href = objectUrl;
      return;
    } catch (_) { /* the original is gone: try the thumbnail */ }
  }
}

// Closing the detail view takes the item out of this history entry (Back then goes to the query before).
function dropItemFromUrl() {
  if (new URLSearchParams(location.search).has("item")) {
    history.replaceState(history.state, "", urlFor(current, { tool: currentTool() }));
  }
}

function closeDetail() {
  dropItemFromUrl();  // before whatever the caller pushes next
  if (view.detail.open) view.detail.close();
}

view.detail.addEventListener("close", dropItemFromUrl);

$("detail-complete").addEventListener("click", () => { const id = Number(view.detail.dataset.id); closeDetail(); startCompleteFromItem(id); });
$("detail-colorize").addEventListener("click", () => { const id = Number(view.detail.dataset.id); closeDetail(); startColorizeFromItem(id); });

// -- tools tabs -------------------------------------------------------------------------------------
function currentTool() {
  return !$("complete-tool").hidden ? "complete" : !$("colorize-tool").hidden ? "colorize" : "";
}

function setTool(tool) {
  $("complete-tool").hidden = tool !== "complete";
  $("colorize-tool").hidden = tool !== "colorize";
  for (const tab of document.querySelectorAll("#tabs .tab")) {
    tab.classList.toggle("active", tab.dataset.tool === tool);
    if (tab.dataset.tool === tool) tab.setAttribute("aria-current", "page"); else tab.removeAttribute("aria-current");
  }
  if (tool) {
    view.browseView.hidden = true;
    view.queryView.hidden = true;
    els.results.hidden = true;
    view.moreRow.hidden = true;
    els.info.textContent = "";
  }
}

for (const tab of document.querySelectorAll("#tabs .tab")) {
  tab.addEventListener("click", (e) => {
    e.preventDefault();
    const tool = tab.dataset.tool;
    history.pushState({}, "", tool ? `?tool=${tool}` : location.pathname);
    if (tool) setTool(tool); else showBrowse();
  });
}
$("home").addEventListener("click", (e) => { e.preventDefault(); history.pushState({}, "", location.pathname); els.query.value = ""; showBrowse(); });

// -- filters ------------------------------------------------------------------------------------------
for (const name of FILTER_PARAMS) {
  filterInput(name).addEventListener("change", () => { if (current) search(current); });
}
$("f-clear").addEventListener("click", () => {
  for (const name of FILTER_PARAMS) { const i = filterInput(name); if (i.type === "checkbox") i.checked = false; else i.value = ""; }
  if (current) search(current);
});

// Escape leaves a tool or a query for the browse grid (the detail dialog closes itself on Escape).
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape" || view.detail.open || e.target.matches("input, select, textarea")) return;
  if (current || currentTool()) { history.pushState({}, "", location.pathname); showBrowse(); }
});

// The encoders for "more like this", then the page the address bar names.
(async () => {
  // DOMContentLoaded comes after every deferred script has run: batch.js (loaded after this file) must be
  // there before a ?ids= link is searched, and the stats can arrive while it is still downloading
  const scriptsRun = document.readyState === "loading"
    ? new Promise((done) => document.addEventListener("DOMContentLoaded", done, { once: true })) : null;
  try {
    const stats = await (await api("api/stats")).json();
    encoders = stats.encoders;
    defaultImageEncoder = stats.default_encoder && stats.default_encoder.image;
    const encoder = new URLSearchParams(location.search).get("encoder");
    // app.js fills the selector too, keeping what is selected: make sure the linked encoder is there to select
    if (encoder && encoders.some((e) => e.name === encoder)) {
      if (![...els.encoder.options].some((o) => o.value === encoder)) els.encoder.add(new Option(encoder, encoder));
      els.encoder.value = encoder;
    }
  } catch (_) { /* app.js's loadStats shows the error or asks for a token */ }
  if (scriptsRun) await scriptsRun;
  route(history.state);
})();
