// The /ui page: an image's PCA pictures, its nearest neighbours, patch
// similarity heat maps over it and over each neighbour, and segmentation
// against a labelled patch collection. Everything goes through the public API
// with the key the user types in; nothing is loaded from anywhere else.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  image: null,        // the picked image as a data: URL
  picture: null,      // its decoded HTMLImageElement
  tokens: null,       // {gh, gw, dim, data: Float32Array[gh * gw * dim]} (unit vectors)
  patch: null,        // [row, col] of the clicked patch
  neighbours: [],     // [{li, canvas, picture, tokens}]
  run: 0,             // bumped per image: answers of an older image are dropped
};

// ---- the API ----------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra);
  const key = $("key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(method, path, body, accept) {
  const init = { method, headers: headers(accept ? { Accept: accept } : {}) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const r = await fetch(path, init);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try {
      const j = await r.json();
      if (j.error && j.error.message) msg = r.status + ": " + j.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    const err = new Error(msg);
    err.status = r.status;
    throw err;
  }
  return r;
}

function say(text, bad) {
  const s = $("status");
  s.textContent = text;
  s.className = bad ? "error" : "";
}

function model() {
  return $("model").value || undefined;
}

// ---- patch tokens and heat maps ---------------------------------------------

// Patch tokens of an image (data: URL), each L2-normalised, on the whole image
// resized to a square ("square" crop), so that the grid covers all of it.
async function patchTokens(dataUrl) {
  const r = await api("POST", "/v1/features",
    { image: dataUrl, cls: false, patch: true, crop: "square", model: model() });
  const j = await r.json();
  const byWidth = j.data[0].patch;
  const dim = Math.max(...Object.keys(byWidth).map(Number));
  const rows = byWidth[String(dim)];
  const data = new Float32Array(rows.length * dim);
  rows.forEach((v, i) => data.set(v, i * dim));
  return { gh: j.grid.height, gw: j.grid.width, dim, data };
}

// Cosine similarity of query (a unit vector) to every patch of t.
function similarity(query, t) {
  const n = t.gh * t.gw;
  const out = new Float32Array(n);
  for (let p = 0; p < n; p++) {
    let s = 0;
    for (let d = 0; d < t.dim; d++) s += query[d] * t.data[p * t.dim + d];
    out[p] = s;
  }
  return out;
}

// A perceptually ordered ramp (dark blue -> teal -> green -> yellow).
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function ramp(x) {
  const f = Math.min(Math.max(x, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(f), RAMP.length - 2);
  const a = f - i;
  return RAMP[i].map((c, k) => Math.round(c + a * (RAMP[i + 1][k] - c)));
}

// Draws picture on canvas with sims (or nothing) over its patch grid.
function paint(canvas, picture, t, sims, mark) {
  const ctx = canvas.getContext("2d");
  ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
  if (!t || !sims) return;
  let lo = Infinity, hi = -Infinity;
  for (const s of sims) { lo = Math.min(lo, s); hi = Math.max(hi, s); }
  const cw = canvas.width / t.gw, ch = canvas.height / t.gh;
  ctx.globalAlpha = 0.62;
  for (let r = 0; r < t.gh; r++) {
    for (let c = 0; c < t.gw; c++) {
      const [R, G, B] = ramp((sims[r * t.gw + c] - lo) / (hi - lo || 1));
      ctx.fillStyle = `rgb(${R},${G},${B})`;
      ctx.fillRect(c * cw, r * ch, Math.ceil(cw), Math.ceil(ch));
    }
  }
  ctx.globalAlpha = 1;
  if (mark) {
    ctx.strokeStyle = "#ff2d55";
    ctx.lineWidth = 2;
    ctx.strokeRect(mark[1] * cw, mark[0] * ch, cw, ch);
  }
}

function fitCanvas(canvas, picture, maxSide) {
  const s = maxSide / Math.max(picture.naturalWidth, picture.naturalHeight);
  canvas.width = Math.max(1, Math.round(picture.naturalWidth * s));
  canvas.height = Math.max(1, Math.round(picture.naturalHeight * s));
}

function showHeat() {
  const t = state.tokens;
  if (!t || !state.patch) return;
  const [r, c] = state.patch;
  const q = t.data.subarray((r * t.gw + c) * t.dim, (r * t.gw + c + 1) * t.dim);
  paint($("view"), state.picture, t, similarity(q, t), state.patch);
  $("view").dataset.heat = r + "," + c;
  for (const n of state.neighbours) {
    if (!n.tokens || n.tokens.dim !== t.dim) continue;
    paint(n.canvas, n.picture, n.tokens, similarity(q, n.tokens), null);
    n.canvas.dataset.heat = r + "," + c;
  }
}

function onViewClick(ev) {
  const t = state.tokens;
  if (!t) return;
  const box = ev.target.getBoundingClientRect();
  const col = Math.min(t.gw - 1, Math.floor((ev.clientX - box.left) / box.width * t.gw));
  const row = Math.min(t.gh - 1, Math.floor((ev.clientY - box.top) / box.height * t.gh));
  state.patch = [row, col];
  showHeat();
}

// ---- the panels ---------------------------------------------------------------

async function showPca(run) {
  const out = $("pca-out");
  out.innerHTML = "<p class=\"empty\">computing&hellip;</p>";
  const body = { image: state.image, crop: "square", format: "png", model: model() };
  const th = $("threshold").value;
  if (th !== "") body.threshold = Number(th);
  if ($("rasa").checked) body.rasa = true;
  try {
    const r = await api("POST", "/v1/pca", body, "image/png");
    const url = URL.createObjectURL(await r.blob());
    if (run !== state.run) return;
    const img = new Image();
    img.id = "pca";
    img.alt = "PCA of the patch tokens at each trained width";
    img.src = url;
    out.replaceChildren(img);
  } catch (e) {
    if (run === state.run) out.innerHTML = "";
    if (run === state.run) out.append(Object.assign(document.createElement("p"),
      { className: "empty", textContent: "PCA: " + e.message }));
  }
}

function loadPicture(src) {
  return new Promise((ok, fail) => {
    const img = new Image();
    img.onload = () => ok(img);
    img.onerror = () => fail(new Error("the browser cannot show this image"));
    img.src = src;
  });
}

function blobToDataUrl(blob) {
  return new Promise((ok, fail) => {
    const r = new FileReader();
    r.onload = () => ok(r.result);
    r.onerror = () => fail(r.error);
    r.readAsDataURL(blob);
  });
}

async function showNeighbours(run) {
  const list = $("neighbours");
  list.replaceChildren();
  state.neighbours = [];
  const opt = $("collection").selectedOptions[0];
  if (!opt) return;
  const name = opt.value, withImages = opt.dataset.images === "1";
  const k = Math.max(1, Math.min(100, Number($("k").value) || 8));
  const r = await api("POST", "/v1/collections/" + encodeURIComponent(name) + "/search",
    { image: state.image, k, include: ["metadata"] });
  const hits = (await r.json()).results;
  if (run !== state.run) return;
  for (const h of hits) {
    const li = document.createElement("li");
    const canvas = document.createElement("canvas");
    const label = document.createElement("div");
    label.textContent = h.id;
    const score = document.createElement("div");
    score.className = "score";
    score.textContent = "score " + h.score.toFixed(4);
    li.append(canvas, label, score);
    list.append(li);
    const n = { li, canvas, picture: null, tokens: null };
    state.neighbours.push(n);
    if (!withImages) { canvas.hidden = true; continue; }
    fillNeighbour(n, name, h.id, run).catch((e) => say(h.id + ": " + e.message, true));
  }
  list.dataset.count = String(hits.length);
}

// A neighbour's stored image and its patch tokens, for its heat map.
async function fillNeighbour(n, collection, id, run) {
  const r = await api("GET", "/v1/collections/" + encodeURIComponent(collection) +
    "/items/" + encodeURIComponent(id) + "/image");
  const dataUrl = await blobToDataUrl(await r.blob());
  n.picture = await loadPicture(dataUrl);
  if (run !== state.run) return;
  fitCanvas(n.canvas, n.picture, 180);
  paint(n.canvas, n.picture, null, null, null);
  n.tokens = await patchTokens(dataUrl);
  if (run === state.run) showHeat();
}

// The VOC colour of a label (bits of the label spread over R, G and B).
function labelColour(label) {
  let r = 0, g = 0, b = 0;
  for (let i = 0, c = label; i < 8; i++, c >>= 3) {
    r |= ((c >> 0) & 1) << (7 - i);
    g |= ((c >> 1) & 1) << (7 - i);
    b |= ((c >> 2) & 1) << (7 - i);
  }
  return [r, g, b];
}

async function segment() {
  const name = $("seg-collection").value;
  const out = $("segment-out");
  if (!name || !state.image) return;
  try {
    const r = await api("POST", "/v1/collections/" + encodeURIComponent(name) + "/segment",
      { image: state.image, format: "png" }, "image/png");
    const mask = await loadPicture(URL.createObjectURL(await r.blob()));
    // The answer holds one label per pixel (gray): colour it over the image.
    const canvas = document.createElement("canvas");
    canvas.id = "segmentation";
    fitCanvas(canvas, state.picture, 448);
    const ctx = canvas.getContext("2d");
    ctx.drawImage(mask, 0, 0, canvas.width, canvas.height);
    const px = ctx.getImageData(0, 0, canvas.width, canvas.height);
    const labels = new Set();
    for (let i = 0; i < px.data.length; i += 4) {
      const label = px.data[i];
      labels.add(label);
      const [R, G, B] = label === 255 ? [0, 0, 0] : labelColour(label);
      px.data[i] = R; px.data[i + 1] = G; px.data[i + 2] = B; px.data[i + 3] = 150;
    }
    ctx.drawImage(state.picture, 0, 0, canvas.width, canvas.height);
    const overlay = document.createElement("canvas");
    overlay.width = canvas.width;
    overlay.height = canvas.height;
    overlay.getContext("2d").putImageData(px, 0, 0);
    ctx.drawImage(overlay, 0, 0);
    const legend = document.createElement("p");
    legend.className = "empty";
    legend.textContent = "labels: " + [...labels].sort((a, b) => a - b).join(", ");
    out.replaceChildren(canvas, legend);
  } catch (e) {
    out.textContent = "segmentation: " + e.message;
  }
}

async function onImage(file) {
  if (!file) return;
  const run = ++state.run;
  say("reading " + file.name);
  state.image = await blobToDataUrl(file);
  try {
    state.picture = await loadPicture(state.image);
  } catch (e) {
    say(e.message, true);
    return;
  }
  state.tokens = null;
  state.patch = null;
  const view = $("view");
  fitCanvas(view, state.picture, 448);
  delete view.dataset.heat;
  view.hidden = false;
  paint(view, state.picture, null, null, null);
  $("hint").hidden = false;
  say("embedding");
  const jobs = [
    patchTokens(state.image).then((t) => { if (run === state.run) state.tokens = t; }),
    showPca(run),
    showNeighbours(run),
  ];
  const results = await Promise.allSettled(jobs);
  if (run !== state.run) return;
  const failed = results.filter((x) => x.status === "rejected").map((x) => x.reason.message);
  say(failed.length ? failed.join("; ") : "ready: click a patch", failed.length > 0);
  document.body.dataset.ready = "1";
}

// ---- set-up -------------------------------------------------------------------

async function loadLists() {
  try {
    const models = (await (await api("GET", "/v1/models")).json()).data;
    $("model").replaceChildren(...models.map((m) => {
      const o = new Option(m.id + " (" + m.embed_dim + "-d, " + m.precision + ")", m.id);
      o.selected = m.default;
      return o;
    }));
    const colls = (await (await api("GET", "/v1/collections")).json()).collections;
    const cls = colls.filter((c) => (c.level || "cls") === "cls");
    const patch = colls.filter((c) => c.level === "patch");
    $("collection").replaceChildren(...cls.map((c) => {
      const o = new Option(c.name + " (" + c.count + ")", c.name);
      o.dataset.images = c.store_images ? "1" : "0";
      return o;
    }));
    $("seg-collection").replaceChildren(...patch.map((c) => new Option(c.name, c.name)));
    $("segment-panel").hidden = patch.length === 0;
    say(models.length + " model(s), " + colls.length + " collection(s)");
  } catch (e) {
    say(e.status === 401 || e.status === 403 ? "enter an API key" : e.message, true);
  }
}

function setUp() {
  $("key").value = sessionStorage.getItem("franca-key") || "";
  $("key").addEventListener("change", () => {
    sessionStorage.setItem("franca-key", $("key").value.trim());
    loadLists();
  });
  $("file").addEventListener("change", (e) => onImage(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    onImage(e.dataTransfer.files[0]);
  });
  $("view").addEventListener("click", onViewClick);
  const again = () => { if (state.image) showPca(state.run); };
  $("threshold").addEventListener("change", again);
  $("rasa").addEventListener("change", again);
  $("collection").addEventListener("change", () => {
    if (state.image) showNeighbours(state.run).catch((e) => say(e.message, true));
  });
  $("segment").addEventListener("click", segment);
  loadLists();
}

setUp();
