"""The sweep: how seed agreement and ground-truth recovery change with width and L0, for each
architecture at each hook (the study's question: when do SAEs find the ground truth, and when do
seeds agree?).

A point is one grid cell (one model seed, hook, architecture, width and sparsity knob), computed
from the results table (husai.study.results):

    latents, l0, ev        the cell's seeds' means
    stability              PW-MCC of the decoders in the data metric, its 95% CI over seeds, and
                           its effect over the chance null (matched geometry) with that effect's CI
    recovery               the ground-truth atoms' Hungarian MCC (answer-class centroids where the
                           hook is mostly a function of the answer, else the single-frequency
                           neurons' directions at mlp.hook_post) minus the better no-learning
                           reference of the same size, seeds' mean: > 0 means learned

Cells that differ only in model seed are points of one curve: it plots their mean, and the 95%
t-interval of that mean across model seeds as the error bar (with one model seed, the SAE seeds'
CI). A target-L0 cell whose L0 search did not bracket its target (results.csv's l0_bracketed false)
trained at some other L0: it is left out of every curve and trend, and the table says why.
"""

from __future__ import annotations

import math
from collections import defaultdict

from husai.io import read_json

ANSWER_HOOK = 0.5
"""The answer atoms are the ground truth of a hook only where most of its variance is a function of
the answer (resid_post, mlp_out: > 0.9; attn_out and mlp.hook_post: < 0.15;
docs/methods.md, "Ground truth at each hook")."""


def _mean(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else None


def knob(row: dict) -> str:
    """The sparsity setting that names a curve: its family's first filled column (husai.sae.family):
    k, a target L0, a fixed penalty weight, or a new family's own knob."""
    from husai.sae.family import families

    fam = families().get(row.get("architecture"))
    for col in fam.config.columns if fam else ():
        v = row.get(col)
        if v is None:
            continue
        if col == "target_l0":
            return f"target L0 {v:g}"
        if col == fam.config.sparsity_key and col != "k":
            return f"weight {v:g}"
        return f"{col} {v:g}" if isinstance(v, float) else f"{col} {v}"
    return "-"


def _recovery(analysis: dict) -> dict:
    """Per SAE label: (atom set, MCC, best reference MCC) from analysis.json's recovery."""
    out = {}
    answer = analysis.get("ground_truth", {}).get("variance", {}).get("answer")
    for label, f in analysis.get("fourier", {}).items():
        atoms = (f.get("recovery") or {}).get("atoms", {})
        name = (
            "answer_centroids"
            if (answer or 0) >= ANSWER_HOOK or "neurons" not in atoms
            else "neurons"
        )
        a = atoms.get(name)
        if not a or a.get("mcc") is None:
            continue
        refs = [
            a.get("random_reference", {}).get("mcc"),
            (a.get("data_point_reference") or {}).get("mcc"),
        ]
        refs = [r for r in refs if r is not None]
        out[label] = (name, a["mcc"], max(refs) if refs else None)
    return out


def sweep_points(root, rows: list[dict]) -> list[dict]:
    """One point per grid cell that finished (module docstring)."""
    cells = defaultdict(list)
    for r in rows:
        if r["status"] == "ok":
            cells[r["run"]].append(r)
    points = []
    for run, rs in cells.items():
        first = rs[0]
        left_out = (
            f"left out: the L0 search did not reach target L0 {first['target_l0']:g}"
            if first.get("l0_bracketed") is False and first.get("target_l0") is not None
            else None
        )
        an_path = root / run / "analysis.json"
        rec = _recovery(read_json(an_path)) if an_path.is_file() else {}
        mcc = _mean([v[1] for v in rec.values()])
        ref = _mean([v[2] for v in rec.values()])
        points.append(
            dict(
                run=run,
                hook=first["hook"],
                architecture=first["architecture"],
                knob=knob(first),
                model_seed=first["model_seed"],
                latents=first.get("latents"),
                n_seeds=len(rs),
                l0=_mean([r["l0"] for r in rs]),
                ev=_mean([r["explained_variance"] for r in rs]),
                frac_dead=_mean([r["frac_dead"] for r in rs]),
                stability=first.get("pw_mcc_dec"),
                stability_ci=[first.get("pw_mcc_dec_ci_lo"), first.get("pw_mcc_dec_ci_hi")],
                stability_null=first.get("pw_mcc_dec_null"),
                stability_effect=first.get("pw_mcc_dec_effect"),
                stability_effect_ci=[
                    first.get("pw_mcc_dec_effect_ci_lo"),
                    first.get("pw_mcc_dec_effect_ci_hi"),
                ],
                atoms=next(iter(rec.values()))[0] if rec else None,
                recovery_mcc=mcc,
                recovery_reference=ref,
                recovery=None if mcc is None or ref is None else mcc - ref,
                gap=first.get("optimisation_gap_mean"),
                gap_ci=[first.get("optimisation_gap_ci_lo"), first.get("optimisation_gap_ci_hi")],
                left_out=left_out,
            )
        )
    return points


def curves(points: list[dict], series: str, x: str) -> dict[tuple, list[dict]]:
    """(hook, architecture, series value) -> a curve: its points sorted by x ("latents" along a
    sparsity series="knob", or "l0" along a width series="latents"). Each point is the mean over
    model seeds of the cells that share hook, architecture, sparsity and width, with lo/hi its range
    over model seeds (or, with one model seed, the seeds' 95% CI of stability and of its effect)."""
    from husai.analysis.optimisation_gap import t_interval

    groups = defaultdict(list)
    for p in points:
        if not p.get("left_out"):
            groups[(p["hook"], p["architecture"], p["knob"], p["latents"])].append(p)
    out = defaultdict(list)
    for (hook, arch, kn, width), ps in groups.items():
        row = dict(hook=hook, architecture=arch, knob=kn, n_models=len(ps))
        for key in (
            "latents",
            "l0",
            "ev",
            "frac_dead",
            "stability",
            "stability_effect",
            "recovery",
            "stability_null",
            "gap",
        ):
            row[key] = _mean([p.get(key) for p in ps])
        for key in ("stability", "stability_effect", "gap"):
            vals = [p[key] for p in ps if p[key] is not None]
            if len(ps) > 1 and len(vals) > 1:  # across model seeds
                row[f"{key}_lo"], row[f"{key}_hi"] = t_interval(vals)[1:]
            else:
                ci = ps[0].get(f"{key}_ci") or [None, None]
                row[f"{key}_lo"], row[f"{key}_hi"] = (
                    (ci[0], ci[1]) if None not in ci else (None, None)
                )
        rec = [p["recovery"] for p in ps if p["recovery"] is not None]
        row["recovery_lo"], row["recovery_hi"] = (
            t_interval(rec)[1:] if len(rec) > 1 else (None, None)
        )
        out[(hook, arch, row[series])].append(row)
    return {k: sorted(v, key=lambda r: (r[x] is None, r[x] or 0)) for k, v in out.items()}


def _trend(curve: list[dict], key: str) -> str | None:
    pts = [(r, r[key]) for r in curve if r[key] is not None]
    if len(pts) < 2:
        return None
    return f"{pts[0][1]:.3f} -> {pts[-1][1]:.3f}"


def headline(points: list[dict]) -> list[str]:
    """Sentences for the verdict: per hook and architecture, how stability's effect over chance and
    the ground-truth recovery move from the narrowest to the widest SAE (at each sparsity) and from
    the sparsest to the densest (at each width)."""
    if not points:
        return []
    points = [p for p in points if not p.get("left_out")]
    if not points:
        return []
    agree = [p for p in points if (p["stability_effect_ci"][0] or 0) > 0]
    found = [p for p in points if (p["recovery"] or 0) > 0]
    lines = [
        f"Across the sweep's {len(points)} cells, the seeds agree beyond chance (PW-MCC's effect "
        f"over its matched-geometry null, CI above 0) in {len(agree)}, and the SAEs' rows match "
        f"the hook's reference atoms (answer-class centroids, or single-frequency neurons at "
        f"mlp.hook_post; atom MCC) beyond the better no-learning reference in {len(found)}."
    ]
    by_width = curves(points, "knob", "latents")
    by_l0 = curves(points, "latents", "l0")
    for hook in sorted({p["hook"] for p in points}):
        for arch in sorted({p["architecture"] for p in points if p["hook"] == hook}):
            parts = []
            for (h, a, s), c in sorted(by_width.items(), key=lambda kv: str(kv[0])):
                if (h, a) != (hook, arch) or len(c) < 2:
                    continue
                w = f"{c[0]['latents']:.0f} -> {c[-1]['latents']:.0f} latents ({s})"
                parts.append(
                    f"{w}: stability over chance {_trend(c, 'stability_effect') or '-'}, "
                    f"atom MCC over the no-learning reference {_trend(c, 'recovery') or '-'}"
                )
            for (h, a, s), c in sorted(by_l0.items(), key=lambda kv: str(kv[0])):
                if (h, a) != (hook, arch) or len(c) < 2:
                    continue
                parts.append(
                    f"L0 {c[0]['l0']:.1f} -> {c[-1]['l0']:.1f} at {s:.0f} latents: stability over "
                    f"chance {_trend(c, 'stability_effect') or '-'}, atom MCC "
                    f"{_trend(c, 'recovery') or '-'}"
                )
            if parts:
                lines.append(f"Sweep, {arch} at {hook}: " + "; ".join(parts) + ".")
    return lines if len(lines) > 1 else []  # no curve: a single cell, not a sweep


def sweep_table(points: list[dict]) -> str:
    head = [
        "hook",
        "architecture",
        "sparsity",
        "latents",
        "model seed",
        "L0",
        "EV",
        "dead",
        "PW-MCC [95% CI]",
        "chance",
        "effect [95% CI]",
        "atoms",
        "recovery MCC (reference)",
        "recovery",
    ]
    f = lambda v, nd=3: "-" if v is None else f"{v:.{nd}f}"
    ci = lambda c: "[-]" if None in c else f"[{c[0]:.3f}, {c[1]:.3f}]"
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(
        points,
        key=lambda p: (p["hook"], p["architecture"], p["knob"], p["latents"] or 0, p["model_seed"]),
    ):
        lines.append(
            "| "
            + " | ".join(
                [
                    p["hook"],
                    p["architecture"],
                    p["knob"],
                    str(p["latents"]),
                    str(p["model_seed"]),
                    f(p["l0"], 1),
                    f(p["ev"]),
                    f(p["frac_dead"]),
                    f"{f(p['stability'])} {ci(p['stability_ci'])}",
                    f(p["stability_null"]),
                    f"{f(p['stability_effect'])} {ci(p['stability_effect_ci'])}",
                    p["atoms"] or "-",
                    f"{f(p['recovery_mcc'])} ({f(p['recovery_reference'])})",
                    f(p["recovery"]) + (f" ({p['left_out']})" if p.get("left_out") else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines)
