"""The report's oracle section: per cell, the oracle dictionary's EV at the cell's width and L0 next
to the trained SAEs', the optimisation gap with its 95% interval over SAE seeds and its reading, and
the cell's recipe started at the truth (husai.analysis.optimisation_gap); and the verdict's sentence
per hook and architecture."""

from __future__ import annotations

from collections import defaultdict

from husai.study.sweep import _mean


def _f(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def oracle_cells(rows: list[dict]) -> list[dict]:
    """One entry per cell that has an oracle reading: the cell's identity and its seeds' means."""
    by_run = defaultdict(list)
    for r in rows:
        if r.get("status") == "ok" and r.get("oracle_reading"):
            by_run[r["run"]].append(r)
    out = []
    for run, rs in by_run.items():
        r0 = rs[0]
        out.append(
            dict(
                run=run,
                hook=r0["hook"],
                architecture=r0["architecture"],
                model_seed=r0["model_seed"],
                latents=r0["latents"],
                k=r0["oracle_k"],
                atoms=r0["oracle_atoms"],
                reading=r0["oracle_reading"],
                gap=r0["optimisation_gap_mean"],
                gap_lo=r0["optimisation_gap_ci_lo"],
                gap_hi=r0["optimisation_gap_ci_hi"],
                remainder=r0.get("truth_remainder"),
                converged=r0.get("converged"),
                ev_gain=r0.get("last_epoch_ev_gain"),
                **{
                    key: _mean(r.get(key) for r in rs)
                    for key in (
                        "explained_variance",
                        "l0",
                        "oracle_ev",
                        "oracle_l0",
                        "oracle_encoder_ev",
                        "started_ev",
                        "started_cosine_to_start",
                        "trained_near_truth",
                        "started_near_truth",
                        "plane_coverage",
                        "plane_coverage_oracle",
                        "plane_coverage_reference",
                        "in_plane_share",
                    )
                },
            )
        )
    return sorted(
        out,
        key=lambda c: (
            c["hook"],
            c["architecture"],
            c["latents"] or 0,
            c["k"] or 0,
            c["model_seed"],
        ),
    )


LEGEND = (
    "Oracle: a circle tiling of the hook's complete ground truth (for each key frequency the "
    "output plane, the input plane and, where it holds variance, the (a - b) plane; "
    "husai.analysis.oracle) with as many atoms as the SAE has latents (the width rule leaves the "
    "remainder out: 'atoms'; at mlp.hook_post the better of it and the top-variance neurons as "
    "one-hot atoms), coded as well as possible with at most k atoms an input (k: the cell's k, or "
    "the trained SAEs' mean L0 for ReLU) by greedy pursuit, a lower bound on the dictionary's "
    "best. Gap: oracle EV minus SAE EV, paired by seed (each seed its own tiling phase), with the "
    "95% t-interval over SAE seeds. Reading: optimisation when the interval lies above 0 (a "
    "dictionary of the model's features reconstructs better and training does not find it), "
    "objective when below 0, else neither; 'EV still rising': the last epoch of training still "
    "raised the EV by 0.001 or more, so the SAEs are under-trained and an optimisation reading "
    "says that first (on the reference cells a longer, faster recipe, lr 1e-2 and 30 epochs, "
    "configs/examples/topk_converged.yaml, reaches or passes the oracle's EV without bringing the "
    "rows to the truth: BENCHMARKS.md). Oracle + the family's encoder: the tiling as a frozen "
    "decoder with the cell's own encoder trained on it by the cell's recipe; the best code's EV "
    "minus this is the amortisation gap (what a one-layer encoder loses in choosing atoms). "
    "Started at truth: the cell's own recipe started from the tiling; cos to start: each started "
    "row's cosine to its atom at the end; near truth: the share of live decoder rows within cosine "
    "0.9 of an atom of the tiling. Plane coverage: per plane of the complete truth, the live rows "
    "with more than half their norm there (in the truth's span) and the cosine of the plane's "
    "worst-covered direction to the nearest of them (clipped at 0; m evenly spaced rows score "
    "cos(pi/m), fewer than 3 score 0), averaged with the planes' variance shares, for the trained "
    "SAEs / the seed's tiling / the SAEs' rows rotated at random in the data span; in plane: the "
    "share of live rows lying in some plane (husai.analysis.plane_recovery)."
)

HEAD = [
    "hook",
    "architecture",
    "latents",
    "k",
    "model seed",
    "SAE EV",
    "oracle EV (atoms)",
    "oracle + the family's encoder",
    "gap [95% CI]",
    "reading",
    "started at truth: EV",
    "cos to start",
    "near truth: trained / started",
    "plane coverage: SAE / oracle / reference (in plane)",
]


def _reading(c: dict) -> str:
    if c["converged"] is False:
        return f"{c['reading']} (EV still rising {c['ev_gain']:+.4f} an epoch)"
    return c["reading"]


def oracle_table(cells: list[dict]) -> str:
    lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    for c in cells:
        gap = f"{_f(c['gap'])} [{_f(c['gap_lo'])}, {_f(c['gap_hi'])}]"
        near = f"{_f(c['trained_near_truth'], 2)} / {_f(c['started_near_truth'], 2)}"
        planes = (
            f"{_f(c['plane_coverage'], 2)} / {_f(c['plane_coverage_oracle'], 2)} / "
            f"{_f(c['plane_coverage_reference'], 2)} ({_f(c['in_plane_share'], 2)})"
        )
        cols = [
            c["hook"],
            c["architecture"],
            _f(c["latents"]),
            _f(c["k"]),
            _f(c["model_seed"]),
            _f(c["explained_variance"]),
            f"{_f(c['oracle_ev'])} ({_f(c['atoms'])})",
            _f(c["oracle_encoder_ev"]),
            gap,
            _reading(c),
            _f(c["started_ev"]),
            _f(c["started_cosine_to_start"], 2),
            near,
            planes,
        ]
        lines.append("| " + " | ".join(cols) + " |")
    return "\n".join(lines) + "\n\n" + LEGEND


def oracle_verdict(cells: list[dict]) -> list[str]:
    """One sentence per hook and architecture: how many cells read as which failure, the gap's
    range, and what starting at the truth gives against the standard init."""
    groups = defaultdict(list)
    for c in cells:
        groups[(c["hook"], c["architecture"])].append(c)
    lines = []
    for (hook, arch), cs in sorted(groups.items()):
        counts = {
            r: sum(c["reading"] == r for c in cs) for r in ("optimisation", "objective", "neither")
        }
        gaps = [c["gap"] for c in cs if c["gap"] is not None]
        said = ", ".join(f"{r} in {n}" for r, n in counts.items() if n)
        rising = sum(c["reading"] == "optimisation" and c["converged"] is False for c in cs)
        said += f" of {len(cs)} cells" + (
            f" (the EV was still rising in {rising} of the {counts['optimisation']} "
            "optimisation cells: under-trained)"
            if rising
            else ""
        )
        line = (
            f"Why {arch} at {hook} misses the truth: {said}; the oracle's EV minus the SAEs' "
            f"runs {min(gaps):+.3f} to {max(gaps):+.3f}"
        )
        started = [
            (c["started_ev"], c["explained_variance"]) for c in cs if c["started_ev"] is not None
        ]
        if started:
            better = sum(s > e for s, e in started)
            line += (
                f"; started at the truth, the same recipe ends above the standard init in {better} "
                f"of {len(started)} cells (EV {_f(_mean(s for s, _ in started))} against "
                f"{_f(_mean(e for _, e in started))})"
            )
        lines.append(line + ".")
    return lines
