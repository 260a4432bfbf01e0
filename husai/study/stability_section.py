"""The report's verdict and its stability section: "do the seeds learn the same, true features?",
level by level, each figure with its 95% CI over seeds and the null it is read against
(husai.analysis.agreement, husai.analysis.seed_stability).

A level counts as agreeing beyond chance when the CI of its effect over its chance null
(value - null, paired by seed pair; husai.analysis.measures, Measure.fitting) lies above 0; "at" the
null when the CI holds 0; "below" when it lies under 0. The symmetry null is read the same way,
separately, as the phase reading. There is no z-score: a z against the spread of single null draws
(the old rule) measures how precisely the null is drawn, not how sure the comparison is (it gave
z = 825 and -226).
"""

from __future__ import annotations

import math

from husai.analysis.measures import MEASURES, NULLS

TABLE_SKIPS = ("pw_mcc_enc",)
"""Measures left out of the report's table (in results.csv and analysis.json all are)."""


def _f(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}"


def _ci(c, nd=3) -> str:
    return f"[{_f(c[0], nd)}, {_f(c[1], nd)}]" if c else "[-]"


def _levels(st: dict) -> dict:
    return dict(
        st.get("levels", {}),
        **{
            k: v
            for k, v in st.get("ground_truth", {}).items()
            if isinstance(v, dict) and "value" in v
        },
    )


def reading(r: dict, key: str = "fitting") -> str:
    """above / at / below a null (key "fitting": chance; "phase": the symmetry null), from the CI of
    the effect."""
    if key not in r:
        return "no null"
    ci = r[key].get("effect_ci")
    if not ci:
        return "no CI (fewer than 3 seeds)"
    return "above" if ci[0] > 0 else ("below" if ci[1] < 0 else "at")


PHASE_WORDS = {
    "above": (
        "above it: the seeds agree on phase, i.e. on which latents exist, not only on the planes"
    ),
    "at": (
        "at it: they agree no more than with a shifted copy (a phase-invariant tiling or "
        "phase-unstable latents)"
    ),
    "below": "below it: a shifted copy of the other seed matches better than the seed itself",
}


def _phrase(r: dict, name: str) -> str:
    fit = r.get("fitting") or {}
    nulls = " / ".join(n.replace("_", " ") for n in fit.get("nulls", []))
    text = f"{name} {_f(r['value'])} {_ci(r.get('ci'))}"
    if fit:
        text += (
            f", {reading(r)} chance ({nulls} null {_f(fit.get('value'))}; effect "
            f"{_f(fit.get('effect'))} {_ci(fit.get('effect_ci'))})"
        )
    if "phase" in r:
        ph = r["phase"]
        word = reading(r, "phase")
        text += (
            f"; against a shifted copy of the other seed (symmetry null {_f(ph.get('value'))}, "
            "effect "
            f"{_f(ph.get('effect'))} {_ci(ph.get('effect_ci'))}) " + PHASE_WORDS.get(word, word)
        )
    return text


def verdict(cells: list[dict]) -> list[str]:
    """One headline paragraph per SAE cell, level by level (module docstring)."""
    lines = []
    for c in cells:
        st = c["analysis"].get("stability")
        if not st:
            lines.append(f"{c['name']}: no stability result ({c['status']}).")
            continue
        lv, n = _levels(st), len(c["rows"])
        parts = [
            f"{c['name']}, {n} seeds, in the data metric ({st['data_span']['dim']}-d span, live "
            "latents)."
        ]
        cos = [r.get("cosine_to_init") for r in c["rows"] if r.get("cosine_to_init") is not None]
        cos_mean = sum(cos) / len(cos) if cos else None
        if "pw_mcc_dec" in lv:
            init = (
                st.get("references", {}).get("shared_init", {}).get("pw_mcc_dec", {}).get("value")
            )
            raw = st.get("raw", {}).get("pw_mcc_dec", {}).get("value")
            learned = ""
            if init is not None:
                if lv["pw_mcc_dec"]["value"] > init:
                    learned = (
                        f"; training raised it above the seeds' initialisations ({_f(init)}, "
                        "shared-init reference)"
                    )
                else:
                    learned = (
                        f"; the seeds' initialisations agreed more ({_f(init)}, shared-init "
                        "reference), so training lowered it"
                    )
                    if cos_mean is not None:
                        learned += (
                            f", and the rows kept cosine {_f(cos_mean, 2)} with their init: part "
                            "of what remains may be inherited from step 0"
                            if cos_mean >= 0.5
                            else f", while the rows moved far from their init "
                            f"(cosine {_f(cos_mean, 2)}): what remains was learned, not inherited"
                        )
            parts.append(
                f"Atoms: {_phrase(lv['pw_mcc_dec'], 'PW-MCC')}{learned}; raw-coordinate PW-MCC "
                f"{_f(raw)} (basis-dependent, the old figure)."
            )
        if "shared_fraction" in lv:
            parts.append(
                f"Shared fraction {_f(lv['shared_fraction']['value'])} "
                f"{_ci(lv['shared_fraction'].get('ci'))} ({reading(lv['shared_fraction'])} "
                "chance); latents reappear in another seed with probability "
                f"{_f(lv.get('reappearance', {}).get('value'))}."
            )
        if "act_mcc" in lv:
            parts.append(f"Activations: {_phrase(lv['act_mcc'], 'matched correlation')}.")
        gtp = (
            ("class_jaccard", "answer-class Jaccard"),
            ("mass_agreement", "plane-mass agreement (descriptive)"),
        )
        if any(m in lv for m, _ in gtp):
            parts.append(
                "Planes and classes: "
                + "; ".join(_phrase(lv[m], name) for m, name in gtp if m in lv)
                + "."
            )
        rec = [
            (
                r.get("centroid_mcc"),
                max(r.get("centroid_mcc_random") or -1, r.get("centroid_mcc_data_points") or -1),
            )
            for r in c["rows"]
            if r.get("centroid_mcc") is not None
        ]
        if rec and (c["rows"][0].get("hook_answer_share") or 0) >= 0.5:
            m, ref = sum(a for a, _ in rec) / len(rec), sum(b for _, b in rec) / len(rec)
            parts.append(
                f"Ground truth: answer-centroid MCC {_f(m)} against {_f(ref)} for the better "
                f"no-learning reference ({'above' if m > ref else 'not above'} it)."
            )
        ctrl = c["analysis"].get("controls") or {}
        if ctrl and "pw_mcc_dec" in lv:
            said = []
            for which, name in (
                ("memorised", "the memorising model"),
                ("untrained", "an untrained model"),
            ):
                r = (ctrl.get(which) or {}).get("levels", {}).get("pw_mcc_dec")
                if r:
                    con = (ctrl[which].get("contrast") or {}).get("pw_mcc_dec") or {}
                    said.append(
                        f"on {name} {_f(r['value'])} {_ci(r.get('ci'))} (effect over chance "
                        f"{_f((r.get('fitting') or {}).get('effect'))}; the grokked model's SAEs "
                        f"minus these, paired by seed pair: {_f(con.get('value'))} "
                        f"{_ci(con.get('ci'))})"
                    )
                elif ctrl.get(which, {}).get("error"):
                    said.append(f"on {name}: not run ({ctrl[which]['error']})")
            if said:
                parts.append(
                    "Model-side controls, the same recipe: PW-MCC " + "; ".join(said) + "."
                )
        off = [v for v in st.get("off_span", {}).values() if v is not None]
        if off or cos:
            parts.append(
                f"Health: {_f(sum(off) / len(off) if off else None)} of the live decoder rows' "
                "squared norm lies outside the data span; decoder rows keep cosine "
                f"{_f(sum(cos) / len(cos) if cos else None, 2)} with their init"
                + (
                    " (they barely moved: no stability figure here means much)."
                    if cos and sum(cos) / len(cos) > 0.9
                    else "."
                )
            )
        lines.append(" ".join(parts))
    return lines


def stability_table(cells: list[dict]) -> str:
    """Every level of every cell: value [CI], each null, the effects over chance and over the
    symmetry null [CI], and the shared-init reference; then PW-MCC along training where a trajectory
    was recorded."""
    head = [
        "cell",
        "level",
        "metric",
        "value [95% CI]",
        *(n.label + " null" for n in NULLS.values()),
        "effect over chance [95% CI]",
        "reading",
        "effect over symmetry [95% CI]",
        "phase reading",
        "shared-init reference",
    ]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    traj = []
    for c in cells:
        st = c["analysis"].get("stability")
        if not st:
            continue
        lv, refs = _levels(st), st.get("references", {})
        for m, measure in MEASURES.items():
            if m not in lv or m in TABLE_SKIPS:
                continue
            level, name = measure.level, measure.label
            r, fit, ph = lv[m], lv[m].get("fitting") or {}, lv[m].get("phase") or {}
            init = refs.get("shared_init", {}).get(m, {}).get("value")
            out.append(
                "| "
                + " | ".join(
                    [
                        c["name"],
                        level,
                        name,
                        f"{_f(r['value'])} {_ci(r.get('ci'))}",
                        *(_f(r["nulls"].get(k, {}).get("value")) for k in NULLS),
                        f"{_f(fit.get('effect'))} {_ci(fit.get('effect_ci'))}" if fit else "-",
                        reading(r),
                        f"{_f(ph.get('effect'))} {_ci(ph.get('effect_ci'))}" if ph else "-",
                        reading(r, "phase"),
                        _f(init),
                    ]
                )
                + " |"
            )
        tr = refs.get("trajectory")
        if tr and "pw_mcc_dec" in lv:
            steps = [
                f"epoch {e}: {_f(v['pw_mcc_dec']['value'])}"
                for e, v in sorted(tr.items(), key=lambda kv: int(kv[0]))
            ]
            traj.append(
                f"- {c['name']}: PW-MCC along training (data metric, live latents): "
                + ", ".join(steps)
                + f", final: {_f(lv['pw_mcc_dec']['value'])}."
            )
    text = "\n".join(out)
    ctrl_rows = []
    for c in cells:
        for which, ctl in (c["analysis"].get("controls") or {}).items():
            if "levels" not in ctl:
                ctrl_rows.append(f"| {c['name']} | {which} | not run: {ctl.get('error')} | | | | |")
                continue
            ev = ctl.get("explained_variance") or []
            lv = ctl["levels"]
            cells_ = [
                f"{_f(lv[m]['value'])} {_ci(lv[m].get('ci'))} "
                f"({_f((lv[m].get('fitting') or {}).get('value'))})"
                if m in lv
                else "-"
                for m in ("pw_mcc_dec", "shared_fraction", "act_mcc")
            ]
            ctrl_rows.append(
                f"| {c['name']} | {which}"
                + (
                    f" (epoch {ctl.get('epoch')}, test acc {_f(ctl.get('test_acc'))})"
                    if which == "memorised"
                    else ""
                )
                + f" | {_f(sum(ev) / len(ev) if ev else None)} | {ctl['data_span']['dim']} | "
                + " | ".join(cells_)
                + " |"
            )
    if ctrl_rows:
        text += (
            "\n\nModel-side controls: the same SAE recipe and seeds (the first few) on the model "
            "before it generalised and on its untrained initialisation; value [95% CI] (chance "
            "null).\n\n"
            "| cell | control | EV | span dim | PW-MCC | shared fraction | activation MCC |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(ctrl_rows)
        )
    if traj:
        text += "\n\n" + "\n".join(traj)
    return (
        text
        + "\n\n"
        + (
            "All figures compare live latents in the data metric: decoder and encoder rows "
            "projected onto the principal subspace holding 99.9% of the activation variance, so a "
            "rotation of the activations leaves them unchanged. CI: 95% bootstrap over seeds (with "
            "3 seeds it is the range of the 3 pairs; with 2, none). Nulls (the chance null of each "
            "measure: "
            + "; ".join(
                f"{m.label}: {', '.join(NULLS[k].label for k in m.fitting)}"
                for m in MEASURES.values()
                if m.fitting
            )
            + "; the others are descriptive): "
            + " ".join(
                f"{n.label} = {n.drawn}; above it rules out {n.controls_for}."
                for n in NULLS.values()
            )
            + " Effect: value minus the null, paired by seed pair. "
            "Shared-init reference: the same comparison between the seeds' initialisations (not "
            "chance: with data init they start from data points of the same tight clusters)."
        )
    )


def brief(c: dict) -> list[str]:
    """A cell's reading in a few short lines (the report.md of a large study; report.html has the
    full paragraph of `verdict`): what the compact per-hook table leaves out."""
    st = c["analysis"].get("stability")
    if not st:
        return [f"no stability result ({c['status']})"]
    lv, out = _levels(st), []
    for m, name in (("pw_mcc_dec", "PW-MCC"), ("act_mcc", "activation correlation")):
        ph = (lv.get(m) or {}).get("phase")
        if ph:
            out.append(
                f"{name} against a shifted copy (symmetry null {_f(ph.get('value'))}): effect "
                f"{_f(ph.get('effect'))} {_ci(ph.get('effect_ci'))}, {reading(lv[m], 'phase')}"
            )
    if "shared_fraction" in lv:
        r = lv["shared_fraction"]
        out.append(f"shared fraction {_f(r['value'])} {_ci(r.get('ci'))}, {reading(r)} chance")
    init = st.get("references", {}).get("shared_init", {}).get("pw_mcc_dec", {}).get("value")
    cos = [r.get("cosine_to_init") for r in c["rows"] if r.get("cosine_to_init") is not None]
    if init is not None:
        out.append(
            f"shared-init PW-MCC {_f(init)}"
            + (f"; rows keep cosine {_f(sum(cos) / len(cos), 2)} with their init" if cos else "")
        )
    return out


HOOK_TABLE_LEGEND = (
    "One row per cell (its SAE seeds' means): L0, explained variance, the share of dead latents; "
    "PW-MCC between seeds (the atoms, in the data metric) with its 95% bootstrap CI over seeds, "
    "its matched-geometry null and the effect (value - null) with its CI: above 0, the seeds "
    "agree beyond chance; the answer-class Jaccard's effect over its random-in-span null; plane "
    "coverage of the complete truth for the SAEs, the same rows rotated at random and the oracle "
    "tiling; the optimisation gap (oracle EV - SAE EV) with its 95% t-interval over seeds and its "
    "reading (docs/methods.md). Each cell's full reading is folded below the tables."
)


def hook_tables(cs: list[dict]) -> str:
    """The compact per-cell table, one per hook (cs: husai.study.answer.cells), then the legend
    once."""
    f = lambda t, nd=3: "-" if not t or t[0] is None else _f(t[0], nd)
    ci = lambda t: "" if not t or t[1] is None or t[2] is None else f" [{_f(t[1])}, {_f(t[2])}]"
    head = [
        "cell",
        "model seed",
        "L0",
        "EV",
        "dead",
        "PW-MCC [95% CI]",
        "null",
        "effect [95% CI]",
        "class Jaccard effect",
        "plane coverage (random; oracle)",
        "gap [95% CI], reading",
    ]
    out = []
    for hook in sorted({c["hook"] for c in cs}):
        lines = [f"At {hook}:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in (c for c in cs if c["hook"] == hook):
            cov = c["coverage"]
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"{c['architecture']} {c['knob']}, {c['latents']} latents",
                        str(c["model_seed"]),
                        _f(c["l0"], 1),
                        _f(c["ev"]),
                        _f(c["frac_dead"], 2),
                        f(c["pw"]) + ci(c["pw"]),
                        _f(c["pw_null"]),
                        f(c["pw_effect"]) + ci(c["pw_effect"]),
                        f(c["cj_effect"]) + ci(c["cj_effect"]),
                        f"{f(cov, 2)} ({_f(c['coverage_ref'], 2)}; {_f(c['coverage_oracle'], 2)})",
                        f"{f(c['gap'])}{ci(c['gap'])}, {c['reading'] or '-'}",
                    ]
                )
                + " |"
            )
        out.append("\n".join(lines))
    return "\n\n".join(out + [HOOK_TABLE_LEGEND])
