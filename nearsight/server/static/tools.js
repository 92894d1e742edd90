// nearsight web page, part 3: the image tools. "Complete": paint a hole over a photo and get completions
// from the collection side by side. "Colorize": a gray photo coloured from its neighbours, with the
// neighbours it used. Both run through the job API (app.js's runJob), so they show queue position and
// progress and can be cancelled.
"use strict";

const tools = {
  cFile: $("complete-file"), cStage: $("complete-stage"), cPhoto: $("complete-photo"), cMask: $("complete-mask"),
  cBrush: $("complete-brush"), cClear: $("complete-clear"), cRun: $("complete-run"), cCancel: $("complete-cancel"),
  cN: $("complete-n"), cStatus: $("complete-status"), cResults: $("complete-results"),
  zFile: $("colorize-file"), zN: $("colorize-n"), zCancel: $("colorize-cancel"), zStatus: $("colorize-status"),
  zResult: $("colorize-result"), zUsed: $("colorize-used"), zUsedTitle: $("colorize-used-title"),
};

const MAX_CANVAS_SIDE = 900; // the painting canvas; the mask sent is scaled back to the photo's own size
let completeSource = null;   // {blob, name, width, height}
let completeAbort = null;
let colorizeAbort = null;
let painting = false;
let painted = false;

function loadBitmap(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const img = new Image();
    img.onload = () => { URL.revokeObjectURL(url); resolve(img); };
    img.onerror = () => { URL.revokeObjectURL(url); reject(new Error("that file is not an image this browser can show")); };
    img.src = url;
  });
}

// The item's original file (its thumbnail when the original is gone), as a Blob.
async function itemBlob(id) {
  try { return await (await api(`api/items/${id}/image`)).blob(); } catch (_) { /* fall back */ }
  return (await api(`api/items/${id}/thumbnail`)).blob();
}

function figure(src, caption, onClick) {
  const fig = document.createElement("figure");
  fig.className = "tool-result";
  const img = document.createElement("img");
  img.src = src;
  img.alt = caption;
  const cap = document.createElement("figcaption");
  cap.textContent = caption;
  fig.append(img, cap);
  if (onClick) {
    fig.tabIndex = 0;
    fig.addEventListener("click", onClick);
    fig.addEventListener("keydown", (e) => { if (e.key === "Enter") onClick(); });
  }
  return fig;
}

// -- complete -----------------------------------------------------------------------------------------
async function setCompletePhoto(blob, name) {
  const img = await loadBitmap(blob);
  completeSource = { blob, name, width: img.naturalWidth, height: img.naturalHeight };
  const scale = Math.min(1, MAX_CANVAS_SIDE / Math.max(img.naturalWidth, img.naturalHeight));
  for (const c of [tools.cPhoto, tools.cMask]) {
    c.width = Math.max(1, Math.round(img.naturalWidth * scale));
    c.height = Math.max(1, Math.round(img.naturalHeight * scale));
  }
  tools.cPhoto.getContext("2d").drawImage(img, 0, 0, tools.cPhoto.width, tools.cPhoto.height);
  clearMask();
  tools.cStage.hidden = false;
  tools.cResults.replaceChildren();
  tools.cStatus.textContent = `${name}: ${img.naturalWidth}×${img.naturalHeight}. Paint over what should be replaced.`;
}

function clearMask() {
  tools.cMask.getContext("2d").clearRect(0, 0, tools.cMask.width, tools.cMask.height);
  painted = false;
  tools.cRun.disabled = true;
}

function paintAt(e) {
  const rect = tools.cMask.getBoundingClientRect();
  const x = (e.clientX - rect.left) * tools.cMask.width / rect.width;
  const y = (e.clientY - rect.top) * tools.cMask.height / rect.height;
  const r = Number(tools.cBrush.value) / 2 * tools.cMask.width / rect.width;
  const ctx = tools.cMask.getContext("2d");
  ctx.fillStyle = "rgba(255, 40, 40, 0.55)";
  ctx.beginPath();
  ctx.arc(x, y, r, 0, 2 * Math.PI);
  ctx.fill();
  painted = true;
  tools.cRun.disabled = false;
}

tools.cMask.addEventListener("pointerdown", (e) => { painting = true; tools.cMask.setPointerCapture(e.pointerId); paintAt(e); });
tools.cMask.addEventListener("pointermove", (e) => { if (painting) paintAt(e); });
for (const type of ["pointerup", "pointercancel"]) tools.cMask.addEventListener(type, () => { painting = false; });
document.addEventListener("keydown", (e) => {
  if ($("complete-tool").hidden || e.target.matches("input, select, textarea")) return;
  if (e.key === "[" || e.key === "]") {
    tools.cBrush.value = String(Number(tools.cBrush.value) + (e.key === "]" ? 8 : -8));
  }
});

// The painted strokes -> a black-and-white PNG at the photo's own size (white = the hole).
function maskBlob() {
  const out = document.createElement("canvas");
  out.width = completeSource.width;
  out.height = completeSource.height;
  const ctx = out.getContext("2d");
  ctx.drawImage(tools.cMask, 0, 0, out.width, out.height);
  const data = ctx.getImageData(0, 0, out.width, out.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const v = px[i + 3] > 0 ? 255 : 0;
    px[i] = px[i + 1] = px[i + 2] = v;
    px[i + 3] = 255;
  }
  ctx.putImageData(data, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

async function runComplete() {
  if (!completeSource || !painted) return;
  const form = new FormData();
  form.append("image", completeSource.blob, completeSource.name);
  form.append("mask", await maskBlob(), "mask.png");
  form.append("n", String(Math.max(1, Math.min(12, Number(tools.cN.value) || 4))));
  completeAbort = new AbortController();
  tools.cRun.disabled = true;
  tools.cCancel.hidden = false;
  tools.cResults.replaceChildren();
  tools.cStatus.textContent = "Submitting…";
  try {
    const answer = await runJob("complete", form, (s) => { tools.cStatus.textContent = jobLabel(s); }, completeAbort.signal);
    const skipped = answer.skipped || {};
    // the photo itself, its near-duplicates and its crops (or photos it was cropped from)
    const left = ["excluded", "near_duplicates", "crops"].reduce((n, key) => n + (skipped[key] || []).length, 0);
    tools.cStatus.textContent = `${answer.completions.length} completion${answer.completions.length === 1 ? "" : "s"}` +
      (left ? `; left out ${left} cop${left === 1 ? "y" : "ies"} of your photo found in the collection` : "");
    const shown = document.createElement("canvas");  // the photo with the painted hole, beside the results
    shown.width = tools.cPhoto.width;
    shown.height = tools.cPhoto.height;
    shown.getContext("2d").drawImage(tools.cPhoto, 0, 0);
    shown.getContext("2d").drawImage(tools.cMask, 0, 0);
    tools.cResults.append(figure(shown.toDataURL("image/jpeg", 0.9), "your photo and the hole"));
    answer.completions.forEach((c, i) => {
      tools.cResults.append(figure(c.image, `${i + 1}: from #${c.id}`, () => openDetail(c.id)));
    });
  } catch (err) {
    tools.cStatus.textContent = err.name === "AbortError" ? "Cancelled." : "";
    if (err.name !== "AbortError") showError(err);
  } finally {
    tools.cCancel.hidden = true;
    tools.cRun.disabled = !painted;
    completeAbort = null;
  }
}

tools.cFile.addEventListener("change", async () => {
  const file = tools.cFile.files[0];
  tools.cFile.value = "";
  if (file) { try { clearError(); await setCompletePhoto(file, file.name); } catch (err) { showError(err); } }
});
tools.cClear.addEventListener("click", clearMask);
tools.cRun.addEventListener("click", runComplete);
tools.cCancel.addEventListener("click", () => { if (completeAbort) completeAbort.abort(); });

async function startCompleteFromItem(id) {
  history.pushState({}, "", "?tool=complete");
  setTool("complete");
  try { clearError(); await setCompletePhoto(await itemBlob(id), `item-${id}.jpg`); } catch (err) { showError(err); }
}

// -- colorize -----------------------------------------------------------------------------------------
async function runColorize(blob, name) {
  const form = new FormData();
  form.append("image", blob, name);
  form.append("n", String(Math.max(1, Math.min(16, Number(tools.zN.value) || 8))));
  colorizeAbort = new AbortController();
  tools.zCancel.hidden = false;
  tools.zResult.replaceChildren();
  tools.zUsed.replaceChildren();
  tools.zUsedTitle.hidden = true;
  tools.zStatus.textContent = "Submitting…";
  const inputUrl = URL.createObjectURL(blob);
  try {
    const answer = await runJob("colorize", form, (s) => { tools.zStatus.textContent = jobLabel(s); }, colorizeAbort.signal);
    tools.zStatus.textContent = (answer.warnings || []).join(" ") || "Done.";
    tools.zResult.append(figure(inputUrl, name), figure(answer.image, "coloured"));
    tools.zUsedTitle.hidden = false;
    // The neighbours by the share of the photo each coloured; those the graph cut did not pick are dimmed.
    const order = answer.neighbor_ids.map((id, i) => [id, answer.usage[i]]).sort((a, b) => b[1] - a[1]);
    for (const [id, usage] of order) {
      const share = Math.round(100 * usage);
      const fig = card({ id, caption: share ? `coloured ${share}% of it` : "not used", width: 4, height: 3,
                         thumbnail_url: `api/items/${id}/thumbnail` });
      if (!share) fig.classList.add("unused");
      tools.zUsed.append(fig);
    }
  } catch (err) {
    tools.zStatus.textContent = err.name === "AbortError" ? "Cancelled." : "";
    if (err.name !== "AbortError") showError(err);
  } finally {
    tools.zCancel.hidden = true;
    colorizeAbort = null;
  }
}

// A gray copy made as most tools make one (Rec. 601 luma), to show the colours coming back.
async function grayCopy(blob) {
  const img = await loadBitmap(blob);
  const c = document.createElement("canvas");
  c.width = img.naturalWidth;
  c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const y = Math.round(0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2]);
    px[i] = px[i + 1] = px[i + 2] = y;
  }
  ctx.putImageData(data, 0, 0);
  return new Promise((resolve) => c.toBlob(resolve, "image/png"));
}

tools.zFile.addEventListener("change", () => {
  const file = tools.zFile.files[0];
  tools.zFile.value = "";
  if (file) { clearError(); runColorize(file, file.name); }
});
tools.zCancel.addEventListener("click", () => { if (colorizeAbort) colorizeAbort.abort(); });

async function startColorizeFromItem(id) {
  history.pushState({}, "", "?tool=colorize");
  setTool("colorize");
  try { clearError(); runColorize(await grayCopy(await itemBlob(id)), `gray-copy-of-${id}.png`); } catch (err) { showError(err); }
}

// A file dropped while a tool is open goes to that tool instead of an image search (app.js's drop handler
// runs after this one and is stopped here).
window.addEventListener("drop", (e) => {
  const tool = currentTool();
  const file = e.dataTransfer && e.dataTransfer.files[0];
  if (!tool || !file) return;
  e.preventDefault();
  e.stopImmediatePropagation();
  els.drop.hidden = true;
  dragDepth = 0;
  clearError();
  if (tool === "complete") setCompletePhoto(file, file.name).catch(showError);
  else runColorize(file, file.name);
}, true);
