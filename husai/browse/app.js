// husai feature browser, part 2 (after browser.js, in the same <script>): the latent list, the selected
// latent with its matches, the model page and start-up.

// ---------- the latent list ----------
const COLS = [["seed", "seed"], ["index", "latent"], ["type", "type"], ["freq", "plane k"], ["rate", "firing"],
  ["reappear", "reappear"], ["best_cos", "mean best cos"], ["near", "oracle cos"]];
const SORTS = [["index", "latent index"], ["type", "type"], ["rate", "firing rate"], ["reappear", "reappearance"],
  ["best_cos", "mean best-match cosine"], ["near", "nearest oracle atom cosine"], ["freq", "decoder plane k"],
  ["answer", "answer share"], ["purity", "Fourier purity"], ["logit_share", "logit effect's one-frequency share"]];
const cells = D.cells.map((c) => c.label);
function cellIndex(label) { return cells.indexOf(label); }
function seedsOf(cell) { return D.cells[cellIndex(cell)].saes; }
function rowsFor() {
  const cell = $("cell-select").value, seed = $("seed-select").value;
  const t = $("type-filter").value, f = $("freq-filter").value, q = $("search").value.trim();
  const minRate = Number($("min-rate").value) || 0, minReap = Number($("min-reappear").value) || 0;
  const near = $("near-filter").value;
  const rows = [];
  for (const s of seedsOf(cell)) {
    // "all seeds" are the trained ones; the oracle's pseudo-SAE is listed when picked
    if (seed === "all" ? D.saes[s].oracle : String(s) !== seed) continue;
    const L = D.saes[s].latents, nc = L.near ? L.near.cos : [];
    L.index.forEach((index, k) => {
      if (t !== "any" && String(L.type[k]) !== t) return;
      if (f !== "any" && String(L.freq[k]) !== f) return;
      if (q !== "" && String(index) !== q) return;
      if (L.rate[k] < minRate || (minReap > 0 && !(L.reappear[k] >= minReap))) return;
      if (near === "near" && !(nc[k] >= D.near)) return;
      if (near === "far" && !(nc[k] < D.near)) return;
      rows.push({ s, k, seed: D.saes[s].seed, index, type: L.type[k], freq: L.freq[k], rate: L.rate[k],
        reappear: L.reappear[k], best_cos: L.best_cos[k], answer: L.answer[k], purity: L.purity[k],
        near: nc[k] ?? null, logit_share: L.logit_share ? L.logit_share[k] : null });
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
  for (const s of seedsOf($("cell-select").value)) {
    sel.append(el("option", { value: s }, D.saes[s].oracle ? D.saes[s].architecture : "seed " + D.saes[s].seed));
  }
  const first = D.saes[seedsOf($("cell-select").value)[0]], ff = $("freq-filter");
  const keys = D.models[first.model].hooks[first.hook].key_frequencies;  // not the SAE's: it may have no live latent
  ff.replaceChildren(el("option", { value: "any" }, "any"), ...keys.map((k) => el("option", { value: k }, "k = " + k)),
    el("option", { value: "0" }, "no single plane k >= 0.5"));
}

// ---------- the selected latent and its matches ----------
let selecting = 0;  // the latest select() call: an older one still unpacking must not draw over it
function seedName(s) { return D.saes[s].oracle ? "oracle" : "seed " + D.saes[s].seed; }
function effectPanel(s, k, p) {  // the decoder row's direct effect on the answer logits, its top classes
  const e = effect(s, k), L = D.saes[s].latents, order = Array.from(e.keys()).sort((i, j) => e[j] - e[i]);
  const top = order.slice(0, 5).map((c) => ({ c, v: e[c] })), bottom = order.slice(-5).reverse().map((c) => ({ c, v: e[c] }));
  const cv = barCanvas(Array.from(e), 340, 150, "logit-effect"); cv.id = "logit-effect";
  const tbl = el("table", { class: "tops", id: "logit-top" },
    el("tr", {}, el("th", { colspan: 2 }, "raises"), el("th", { colspan: 2 }, "lowers")),
    ...top.map((t, i) => el("tr", {}, el("td", {}, t.c), el("td", {}, t.v.toFixed(4)),
      el("td", {}, bottom[i].c), el("td", {}, bottom[i].v.toFixed(4)))));
  const f = L.logit_freq[k], share = L.logit_share[k];
  const hook = D.saes[s].hook, path = hook.endsWith("mlp.hook_post") ? "W_dec[i] W_out W_U" : "W_dec[i] W_U";
  const node = el("div", { class: "panels" }, cv, tbl);
  return { node, values: e, top, bottom, freq: f, share, caption: `${path}: the direct effect of the decoder row on ` +
    `the ${p} answer logits (no LayerNorm: exact; b_U left out). Best single frequency f = ${f} over c holds ` +
    `${fmt(share)} of the effect's centred variance` + (share >= 0.9 ? ": a cosine of one frequency" : "") };
}
function densityPanel(s, k) {  // the histogram of the non-zero activations, log-spaced bins
  const L = D.saes[s].latents, d = L.density, lo = d.lo[k], hi = d.hi[k], counts = d.counts[k];
  const cv = histCanvas(counts, 300, 110, "density"); cv.id = "density";
  const n = counts.reduce((a, b) => a + b, 0), rate = L.rate[k];
  return { node: cv, counts, lo, hi, n, caption: `${n} non-zero of ${D.models[D.saes[s].model].p ** 2} inputs · ` +
    `firing rate ${fmt(rate, 4)} (log10 ${rate > 0 ? Math.log10(rate).toFixed(2) : "-inf"}) · ${counts.length} ` +
    `log-spaced bins of z from ${lo === null ? "-" : (10 ** lo).toPrecision(3)} to ${hi === null ? "-" : (10 ** hi).toPrecision(3)}` };
}
function nearText(s, k) {
  const N = D.saes[s].latents.near;
  if (!N) return "no oracle tiling at this width";
  const sae = D.saes[s], tiling = sae.oracle ? `seed ${sae.tiling_seed}'s tiling` : `seed ${sae.seed}'s tiling`;
  return `nearest oracle atom: ${N.kind[k]} circle k = ${N.freq[k]}, phase ${N.phase[k]}°, atom ${N.atom[k]} of ` +
    `${tiling} · cos ${fmt(N.cos[k])}` + (N.cos[k] >= D.near ? ` (within ${D.near}: near the truth)` : "");
}
async function select(s, index) {
  const token = ++selecting;
  await loadCell(D.saes[s].cell_id);
  const k = position(s, index);
  if (k === undefined || token !== selecting) return;
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
  const eff = effectPanel(s, k, p), dens = densityPanel(s, k);
  for (const n of [heat, spec, pc, cc, tbl, eff.node, dens.node]) { n.dataset.sae = s; n.dataset.latent = index; }
  const head = el("div", { class: "card", id: "latent-card" },
    el("h2", {}, `${sae.cell} · ${seedName(s)} · latent ${index} · `,
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
    el("div", { id: "near-atom" }, nearText(s, k)),
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
      panel("top inputs", tbl, "z at 4-bit resolution: equal values tie"),
      panel("logit effect over the answer c", eff.node, eff.caption),
      panel("activation density", dens.node, dens.caption)));
  const cards = el("div", { class: "matches", id: "matches" });
  for (const [other, [idx, cos, corr, same]] of Object.entries(sae.matches)) {
    const o = Number(other), j = idx[k], ok = position(o, j), vo = await latentValues(o, ok), Lo = D.saes[o].latents;
    if (token !== selecting) return;
    const top = topInputs(vo, p, op, 3).map((t) => `(${t.a}, ${t.b}) c=${t.c}`).join(", ");
    const mh = heatmap(vo, p, op, px(p, 170)), mp = lineCanvas(profile(vo, p, op), 170, 80, "profile"),
      ms = spectrumCanvas(spectrum(vo, p), p, px(p, 115)), mc = compositionCanvas(composition(o, ok), 170);
    const card = el("div", { class: "card match", "data-sae": o, "data-latent": j, "data-cos": cos[k] },
      el("h3", {}, `${seedName(o)} · latent ${j} · `, el("span", { class: "t" + Lo.type[ok] }, D.types[Lo.type[ok]])),
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
  HB.view = { sae: s, latent: index, k, values: v, profile: prof, spectrum: power, composition: comp, tops,
    effect: Array.from(eff.values), effectTop: eff.top, effectBottom: eff.bottom, effectFreq: eff.freq,
    effectShare: eff.share, density: dens.counts, densityRange: [dens.lo, dens.hi],
    near: L.near ? Object.fromEntries(Object.entries(L.near).map(([key, a]) => [key, a[k]])) : null };
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
    el("div", { class: "row" }, el("label", {}, "oracle atom ", el("select", { id: "near-filter" },
      el("option", { value: "any" }, "any"), el("option", { value: "near" }, `within cos ${D.near} of an oracle atom`),
      el("option", { value: "far" }, `not within cos ${D.near}`)))),
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
  const openCell = async () => { await loadCell(cellIndex($("cell-select").value)); fillSeeds(); renderList(); };
  $("cell-select").onchange = () => openCell().catch(fail);
  for (const id of ["seed-select", "type-filter", "freq-filter", "sort-key", "sort-dir", "near-filter"]) $(id).onchange = renderList;
  for (const id of ["search", "min-rate", "min-reappear"]) $(id).oninput = renderList;
  $("sort-key").value = "reappear";
  await openCell();
  const tab = (on) => {
    latentsTab.style.display = on === "latents" ? "flex" : "none"; modelTab.style.display = on === "model" ? "block" : "none";
    $("tab-latents").classList.toggle("on", on === "latents"); $("tab-model").classList.toggle("on", on === "model");
  };
  $("tab-latents").onclick = () => tab("latents");
  $("tab-model").onclick = async () => { tab("model"); if (!modelTab.firstChild) modelTab.append(await renderModel()); };
  const open = async (target) => {
    $("cell-select").value = D.saes[target[0]].cell; await openCell();
    await select(target[0], target[1]);
  };
  window.addEventListener("hashchange", () => { const t = fromHash(); if (t) open(t).catch(fail); });
  const linked = fromHash(), first = document.querySelector("#latent-body tr.latent");
  if (linked) await open(linked);
  else if (first) await select(+first.dataset.sae, +first.dataset.index);
  HB.readyMs = performance.now() - t0;
  HB.ready = true;
  const trained = D.saes.filter((s) => !s.oracle);
  $("status").textContent = `${trained.length} SAEs in ${D.cells.length} cells · ` +
    `${trained.reduce((n, s) => n + s.n_live, 0)} live latents · ` +
    `${D.models.length} model(s)` + (D.skipped.length ? ` · not shown, failed: ${D.skipped.join(", ")}` : "");
}
function fail(e) { HB.errors.push(String(e)); $("status").textContent = "error: " + e; }
window.addEventListener("error", (e) => HB.errors.push(String(e.message)));
start().catch((e) => { fail(e); throw e; });
