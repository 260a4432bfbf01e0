"""The report's answer: at most six sentences, generated from the results table (one row per SAE,
husai.study.results) by the rules below, each with its one number, that number's 95% interval, the
null it is read against and the figure that shows it.

Units. A cell is one grid point (model seed, hook, architecture, width, sparsity); only cells whose
SAEs finished count. A cell's agreement figures are its seed pairs' (results.csv's cell columns);
its recovery figures are its SAE seeds' mean, with their 95% t-interval.

Intervals. With two or more model seeds every number is the mean over model seeds of each model's
mean over its cells, with the 95% t-interval across model seeds (the model is the unit that must
replicate). With one model seed it is the mean over cells, and its interval the cells' own 95%
intervals over SAE seeds averaged bound by bound (a difference of two cells: the half-widths added
in quadrature).

The rules, one per sentence:

1. Same atoms? The atom level's headline is PW-MCC (Song et al. 2025) against the matched-geometry
   null. A cell agrees beyond chance when the 95% CI of its effect (value - null) lies above 0
   (docs/methods.md, "Readings and uncertainty"). "No better than chance": fewer than MAJORITY of
   the cells do. "The same": every cell does and the mean PW-MCC is >= SAME_VALUE. Otherwise
   "partly the same".
2. Beyond atoms: the answer-class Jaccard against its random-in-span null, by rule 1's words (with
   SAME_VALUE for the Jaccard), and the matched activation correlation, which has no chance null
   (random directions have no activations) and is set against the symmetry null (a shifted copy).
3. The model's true features? Plane coverage against the complete truth (husai.analysis
   .plane_recovery) next to its reference (the same rows rotated at random in the data span) and
   the seed's oracle tiling. "The model's true features": mean coverage >= TRUE_SHARE of the
   oracle's and mean near-truth share (rows within cosine 0.9 of an oracle atom) >= NEAR_SHARE. "No
   closer than chance": the interval of coverage - reference is not above 0. Otherwise "partly".
   Without plane columns (oracle off), the centroid MCC over the better no-learning reference, by
   the same chance rule.
4. Why not? The optimisation gap (oracle EV - SAE EV at the cell's width and L0): the reading more
   than MAJORITY of the cells have (optimisation, objective, neither; husai.analysis
   .optimisation_gap), else each architecture's most common reading with its count; the mean gap
   against 0, and how many optimisation cells were still raising their EV (under-trained).
5. Width: along each series (hook, architecture, sparsity, model seed) with two or more widths, the
   PW-MCC effect at the widest minus at the narrowest, and the same for plane coverage. It "rises"
   or "falls" when the interval of the change excludes 0 and its size is >= FLAT, else it "does not
   change clearly".
6. L0, architecture and hook: the same change from the sparsest to the densest cell of each series
   at fixed width, and the (hook, architecture) groups with the highest and the lowest mean PW-MCC
   effect.

Rules 5 and 6 compare cells at matched L0, so a cell whose L0 search did not bracket its target
(results.csv's l0_bracketed false: it trained at another L0) is left out of them, as the sweep
leaves it out of its curves (husai.study.sweep).

A sentence whose inputs the grid lacks (one width, no oracle) is left out and named in `missing`.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from husai.analysis.optimisation_gap import t_interval

SAME_VALUE = 0.9
"""Mean agreement (PW-MCC, class Jaccard) at or above which seeds learn "the same" features: two
identical dictionaries score 1, and on the default study the matched-geometry null alone is ~0.7."""
MAJORITY = 0.5
"""Share of cells that must agree beyond chance for the study to say "above chance"."""
TRUE_SHARE = 0.9
"""Plane coverage at or above this share of the oracle tiling's counts as the oracle's (a tiling
with m atoms a circle scores cos(pi / m): 0.92 for 8, docs/methods.md)."""
NEAR_SHARE = 0.5
"""Share of live rows within cosine 0.9 of an oracle atom (near truth) for "true features": the
default study's trained rows reach 0.00-0.01, rows started at the truth 0.66-0.92
(BENCHMARKS.md)."""
FLAT = 0.02
"""A change with width or L0 smaller than this (in PW-MCC effect or coverage) is "no clear
change"."""
DEAD_SHARE = 0.10
"""A cell whose seeds have more than this share of dead latents is named; after converged training
it is the recipe's converged state at that width and L0, not under-training."""


@dataclass
class Sentence:
    key: str
    text: str
    figure: str
    """The PNG (figures/NAME) that shows it."""
    number: float | None = None
    ci: tuple[float, float] | None = None


@dataclass
class Answer:
    sentences: list[Sentence]
    basis: str
    missing: list[str] = field(default_factory=list)


def _ok(v) -> bool:
    return v is not None and not (isinstance(v, float) and not math.isfinite(v))


def _mean(vals):
    vals = [v for v in vals if _ok(v)]
    return sum(vals) / len(vals) if vals else None


def _seed_ci(vals) -> tuple[float, float, float] | None:
    vals = [v for v in vals if _ok(v)]
    return t_interval(vals) if vals else None


def cells(rows: list[dict]) -> list[dict]:
    """One entry per finished cell, from its SAE rows (module docstring, Units)."""
    from husai.study.sweep import knob

    by = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok":
            by[r["run"]].append(r)
    out = []
    for run, rs in by.items():
        r0 = rs[0]

        def cell(m):
            return (r0.get(m), r0.get(f"{m}_ci_lo"), r0.get(f"{m}_ci_hi"))

        def seeds(key):
            return _seed_ci(r.get(key) for r in rs)

        diff = _seed_ci(
            r["plane_coverage"] - r["plane_coverage_reference"]
            for r in rs
            if _ok(r.get("plane_coverage")) and _ok(r.get("plane_coverage_reference"))
        )
        cent = _seed_ci(
            r["centroid_mcc"] - max(r["centroid_mcc_random"], r["centroid_mcc_data_points"])
            for r in rs
            if all(
                _ok(r.get(k))
                for k in ("centroid_mcc", "centroid_mcc_random", "centroid_mcc_data_points")
            )
        )
        out.append(
            dict(
                run=run,
                hook=r0["hook"],
                architecture=r0["architecture"],
                knob=knob(r0),
                model_seed=r0.get("model_seed"),
                latents=r0.get("latents"),
                n_seeds=len(rs),
                l0=_mean(r.get("l0") for r in rs),
                ev=_mean(r.get("explained_variance") for r in rs),
                frac_dead=_mean(r.get("frac_dead") for r in rs),
                converged=r0.get("training_converged"),
                bracketed=r0.get("l0_bracketed"),
                pw=cell("pw_mcc_dec"),
                pw_null=r0.get("pw_mcc_dec_null"),
                pw_effect=cell("pw_mcc_dec_effect"),
                cj=cell("class_jaccard"),
                cj_null=r0.get("class_jaccard_null"),
                cj_effect=cell("class_jaccard_effect"),
                act=cell("act_mcc"),
                act_sym=r0.get("act_mcc_symmetry_null"),
                coverage=seeds("plane_coverage"),
                coverage_ref=_mean(r.get("plane_coverage_reference") for r in rs),
                coverage_oracle=_mean(r.get("plane_coverage_oracle") for r in rs),
                coverage_effect=diff,
                near=_mean(r.get("trained_near_truth") for r in rs),
                centroid_effect=cent,
                gap=(
                    r0.get("optimisation_gap_mean"),
                    r0.get("optimisation_gap_ci_lo"),
                    r0.get("optimisation_gap_ci_hi"),
                ),
                reading=r0.get("oracle_reading"),
                still_rising=r0.get("converged") is False,
            )
        )
    return sorted(
        out,
        key=lambda c: (
            c["hook"],
            c["architecture"],
            c["knob"],
            c["latents"] or 0,
            c["model_seed"] or 0,
        ),
    )


def _triple(c: dict, key: str):
    """(value, lo, hi) of a cell quantity, or None when its value is missing."""
    t = c.get(key)
    if t is None or not _ok(t[0]):
        return None
    lo, hi = t[1], t[2]
    return (t[0], lo if _ok(lo) else t[0], hi if _ok(hi) else t[0])


def summarise(cs: list[dict], key: str) -> tuple[float, float, float] | None:
    """The study's (mean, lo, hi) of a cell quantity (module docstring, Intervals)."""
    vals = [(c["model_seed"], t) for c in cs if (t := _triple(c, key)) is not None]
    if not vals:
        return None
    models = sorted({m for m, _ in vals}, key=str)
    if len(models) >= 2:
        per = [_mean(t[0] for m, t in vals if m == ms) for ms in models]
        return t_interval(per)
    return tuple(_mean(t[i] for _, t in vals) for i in range(3))


def _basis(cs: list[dict]) -> str:
    n = len({c["model_seed"] for c in cs})
    if n >= 2:
        return f"95% CI across {n} model seeds"
    return "one model seed: 95% CI across SAE seeds"


def _f(v, nd=3, sign=False) -> str:
    if not _ok(v):
        return "-"
    return f"{v:+.{nd}f}" if sign else f"{v:.{nd}f}"


def _ci(t, nd=3) -> str:
    return f"[{_f(t[1], nd)}, {_f(t[2], nd)}]"


def _word(cs: list[dict], value: str, effect: str) -> tuple[str, int, int]:
    """Rule 1: 'same', 'partly' or 'chance', with the cells above chance and the cells read."""
    read = [c for c in cs if _triple(c, effect) is not None and _ok(c[effect][1])]
    above = sum(c[effect][1] > 0 for c in read)
    mean = _mean(c[value][0] for c in read)
    if not read or above < MAJORITY * len(read) or above == 0:
        return "chance", above, len(read)
    if above == len(read) and mean is not None and mean >= SAME_VALUE:
        return "same", above, len(read)
    return "partly", above, len(read)


def _hook(h: str) -> str:
    return h.replace("blocks.0.", "")


def _atoms(cs, fig) -> Sentence | None:
    s, v = summarise(cs, "pw_effect"), summarise(cs, "pw")
    if s is None or v is None:
        return None
    word, above, n = _word(cs, "pw", "pw_effect")
    null = _mean(c["pw_null"] for c in cs)
    lead = {
        "same": "SAE seeds learn the same features at the level of atoms (decoder rows)",
        "partly": "SAE seeds learn partly the same features at the level of atoms (decoder "
        "rows): above chance, not identical",
        "chance": "SAE seeds agree on their atoms (decoder rows) no better than chance",
    }[word]
    text = (
        f"{lead}: PW-MCC {_f(v[0])} exceeds its matched-geometry null ({_f(null)}) by "
        f"{_f(s[0], sign=True)} {_ci(s)}, beyond chance in {above} of {n} cells."
    )
    return Sentence("atoms", text, fig, s[0], (s[1], s[2]))


def _levels(cs, fig) -> Sentence | None:
    s, v = summarise(cs, "cj_effect"), summarise(cs, "cj")
    act, sym = summarise(cs, "act"), _mean(c["act_sym"] for c in cs)
    if s is None or v is None:
        if act is None:
            return None
        text = (
            f"Their activations match with correlation {_f(act[0])} {_ci(act)}, against "
            f"{_f(sym)} for a shifted copy of the other seed (no chance null exists for "
            "activations)."
        )
        return Sentence("levels", text, fig, act[0], (act[1], act[2]))
    word, above, n = _word(cs, "cj", "cj_effect")
    lead = {
        "same": "Beyond atoms, the seeds find the same answer classes",
        "partly": "Beyond atoms, the seeds find partly the same answer classes",
        "chance": "Beyond atoms, the seeds find answer classes no more alike than chance",
    }[word]
    text = (
        f"{lead}: class Jaccard {_f(v[0])} exceeds its random-in-span null "
        f"({_f(_mean(c['cj_null'] for c in cs))}) by {_f(s[0], sign=True)} {_ci(s)} ({above} of "
        f"{n} cells)"
    )
    if act is not None:
        text += (
            f", and their activations match with correlation {_f(act[0])} against {_f(sym)} for "
            "a shifted copy (no chance null exists for activations)"
        )
    return Sentence("levels", text + ".", fig, s[0], (s[1], s[2]))


def _truth(cs, fig) -> Sentence | None:
    cov, eff = summarise(cs, "coverage"), summarise(cs, "coverage_effect")
    if cov is None or eff is None:
        cent = summarise(cs, "centroid_effect")
        if cent is None:
            return None
        word = "partly" if cent[1] > 0 else "chance"
        lead = (
            "They are partly the model's features"
            if word == "partly"
            else "They are no closer to the model's features than no learning"
        )
        text = (
            f"{lead}: the answer-centroid MCC exceeds the better no-learning reference by "
            f"{_f(cent[0], sign=True)} {_ci(cent)}."
        )
        return Sentence("truth", text, fig, cent[0], (cent[1], cent[2]))
    oracle = _mean(c["coverage_oracle"] for c in cs)
    ref = _mean(c["coverage_ref"] for c in cs)
    near = _mean(c["near"] for c in cs)
    if (
        oracle is not None
        and cov[0] >= TRUE_SHARE * oracle
        and near is not None
        and near >= NEAR_SHARE
    ):
        lead = "They are the model's true features"
    elif eff[1] <= 0:
        lead = "They are no closer to the model's true features than chance"
    else:
        lead = "They are partly the model's true features, short of the oracle"
    text = (
        f"{lead}: plane coverage of the complete Fourier truth {_f(cov[0])} {_ci(cov)} against "
        f"{_f(ref)} for the same rows rotated at random and {_f(oracle)} for the oracle tiling, "
        f"with {_f(near, 2)} of the live rows within cosine 0.9 of an oracle atom."
    )
    return Sentence("truth", text, fig, cov[0], (cov[1], cov[2]))


def _gap(cs, fig) -> Sentence | None:
    s = summarise(cs, "gap")
    read = [c for c in cs if c["reading"]]
    if s is None or not read:
        return None
    counts = {r: sum(c["reading"] == r for c in read) for r in ("optimisation", "objective")}
    counts["neither"] = len(read) - counts["optimisation"] - counts["objective"]
    top = max(counts, key=counts.get)
    rising = sum(c["reading"] == "optimisation" and c["still_rising"] for c in read)
    gap = f"{_f(s[0], sign=True)} {_ci(s)} against 0"
    if counts[top] <= MAJORITY * len(read):  # no reading holds most cells: say it per architecture
        by = defaultdict(Counter)
        for c in read:
            by[c["architecture"]][c["reading"]] += 1
        parts = []
        for arch in sorted(by):
            r, n_r = by[arch].most_common(1)[0]
            parts.append(f"{r} for {arch} ({n_r} of {by[arch].total()} cells)")
        text = (
            "What keeps them from the truth differs by architecture: "
            + ", ".join(parts)
            + f"; over all cells the optimisation gap (oracle EV minus SAE EV) is {gap}"
            + (f", the EV still rising in {rising} optimisation cells" if rising else "")
            + "."
        )
        return Sentence("gap", text, fig, s[0], (s[1], s[2]))
    lead = {
        "optimisation": "What keeps them from the truth is optimisation: a dictionary of the "
        "model's features reconstructs better at the same width and L0, and training does not "
        "find it",
        "objective": "What keeps them from the truth is the objective: at the same width and L0 "
        "the SAEs reconstruct better than a dictionary of the model's features",
        "neither": "The oracle does not say what keeps them from the truth: its gap holds 0",
    }[top]
    text = (
        f"{lead} (optimisation gap, oracle EV minus SAE EV, {gap}; {top} in {counts[top]} of "
        f"{len(read)} cells" + (f", the EV still rising in {rising}" if rising else "") + ")."
    )
    return Sentence("gap", text, fig, s[0], (s[1], s[2]))


def _change(cs: list[dict], series_keys, order_key, key):
    """Per model seed, the mean over series of (last - first) of `key` along `order_key`; then
    the module docstring's interval."""
    series = defaultdict(list)
    for c in cs:
        if _triple(c, key) is not None and _ok(c[order_key]) and c["bracketed"] is not False:
            series[tuple(c[k] for k in series_keys) + (c["model_seed"],)].append(c)
    per_model = defaultdict(list)
    ends = []
    for sk, ss in series.items():
        ss = sorted(ss, key=lambda c: c[order_key])
        if len(ss) < 2 or ss[0][order_key] == ss[-1][order_key]:
            continue
        a, b = _triple(ss[0], key), _triple(ss[-1], key)
        half = math.hypot((a[2] - a[1]) / 2, (b[2] - b[1]) / 2)
        per_model[sk[-1]].append((b[0] - a[0], half))
        ends.append((ss[0][order_key], ss[-1][order_key]))
    if not per_model:
        return None
    if len(per_model) >= 2:
        d = t_interval([_mean(d for d, _ in v) for v in per_model.values()])
    else:
        v = next(iter(per_model.values()))
        m, h = _mean(d for d, _ in v), _mean(h for _, h in v)
        d = (m, m - h, m + h)
    lo_end = min(a for a, _ in ends)
    hi_end = max(b for _, b in ends)
    return d, lo_end, hi_end


def _move(d) -> str:
    if d[1] > 0 and abs(d[0]) >= FLAT:
        return "rises"
    if d[2] < 0 and abs(d[0]) >= FLAT:
        return "falls"
    return "does not change clearly"


def _width(cs, fig) -> Sentence | None:
    ch = _change(cs, ("hook", "architecture", "knob"), "latents", "pw_effect")
    if ch is None:
        return None
    d, w0, w1 = ch
    text = (
        f"From {w0:.0f} to {w1:.0f} latents, agreement over chance {_move(d)} "
        f"({_f(d[0], sign=True)} {_ci(d)} in PW-MCC effect)"
    )
    cov = _change(cs, ("hook", "architecture", "knob"), "latents", "coverage")
    if cov is not None:
        text += f" and plane coverage {_move(cov[0])} ({_f(cov[0][0], sign=True)} {_ci(cov[0])})"
    return Sentence("width", text + ".", fig, d[0], (d[1], d[2]))


def _others(cs, fig) -> Sentence | None:
    parts, number = [], None
    ch = _change(cs, ("hook", "architecture", "latents"), "l0", "pw_effect")
    if ch is not None:
        d, l0, l1 = ch
        parts.append(
            f"from L0 {l0:.0f} to {l1:.0f} agreement over chance {_move(d)} "
            f"({_f(d[0], sign=True)} {_ci(d)})"
        )
        number = d
    groups = defaultdict(list)
    for c in cs:
        if c["bracketed"] is not False:
            groups[(c["hook"], c["architecture"])].append(c)
    summ = {g: s for g, gc in groups.items() if (s := summarise(gc, "pw_effect")) is not None}
    if len(summ) >= 2:
        hi = max(summ, key=lambda g: summ[g][0])
        lo = min(summ, key=lambda g: summ[g][0])
        parts.append(
            f"agreement over chance is highest for {hi[1]} at {_hook(hi[0])} "
            f"({_f(summ[hi][0], sign=True)} "
            f"{_ci(summ[hi])}) and lowest for {lo[1]} at {_hook(lo[0])} "
            f"({_f(summ[lo][0], sign=True)} {_ci(summ[lo])})"
        )
        number = number or summ[hi]
    if not parts:
        return None
    text = "Across L0, architectures and hooks, " + "; ".join(parts) + "."
    return Sentence("others", text, fig, number[0], (number[1], number[2]))


def answer(rows: list[dict], figures: dict[str, str]) -> Answer:
    """The answer (module docstring). figures: which PNG shows what, by role: 'headline' (agreement
    and recovery against width), 'levels' (every level against its nulls), 'gap' (the optimisation
    gap); a missing role falls back to 'headline'."""
    cs = cells(rows)
    fig = lambda role: figures.get(role) or figures.get("headline", "")
    made = {
        "atoms": _atoms(cs, fig("headline")),
        "levels": _levels(cs, fig("levels")),
        "truth": _truth(cs, fig("headline")),
        "gap": _gap(cs, fig("gap")),
        "width": _width(cs, fig("headline")),
        "others": _others(cs, fig("headline")),
    }
    why = {
        "atoms": "seed agreement (no cell with two or more seeds finished)",
        "levels": "agreement beyond atoms",
        "truth": "recovery of the ground truth",
        "gap": "the oracle's reading (oracle off)",
        "width": "the trend with width (one width per series)",
        "others": "L0, architecture and hook (one of each)",
    }
    return Answer(
        [s for s in made.values() if s is not None],
        f"{len(cs)} cells; {_basis(cs)}" if cs else "no finished cell",
        [why[k] for k, s in made.items() if s is None],
    )


def answer_markdown(a: Answer, link) -> str:
    """The answer as a numbered list; link(figure) -> the address of that figure."""
    lines = [f"{i}. {s.text} ([figure]({link(s.figure)}))" for i, s in enumerate(a.sentences, 1)]
    tail = f"Intervals: {a.basis}. Read by the rules of husai/study/answer.py."
    if a.missing:
        tail += " Not answered by this grid: " + "; ".join(a.missing) + "."
    return "\n".join(lines) + "\n\n" + tail


def notes(cs: list[dict]) -> list[str]:
    """The per-cell section's notes: cells with more than DEAD_SHARE dead latents (after converged
    training: the architecture at that width and L0; otherwise possibly under-training), and cells
    whose L0 search did not bracket its target (left out of matched-L0 comparisons)."""
    out = []

    def name(c):
        return (
            f"{c['architecture']} {c['knob']} at {c['latents']} latents, {_hook(c['hook'])}, "
            f"model seed {c['model_seed']}"
        )

    for c in cs:
        if not _ok(c["frac_dead"]) or c["frac_dead"] <= DEAD_SHARE:
            continue
        if c["converged"] is True:
            out.append(
                f"{name(c)}: {c['frac_dead']:.0%} of the latents are dead after training "
                f"converged (the stopping rule met, so not under-training): the converged state "
                f"of this {c['architecture']} recipe at this width and L0."
            )
        else:
            out.append(
                f"{name(c)}: {c['frac_dead']:.0%} of the latents are dead, but training had not "
                "converged, so part of it may be under-training."
            )
    for c in cs:
        if c["bracketed"] is False:
            out.append(
                f"{name(c)}: the L0 search did not bracket its target (trained at L0 "
                f"{_f(c['l0'], 1)}), so the cell is left out of matched-L0 comparisons."
            )
    return out
