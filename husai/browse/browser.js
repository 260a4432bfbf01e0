// husai feature browser. Vanilla JS, no library, nothing fetched: everything is in this page.
// Data (husai.browse.data): HB.data = {types, threshold, levels, layouts, models, saes}; each SAE's latent
// activations are levels 0..HB.data.levels in <script id="z{sae}">, base64 of deflate(uint8 [n_live, p*p]),
// the grid in the layout order of HB.data.layouts["p-op"] (uint16: the input row a*p+b at each position).
"use strict";
const HB = window.HB = { data: JSON.parse(document.getElementById("husai-data").textContent),
  bytes: {}, layouts: {}, answers: {}, pos: {}, view: null, ready: false, errors: [] };
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
async function inflate(id) {  // the browser's own deflate decoder: no library
  const stream = new Blob([b85bytes(document.getElementById(id).textContent.trim())]).stream()
    .pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}
async function levels(blobId) { return HB.bytes[blobId] || (HB.bytes[blobId] = await inflate(blobId)); }
function model(s) { return D.models[D.saes[s].model]; }
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
function panel(title, node, caption) {
  return el("div", { class: "panel" }, el("b", {}, title), node, caption ? el("span", { class: "cap" }, caption) : "");
}

// ---------- the latent list ----------
const COLS = [["seed", "seed"], ["index", "latent"], ["type", "type"], ["freq", "plane k"], ["rate", "firing"],
  ["reappear", "reappear"], ["best_cos", "mean best cos"]];
const SORTS = [["index", "latent index"], ["type", "type"], ["rate", "firing rate"], ["reappear", "reappearance"],
  ["best_cos", "mean best-match cosine"], ["freq", "decoder plane k"], ["answer", "answer share"],
  ["purity", "Fourier purity"]];
const cells = [...new Set(D.saes.map((s) => s.cell))];
function seedsOf(cell) { return D.saes.map((s, i) => i).filter((i) => D.saes[i].cell === cell); }
function rowsFor() {
  const cell = $("cell-select").value, seed = $("seed-select").value;
  const t = $("type-filter").value, f = $("freq-filter").value, q = $("search").value.trim();
  const minRate = Number($("min-rate").value) || 0, minReap = Number($("min-reappear").value) || 0;
  const rows = [];
  for (const s of seedsOf(cell)) {
    if (seed !== "all" && String(s) !== seed) continue;
    const L = D.saes[s].latents;
    L.index.forEach((index, k) => {
      if (t !== "any" && String(L.type[k]) !== t) return;
      if (f !== "any" && String(L.freq[k]) !== f) return;
      if (q !== "" && String(index) !== q) return;
      if (L.rate[k] < minRate || (minReap > 0 && !(L.reappear[k] >= minReap))) return;
      rows.push({ s, k, seed: D.saes[s].seed, index, type: L.type[k], freq: L.freq[k], rate: L.rate[k],
        reappear: L.reappear[k], best_cos: L.best_cos[k], answer: L.answer[k], purity: L.purity[k] });
    });
  }
  const key = $("sort-key").value, dir = $("sort-dir").value === "asc" ? 1 : -1;
  rows.sort((x, y) => dir * ((x[key] ?? -1) - (y[key] ?? -1)) || x.s - y.s || x.index - y.index);
  return rows;
}
const MAX_ROWS = 2000;
function renderList() {
  const rows = rowsFor(), body = $("latent-body");
  body.replaceChildren();
  for (const r of rows.slice(0, MAX_ROWS)) {
    const tr = el("tr", { class: "latent", "data-sae": r.s, "data-index": r.index, "data-k": r.k });
    for (const [key] of COLS) {
      let v = r[key];
      if (key === "type") v = D.types[v];
      else if (key === "freq") v = v || "-";
      else if (key !== "index" && key !== "seed") v = fmt(v, key === "rate" ? 4 : 3);
      tr.append(el("td", { class: key === "type" ? "type t" + r.type : key }, v));
    }
    tr.onclick = () => select(r.s, r.index);
    if (HB.view && HB.view.sae === r.s && HB.view.latent === r.index) tr.classList.add("sel");
    body.append(tr);
  }
  $("count").textContent = `${rows.length} latents` + (rows.length > MAX_ROWS ? ` (first ${MAX_ROWS} shown)` : "");
}
function fillSeeds() {
  const sel = $("seed-select");
  sel.replaceChildren(el("option", { value: "all" }, "all seeds"));
  for (const s of seedsOf($("cell-select").value)) sel.append(el("option", { value: s }, "seed " + D.saes[s].seed));
  const first = D.saes[seedsOf($("cell-select").value)[0]], ff = $("freq-filter");
  const keys = D.models[first.model].hooks[first.hook].key_frequencies;  // not the SAE's: it may have no live latent
  ff.replaceChildren(el("option", { value: "any" }, "any"), ...keys.map((k) => el("option", { value: k }, "k = " + k)),
    el("option", { value: "0" }, "no single plane k >= 0.5"));
}

// ---------- the selected latent and its matches ----------
let selecting = 0;  // the latest select() call: an older one still unpacking must not draw over it
async function select(s, index) {
  const k = position(s, index), token = ++selecting;
  if (k === undefined) return;
  const sae = D.saes[s], m = model(s), p = m.p, op = m.operation, L = sae.latents;
  const v = await latentValues(s, k);
  if (token !== selecting) return;
  const prof = profile(v, p, op), power = spectrum(v, p), comp = composition(s, k), tops = topInputs(v, p, op);
  const read = el("div", { class: "readout", id: "readout" }), sread = el("div", { class: "readout" });
  const heat = heatmap(v, p, op, px(p, 340), read), spec = spectrumCanvas(power, p, px(p, 230), sread);
  heat.id = "heatmap"; spec.id = "spectrum";
  const pc = lineCanvas(prof, 340, 150, "profile"); pc.id = "profile";
  const cc = compositionCanvas(comp, 300); cc.id = "composition";
  const tbl = el("table", { class: "tops", id: "tops" }, el("tr", {}, ...["a", "b", "c", "z"].map((h) => el("th", {}, h))),
    ...tops.map((t) => el("tr", {}, el("td", {}, t.a), el("td", {}, t.b), el("td", {}, t.c), el("td", {}, t.z.toFixed(4)))));
  for (const n of [heat, spec, pc, cc, tbl]) { n.dataset.sae = s; n.dataset.latent = index; }
  const head = el("div", { class: "card", id: "latent-card" },
    el("h2", {}, `${sae.cell} · seed ${sae.seed} · latent ${index} · `,
      el("span", { class: "t" + L.type[k] }, D.types[L.type[k]]),
      L.freq[k] ? ` · decoder plane k = ${L.freq[k]}` : ""),
    el("div", { class: "muted" }, `firing rate ${fmt(L.rate[k], 4)} · ` + (L.reappear[k] === null
      ? "no other seed to reappear in · "
      : `reappears in ${fmt(L.reappear[k], 2)} of the other seeds (best in-span decoder cosine >= ${sae.threshold}; ` +
        `mean best ${fmt(L.best_cos[k])}) · `) + `E[z|c] share ${fmt(L.answer[k])} · ` +
      `f(a)+g(b) share ${fmt(L.inputs[k])} · Fourier purity ${fmt(L.purity[k])} (k = ${L.purity_freq[k]}) · ` +
      `nearest answer centroid cos ${fmt(L.centroid[k])} · ` +
      `SAE: ${sae.architecture}, ${sae.d_sae} latents, L0 ${fmt(sae.l0, 1)}, ` +
      `EV ${fmt(sae.ev)}, ${sae.n_live} live`),
    el("div", { class: "panels" },
      panel("activation over (a, b)", heat, op === "mul" ? "rows a, columns b (4-bit levels of the latent's maximum)"
        : `rows a, columns b (4-bit levels of the latent's maximum); a stripe of constant a${op === "sub" ? "-" : "+"}b ` +
          "is a function of the answer"),
      el("div", {}, read),
      panel("E[z | c] over the answer c", pc),
      panel("2-D Fourier power of z", spec, "rows: frequency u over a, columns: w over b, zero at the centre; " +
        "log scale over 4 decades. " + (op === "mul" ? "The additive DFT: the key frequencies of mul are those of the " +
        "discrete log, not these." : `A function of the answer lies on the diagonal u = ${op === "sub" ? "-w" : "w"}.`)),
      el("div", {}, sread),
      panel("decoder over the planes", cc, "share of the in-span decoder in each key frequency's output / input " +
        "plane (the plane k of the list: one holding >= 0.5); off span: share outside the data span"),
      panel("top inputs", tbl, "z at 4-bit resolution: equal values tie")));
  const cards = el("div", { class: "matches", id: "matches" });
  for (const [other, [idx, cos, corr, same]] of Object.entries(sae.matches)) {
    const o = Number(other), j = idx[k], ok = position(o, j), vo = await latentValues(o, ok), Lo = D.saes[o].latents;
    if (token !== selecting) return;
    const top = topInputs(vo, p, op, 3).map((t) => `(${t.a}, ${t.b}) c=${t.c}`).join(", ");
    const mh = heatmap(vo, p, op, px(p, 170)), mp = lineCanvas(profile(vo, p, op), 170, 80, "profile"),
      ms = spectrumCanvas(spectrum(vo, p), p, px(p, 115)), mc = compositionCanvas(composition(o, ok), 170);
    const card = el("div", { class: "card match", "data-sae": o, "data-latent": j, "data-cos": cos[k] },
      el("h3", {}, `seed ${D.saes[o].seed} · latent ${j} · `, el("span", { class: "t" + Lo.type[ok] }, D.types[Lo.type[ok]])),
      el("div", { class: "muted" }, `in-span decoder cos ${fmt(cos[k])} · activation corr ${fmt(corr[k])}` +
        (same[k] ? " · same feature" : "")),
      el("div", { class: "panels" }, mh, mp, ms, mc), el("div", { class: "muted" }, "top inputs: " + top));
    card.onclick = () => select(o, j);
    cards.append(card);
  }
  const others = seedsOf(sae.cell).length - 1;
  $("view").replaceChildren(head, el("div", { class: "card" }, el("h2", {}, "best match in every other seed"),
    Object.keys(sae.matches).length ? cards : el("span", { class: "muted" },
      others ? "no other seed of this cell has a live latent" : "this cell has one seed")));
  HB.view = { sae: s, latent: index, k, values: v, profile: prof, spectrum: power, composition: comp, tops };
  history.replaceState(null, "", `#cell=${encodeURIComponent(sae.cell)}&seed=${encodeURIComponent(sae.seed)}&latent=${index}`);
  for (const tr of document.querySelectorAll("#latent-body tr.sel")) tr.classList.remove("sel");
  const row = document.querySelector(`#latent-body tr[data-sae="${s}"][data-index="${index}"]`);
  if (row) row.classList.add("sel");
}
function fromHash() {  // #cell=LABEL&seed=S&latent=I -> [sae, latent], or null
  const h = new URLSearchParams(location.hash.slice(1));
  const s = D.saes.findIndex((e) => e.cell === h.get("cell") && String(e.seed) === h.get("seed"));
  return s >= 0 && h.has("latent") ? [s, Number(h.get("latent"))] : null;
}

// ---------- the model page ----------
async function renderModel() {
  const root = el("div", { id: "model-page" });
  for (const [mi, m] of D.models.entries()) {
    const card = el("div", { class: "card model" },
      el("h2", {}, `model seed ${m.seed} · p = ${m.p} · ${m.operation} · ${m.path}`));
    const kv = el("table", { class: "kv" });
    for (const [k, v] of Object.entries(m.metrics)) kv.append(el("tr", {}, el("th", {}, k), el("td", {}, fmtAny(v))));
    card.append(kv);
    for (const [hook, h] of Object.entries(m.hooks)) {
      const t = el("table", { class: "kv planes" }, el("tr", {}, el("th", {}, "plane"), el("th", {}, "variance share")));
      for (const [name, share] of Object.entries(h.planes)) t.append(el("tr", {}, el("td", {}, name), el("td", {}, fmt(share))));
      const vt = el("table", { class: "kv" }, el("tr", {}, el("th", {}, "part of the variance"), el("th", {}, "share")));
      for (const [name, share] of Object.entries(h.variance)) {
        vt.append(el("tr", {}, el("td", {}, h.variance_names[name] || name), el("td", {}, fmt(share))));
      }
      card.append(el("h3", {}, `${hook}: key frequencies ${h.key_frequencies.join(", ")}; ` +
        `planes span ${h.span.dim} dims, ${fmt(h.span.share)} of the variance`),
        el("div", { class: "panels" }, t, vt));
    }
    const n = m.neurons, q = n.examples.index.length ? await levels("n" + mi) : null;
    card.append(el("h3", {}, `MLP neurons: ${n.count} of ${n.of} single-frequency; per frequency ` +
      Object.entries(n.clusters).map(([k, c]) => `k=${k}: ${c}`).join(", ")));
    const ex = el("div", { class: "panels neurons" });
    n.examples.index.forEach((idx, i) => {
      const v = unpack(q, i, n.scale[i], m.p, m.operation);
      ex.append(panel(`neuron ${idx} · k = ${n.examples.freq[i]} · purity ${fmt(n.examples.purity[i], 2)}`,
        heatmap(v, m.p, m.operation, px(m.p, 170))));
    });
    card.append(ex);
    root.append(card);
  }
  return root;
}

// ---------- start-up ----------
function buildLatentTab() {
  const side = el("div", { id: "side" },
    el("label", {}, "cell ", el("select", { id: "cell-select" }, ...cells.map((c) => el("option", { value: c }, c)))),
    el("div", { class: "row" }, el("label", {}, "seed ", el("select", { id: "seed-select" })),
      el("label", {}, "type ", el("select", { id: "type-filter" }, el("option", { value: "any" }, "any"),
        ...D.types.map((t, i) => el("option", { value: i }, t)))),
      el("label", {}, "frequency ", el("select", { id: "freq-filter" }))),
    el("div", { class: "row" }, el("label", {}, "firing rate >= ", el("input", { id: "min-rate", size: 5, placeholder: "0" })),
      el("label", {}, "reappearance >= ", el("input", { id: "min-reappear", size: 5, placeholder: "0" }))),
    el("div", { class: "row" }, el("label", {}, "latent # ", el("input", { id: "search", size: 6, placeholder: "index" })),
      el("label", {}, "sort ", el("select", { id: "sort-key" }, ...SORTS.map(([k, t]) => el("option", { value: k }, t)))),
      el("select", { id: "sort-dir" }, el("option", { value: "desc" }, "high first"),
        el("option", { value: "asc" }, "low first"))),
    el("div", { id: "count", class: "muted" }),
    el("div", { id: "list-wrap" }, el("table", { id: "latent-list" },
      el("thead", {}, el("tr", {}, ...COLS.map(([, t]) => el("th", {}, t)))), el("tbody", { id: "latent-body" }))));
  return [side, el("div", { id: "view" }, el("div", { class: "card muted" }, "select a latent"))];
}
async function start() {
  const t0 = performance.now();
  const [side, view] = buildLatentTab();
  const latentsTab = el("div", { id: "latents-tab", style: "display:flex;gap:10px;width:100%" }, side, view);
  const modelTab = el("div", { id: "model-tab", style: "display:none" });
  $("app").append(latentsTab, modelTab);
  $("cell-select").onchange = () => { fillSeeds(); renderList(); };
  for (const id of ["seed-select", "type-filter", "freq-filter", "sort-key", "sort-dir"]) $(id).onchange = renderList;
  for (const id of ["search", "min-rate", "min-reappear"]) $(id).oninput = renderList;
  $("sort-key").value = "reappear";
  fillSeeds();
  renderList();
  const tab = (on) => {
    latentsTab.style.display = on === "latents" ? "flex" : "none"; modelTab.style.display = on === "model" ? "block" : "none";
    $("tab-latents").classList.toggle("on", on === "latents"); $("tab-model").classList.toggle("on", on === "model");
  };
  $("tab-latents").onclick = () => tab("latents");
  $("tab-model").onclick = async () => { tab("model"); if (!modelTab.firstChild) modelTab.append(await renderModel()); };
  const open = async (target) => {
    $("cell-select").value = D.saes[target[0]].cell; fillSeeds(); renderList();
    await select(target[0], target[1]);
  };
  window.addEventListener("hashchange", () => { const t = fromHash(); if (t) open(t); });
  const linked = fromHash(), first = document.querySelector("#latent-body tr.latent");
  if (linked) await open(linked);
  else if (first) await select(+first.dataset.sae, +first.dataset.index);
  HB.readyMs = performance.now() - t0;
  HB.ready = true;
  $("status").textContent = `${D.saes.length} SAEs · ${D.saes.reduce((n, s) => n + s.n_live, 0)} live latents · ` +
    `${D.models.length} model(s)` + (D.skipped.length ? ` · not shown, failed: ${D.skipped.join(", ")}` : "");
}
window.addEventListener("error", (e) => HB.errors.push(String(e.message)));
start().catch((e) => { HB.errors.push(String(e)); $("status").textContent = "error: " + e; throw e; });
