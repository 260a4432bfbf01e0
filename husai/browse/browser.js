// husai feature browser. Vanilla JS, no library, nothing fetched from the network.
// Data (husai.browse.data, husai.browse.page): HB.data = {types, threshold, levels, layouts, models, cells, saes}
// is the index; a cell's payload {saes: {id: the SAE's per-latent fields}, blobs: {id: text}} is read when the cell
// is first opened, from <script type="application/json" id="cell-N"> in this page, or from the file
// HB.data.cells[N].file beside it, whose script calls HB.register(N, payload). Blob "z{sae}": the latents'
// activations as levels 0..levels, base85 of deflate(uint8 [n_live, p*p]), the grid in the layout order of
// HB.data.layouts["p-op"] (uint16: the input row a*p+b at each position); "e{sae}": their logit effects, base85 of
// uint8 [n_live, p] = round(effect_levels * e / max|e|) + 128.
"use strict";
const HB = window.HB = { data: JSON.parse(document.getElementById("husai-data").textContent),
  bytes: {}, layouts: {}, answers: {}, pos: {}, view: null, ready: false, errors: [], blobText: {}, cellLoads: {},
  loadedScripts: [] };
const D = HB.data;
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e[k] = v;
    else e.setAttribute(k, v);
  }
  for (const c of kids) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const fmt = (v, nd = 3) => (v === null || v === undefined ? "-" : typeof v === "number" ? v.toFixed(nd) : String(v));
const fmtAny = (v) => (typeof v === "number" && !Number.isInteger(v) ? v.toFixed(4)
  : typeof v === "object" ? JSON.stringify(v) : String(v));
const px = (p, size) => Math.max(1, size / p);  // CSS pixels per grid cell for a panel of ~size px

// ---------- data access ----------
function b64bytes(s) {
  const bin = atob(s), out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
// base85 with "<" and ">" swapped for "," and "." (husai.browse.data.text85): 5 characters per 4 bytes
const B85 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;,=.?@^_`{|}~";
const B85_VALUE = new Uint8Array(128);
for (let i = 0; i < 85; i++) B85_VALUE[B85.charCodeAt(i)] = i;
function b85bytes(s) {
  const n = s.length, rest = n % 5, out = new Uint8Array(Math.floor(n / 5) * 4 + (rest ? rest - 1 : 0));
  for (let i = 0, o = 0; i < n; i += 5) {
    let acc = 0;  // a short last group is padded with the top digit, as Python's b85decode does
    for (let j = 0; j < 5; j++) acc = acc * 85 + (i + j < n ? B85_VALUE[s.charCodeAt(i + j)] : 84);
    for (let j = 3; j >= 0 && o < out.length; j--, o++) out[o] = Math.floor(acc / 2 ** (8 * j)) % 256;
  }
  return out;
}
function blobText(id) { return HB.blobText[id] ?? document.getElementById(id).textContent.trim(); }
async function inflate(id) {  // the browser's own deflate decoder: no library
  const stream = new Blob([b85bytes(blobText(id))]).stream()
    .pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
async function levels(blobId) { return HB.bytes[blobId] || (HB.bytes[blobId] = await inflate(blobId)); }
function model(s) { return D.models[D.saes[s].model]; }
// ---------- a cell's payload, on demand ----------
const waiting = {};  // cell -> resolve of its pending load
HB.register = (ci, payload) => {
  for (const [i, rest] of Object.entries(payload.saes)) Object.assign(D.saes[Number(i)], rest);
  Object.assign(HB.blobText, payload.blobs);
  if (waiting[ci]) { waiting[ci](); delete waiting[ci]; }
};
function loadCell(ci) {  // -> a promise that the cell's SAEs hold their fields
  if (HB.cellLoads[ci]) return HB.cellLoads[ci];
  const cell = D.cells[ci];
  HB.cellLoads[ci] = new Promise((resolve, reject) => {
    if (!cell.file) { HB.register(ci, JSON.parse($("cell-" + ci).textContent)); resolve(); return; }
    waiting[ci] = resolve;
    const tag = el("script", { src: cell.file, "data-cell": ci });
    tag.onerror = () => { delete HB.cellLoads[ci]; reject(new Error(`cannot read ${cell.file} (beside this page)`)); };
    HB.loadedScripts.push(cell.file);
    document.head.append(tag);
  });
  return HB.cellLoads[ci];
}
function effect(s, k) {  // the k-th live latent's direct effect on the p answer logits
  const m = model(s), p = m.p, key = "e" + s, sae = D.saes[s];
  if (!HB.bytes[key]) HB.bytes[key] = b85bytes(blobText(key));
  const q = HB.bytes[key], f = sae.effect_scale[k] / D.effect_levels, out = new Float64Array(p);
  for (let c = 0; c < p; c++) out[c] = (q[k * p + c] - 128) * f;
  return out;
}
function layout(p, op) {
  const key = p + "-" + op;
  return HB.layouts[key] || (HB.layouts[key] = new Uint16Array(b64bytes(D.layouts[key]).buffer));
}
function answers(p, op) {  // the answer c of every input row a*p + b
  const key = p + "-" + op;
  if (!HB.answers[key]) {
    const c = new Int32Array(p * p);
    for (let a = 0; a < p; a++) for (let b = 0; b < p; b++)
      c[a * p + b] = op === "sub" ? (a - b + p) % p : op === "mul" ? (a * b) % p : (a + b) % p;
    HB.answers[key] = c;
  }
  return HB.answers[key];
}
function position(s, index) {  // position of latent `index` in SAE s's live list
  if (!HB.pos[s]) { HB.pos[s] = new Map(); D.saes[s].latents.index.forEach((i, k) => HB.pos[s].set(i, k)); }
  return HB.pos[s].get(index);
}
// z over the grid, rows a*p + b, from the k-th stored column: z = level * scale / levels
function unpack(q, k, scale, p, op) {
  const P = p * p, lay = layout(p, op), v = new Float32Array(P), f = scale / D.levels;
  for (let j = 0; j < P; j++) v[lay[j]] = q[k * P + j] * f;
  return v;
}
async function latentValues(s, k) {
  const m = model(s);
  return unpack(await levels("z" + s), k, D.saes[s].scale[k], m.p, m.operation);
}

// ---------- the measures the page computes from z ----------
function profile(v, p, op) {  // E[z | c] over the answer c
  const c = answers(p, op), sum = new Float64Array(p), n = new Float64Array(p);
  for (let i = 0; i < v.length; i++) { sum[c[i]] += v[i]; n[c[i]] += 1; }
  return Array.from(sum, (x, i) => (n[i] ? x / n[i] : 0));
}
const TRIG = {};
function trig(p) {
  if (!TRIG[p]) {
    const cos = new Float64Array(p), sin = new Float64Array(p);
    for (let t = 0; t < p; t++) { cos[t] = Math.cos(2 * Math.PI * t / p); sin[t] = Math.sin(2 * Math.PI * t / p); }
    TRIG[p] = { cos, sin };
  }
  return TRIG[p];
}
function spectrum(v, p) {  // |DFT2(z - mean)|^2 [p*p], index u*p + w for frequencies (u over a, w over b)
  const { cos, sin } = trig(p);
  let mean = 0;
  for (const x of v) mean += x;
  mean /= v.length;
  const Rr = new Float64Array(p * p), Ri = new Float64Array(p * p);  // over b, per a
  for (let a = 0; a < p; a++) for (let w = 0; w < p; w++) {
    let re = 0, im = 0;
    for (let b = 0; b < p; b++) { const x = v[a * p + b] - mean, t = (w * b) % p; re += x * cos[t]; im -= x * sin[t]; }
    Rr[a * p + w] = re; Ri[a * p + w] = im;
  }
  const power = new Float64Array(p * p);
  for (let u = 0; u < p; u++) for (let w = 0; w < p; w++) {
    let re = 0, im = 0;
    for (let a = 0; a < p; a++) {
      const t = (u * a) % p, c = cos[t], s = sin[t], xr = Rr[a * p + w], xi = Ri[a * p + w];
      re += xr * c + xi * s; im += xi * c - xr * s;
    }
    power[u * p + w] = re * re + im * im;
  }
  return power;
}
function topInputs(v, p, op, n = 10) {
  const c = answers(p, op), idx = Array.from(v.keys()).sort((i, j) => v[j] - v[i]).slice(0, n);
  return idx.filter((i) => v[i] > 0).map((i) => ({ a: Math.floor(i / p), b: i % p, c: c[i], z: v[i] }));
}
function composition(s, k) {  // decoder's in-span part over the key frequencies' planes, and its off-span share
  const L = D.saes[s].latents;
  return { keys: D.saes[s].keys, out: L.out[k], inp: L.inp[k], off: L.off_span[k] };
}

// ---------- drawing ----------
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(t) {  // t in [0, 1] -> [r, g, b] on viridis
  t = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
  return [0, 1, 2].map((j) => Math.round(a[j] + f * (b[j] - a[j])));
}
HB.colour = colour;
function gridCanvas(values, p, scale, cls, toUnit, readout) {  // values [p*p] rows a, columns b
  const cv = el("canvas", { class: cls, width: p, height: p });
  cv.style.width = cv.style.height = p * scale + "px";
  const ctx = cv.getContext("2d"), img = ctx.createImageData(p, p);
  for (let i = 0; i < p * p; i++) {
    const [r, g, b] = colour(toUnit(values[i]));
    img.data.set([r, g, b, 255], 4 * i);
  }
  ctx.putImageData(img, 0, 0);
  if (readout) cv.onmousemove = (ev) => {
    const r = cv.getBoundingClientRect();
    const a = Math.floor((ev.clientY - r.top) / r.height * p), b = Math.floor((ev.clientX - r.left) / r.width * p);
    if (a >= 0 && a < p && b >= 0 && b < p) readout(a, b, values[a * p + b]);
  };
  return cv;
}
function heatmap(v, p, op, px, readoutEl) {
  let max = 0;
  for (const x of v) max = Math.max(max, x);
  const c = answers(p, op);
  return gridCanvas(v, p, px, "heatmap", (x) => (max > 0 ? x / max : 0),
    readoutEl && ((a, b, z) => { readoutEl.textContent = `a=${a} b=${b} c=${c[a * p + b]} z=${z.toFixed(4)}`; }));
}
function spectrumCanvas(power, p, px, readoutEl) {
  let max = 0;
  for (const x of power) max = Math.max(max, x);
  const h = Math.floor(p / 2), shifted = new Float64Array(p * p);  // zero frequency in the centre
  for (let u = 0; u < p; u++) for (let w = 0; w < p; w++) shifted[((u + h) % p) * p + (w + h) % p] = power[u * p + w];
  let total = 0;
  for (const x of power) total += x;
  // a real function's power at (u, w) equals that at (-u, -w): the share of that real frequency is both
  const share = (u, w) => (total ? (power[((u + p) % p) * p + (w + p) % p] + power[((p - u) % p) * p + (p - w) % p]) / total : 0);
  return gridCanvas(shifted, p, px, "spectrum", (x) => (max > 0 && x > 0 ? 1 + Math.log10(x / max) / 4 : 0),
    readoutEl && ((i, j) => {
      const u = i - h, w = j - h;
      readoutEl.textContent = `u=${u} (over a) w=${w} (over b): share of (u, w) and (-u, -w) together ${share(u, w).toFixed(4)}`;
    }));
}
function lineCanvas(ys, w, hgt, cls) {
  const cv = el("canvas", { class: cls, width: w, height: hgt }), ctx = cv.getContext("2d");
  const max = Math.max(1e-30, ...ys), n = ys.length;
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(0.5, 0.5, w - 1, hgt - 1);
  ctx.strokeStyle = "#1565c0"; ctx.lineWidth = 1.5; ctx.beginPath();
  ys.forEach((y, i) => {
    const X = 2 + i / (n - 1) * (w - 4), Y = hgt - 2 - y / max * (hgt - 14);
    if (i) ctx.lineTo(X, Y); else ctx.moveTo(X, Y);
  });
  ctx.stroke();
  ctx.fillStyle = "#555"; ctx.font = "10px sans-serif"; ctx.fillText("max " + max.toFixed(3), 4, 10);
  return cv;
}
function compositionCanvas(comp, w) {
  const rows = [];
  comp.keys.forEach((k, i) => { rows.push(["out " + k, comp.out[i]]); rows.push(["in " + k, comp.inp[i]]); });
  rows.push(["off span", comp.off]);
  const hgt = rows.length * 14 + 4, cv = el("canvas", { class: "composition", width: w, height: hgt });
  const ctx = cv.getContext("2d");
  ctx.font = "10px sans-serif";
  rows.forEach(([name, x], i) => {
    ctx.fillStyle = "#333"; ctx.fillText(name, 2, 12 + i * 14);
    ctx.fillStyle = name.startsWith("out") ? "#2e7d32" : name.startsWith("in") ? "#6a1b9a" : "#999";
    ctx.fillRect(60, 3 + i * 14, Math.max(0, x || 0) * (w - 100), 10);
    ctx.fillStyle = "#333"; ctx.fillText(fmt(x, 2), w - 36, 12 + i * 14);
  });
  return cv;
}
function barCanvas(ys, w, hgt, cls) {  // signed values as bars about a zero line (green up, red down)
  const cv = el("canvas", { class: cls, width: w, height: hgt }), ctx = cv.getContext("2d");
  let max = 1e-30;
  for (const y of ys) max = Math.max(max, Math.abs(y));
  const n = ys.length, mid = hgt / 2, bw = (w - 4) / n;
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(0.5, 0.5, w - 1, hgt - 1);
  ys.forEach((y, i) => {
    ctx.fillStyle = y >= 0 ? "#2e7d32" : "#c62828";
    const hh = Math.abs(y) / max * (mid - 12);
    ctx.fillRect(2 + i * bw, y >= 0 ? mid - hh : mid, Math.max(1, bw - 0.3), hh);
  });
  ctx.fillStyle = "#555"; ctx.font = "10px sans-serif"; ctx.fillText("max |effect| " + max.toFixed(3), 4, 10);
  ctx.fillRect(2, mid, w - 4, 0.5);
  return cv;
}
function histCanvas(counts, w, hgt, cls) {
  const cv = el("canvas", { class: cls, width: w, height: hgt }), ctx = cv.getContext("2d");
  const max = Math.max(1, ...counts), bw = (w - 4) / counts.length;
  ctx.strokeStyle = "#ccc"; ctx.strokeRect(0.5, 0.5, w - 1, hgt - 1);
  ctx.fillStyle = "#ef6c00";
  counts.forEach((c, i) => { const hh = c / max * (hgt - 16); ctx.fillRect(2 + i * bw, hgt - 2 - hh, bw - 1, hh); });
  ctx.fillStyle = "#555"; ctx.font = "10px sans-serif"; ctx.fillText("max count " + max, 4, 10);
  return cv;
}
function panel(title, node, caption) {
  return el("div", { class: "panel" }, el("b", {}, title), node, caption ? el("span", { class: "cap" }, caption) : "");
}

