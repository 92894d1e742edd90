// nearsight web page, part 4: batch queries. Several images chosen or dropped at once, or several item ids
// ("#12 #40" in the search box, or ?ids=12,40 in a link), go to the API as one batch search; the answer is
// shown one group per query, each headed by its query image and name. A group's "Just this one" repeats
// that query alone (with paging). Uses app.js's api(), card(), setThumbnail(), clearResults(), els, and
// views.js's itemName().
"use strict";

const BATCH_K = 12;  // results per query: enough to judge each group at a glance; one query alone pages on

// {kind: "batch", items: [{kind: "image", value: File, label} | {kind: "id", value: n}, ...]}
function batchQuery(items) {
  return { kind: "batch", items };
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

// The server takes one request body of at most max_upload_bytes of image (base64 in JSON): refuse a batch
// over it here, with the numbers, rather than send megabytes to get a 413.
function checkBatchSize(items) {
  const limit = serverLimits.max_upload_bytes;
  const bytes = items.reduce((sum, q) => sum + (q.kind === "image" ? q.value.size : 0), 0);
  if (limit && bytes > limit) {
    const mb = (n) => (n / 1048576).toFixed(1) + " MB";
    throw new Error(`these ${items.length} images are ${mb(bytes)} together; one batch search takes at most ` +
                    `${mb(limit)} of images: choose fewer`);
  }
}

async function batchEntry(q) {
  return q.kind === "image" ? { image: await readDataUrl(q.value) } : { id: q.value };
}

// What heads a group: the uploaded file's name, or the item's caption and file name (ids mean nothing).
async function batchLabels(q) {
  return Promise.all(q.items.map(async (item) => {
    if (item.kind === "image") return { title: item.label, sub: "" };
    const name = await itemName(item.value);
    return { title: name.caption || name.filename, sub: name.caption ? name.filename : "" };
  }));
}

async function searchBatch(q, extra, mine) {
  els.info.textContent = `Searching ${describe(q)}…`;
  try {
    checkBatchSize(q.items);
    const body = { batch: await Promise.all(q.items.map(batchEntry)), k: BATCH_K, ...extra };
    if (els.encoder.value) body.encoder = els.encoder.value;
    const [answer, labels] = await Promise.all([
      api("api/search", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) })
        .then((r) => r.json()),
      batchLabels(q),
    ]);
    if (mine !== generation) return;
    renderBatch(q, answer, labels);
  } catch (err) {
    if (mine !== generation) return;
    els.info.textContent = "";
    clearResults();
    showError(err);
  }
}

function renderBatch(q, answer, labels) {
  clearResults();
  els.results.classList.add("batched");
  let total = 0;
  answer.batch.forEach((group, n) => {
    const item = q.items[n];
    const section = document.createElement("section");
    section.className = "batch-group";
    section.setAttribute("aria-label", `Results like ${labels[n].title}`);
    const head = document.createElement("header");
    head.className = "batch-head";
    const img = document.createElement("img");
    img.className = "query-thumb";
    img.alt = `query: ${labels[n].title}`;
    if (item.kind === "image") {
      const url = URL.createObjectURL(item.value);
      thumbUrls.push(url);  // revoked by clearResults with the results it heads
      img.src = url;
    } else {
      setThumbnail(img, `api/items/${item.value}/thumbnail`);
    }
    const title = document.createElement("h3");
    title.textContent = labels[n].title;
    if (labels[n].sub) {
      const sub = document.createElement("span");
      sub.className = "muted";
      sub.textContent = " " + labels[n].sub;
      title.append(sub);
    }
    const count = document.createElement("span");
    count.className = "muted";
    count.textContent = `${group.results.length} result${group.results.length === 1 ? "" : "s"}`;
    const alone = document.createElement("button");
    alone.type = "button";
    alone.className = "secondary just-this";
    alone.textContent = "Just this one";
    alone.title = "Search by this query alone, with more results";
    alone.addEventListener("click", () => search(item));
    const words = document.createElement("div");
    words.className = "batch-words";
    words.append(title, count);
    head.append(img, words, alone);
    const grid = document.createElement("div");
    grid.className = "grid";
    for (const r of group.results) grid.append(card(r));
    section.append(head, grid);
    els.results.append(section);
    total += group.results.length;
  });
  els.info.textContent = `${describe(q)}: ${total} result${total === 1 ? "" : "s"} in ` +
    `${answer.took_ms.toFixed(1)} ms with ${answer.encoder}`;
  els.more.hidden = true;
}
