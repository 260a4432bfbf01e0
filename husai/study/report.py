"""The study report: report.md, a self-contained report.html (figures embedded) and figures/*.png.

Everything is computed from the study folder, so `husai report RUN_DIR` rebuilds it at any time.
Success criteria follow the original ones users already run: L0 within 28-36 for k = 32, explained
variance > 0.85, dead latents < 15%, Fourier overlap > 0.5 (kept, named as the original; why sparse
latents cannot meet it: docs/methods.md, "Fourier validation"), and its replacement: recovery of the
answer atoms beyond a random dictionary's.
"""

from __future__ import annotations

import math
from pathlib import Path

from husai.io import atomic_write_bytes, read_json, read_jsonl
from husai.study.answer import DEAD_SHARE, answer, answer_markdown, notes
from husai.study.answer import cells as answer_cells
from husai.study.config import load_study
from husai.study.oracle_section import oracle_cells, oracle_table, oracle_verdict
from husai.study.report_html import details, page
from husai.study.stability_section import brief, hook_tables, stability_table, verdict
from husai.study.sweep import ANSWER_HOOK, headline, sweep_points, sweep_table

ATOM_MARGIN = 0.05
"""An SAE recovers the answer atoms when its centroid MCC beats both no-learning references of the
same size (random directions in the span, and random centred data points, what a data-initialised
SAE starts from) by more than 0.05 (measured on the default model's resid_post: one random draw's
MCC has std 0.004 at 1200-2048 latents, and each reference averages 5 draws, so 0.05 is > 10
reference std)."""


MD_FULL_SAES = 30
"""report.md carries every table and each cell's full reading (folded) up to this many SAEs; a
larger study's report.md keeps the answer, the per-hook tables and each cell's short reading (the
default study's 96 SAEs: under 40 KB), and names report.html and results.csv for the rest."""
NAMED = "One row per cell, with its legend, in report.html (and every column in results.csv)."
FOLDED = ("SAE quality", "Stability across seeds", "Ground truth and what the latents are")
"""The per-SAE and per-level sections, folded in <details> (report.md of a large study: named)."""
HEADLINE_CAPTION = (
    "The answer in one figure, one column per hook. Top: the seeds' agreement over chance (PW-MCC "
    "between seeds minus its matched-geometry null; above the black line at 0, seeds share atoms "
    "beyond chance). Bottom: how much of the model's Fourier truth the SAEs hold (plane coverage "
    "of the complete truth; dotted with crosses: the same rows rotated at random, the chance "
    "level; black dashed: the oracle tiling, the ceiling). Against width (latents, log axis); one "
    "line per architecture and sparsity; error bars: 95% CI across model seeds (one model seed: "
    "across SAE seeds). Look for lines far above 0 on top and near the oracle at the bottom, and "
    "whether they climb or fall with width."
)


def criteria(row: dict) -> dict[str, bool | None]:
    """Pass/fail of the success criteria for one SAE row (None: not applicable / missing)."""

    def ok(v, test):
        return None if v is None else bool(test(v))

    l0 = None
    if row.get("k") == 32:  # the TopK family's column (husai.sae.family)
        l0 = ok(row.get("l0"), lambda v: 28 <= v <= 36)
    refs = [row.get("centroid_mcc_random"), row.get("centroid_mcc_data_points")]
    bar = (
        None
        if None in refs or (row.get("hook_answer_share") or 0) < ANSWER_HOOK
        else max(refs) + ATOM_MARGIN
    )
    return {
        "L0 28-36 (k=32)": l0,
        "EV > 0.85": ok(row.get("explained_variance"), lambda v: v > 0.85),
        "dead < 15%": ok(row.get("frac_dead"), lambda v: v < 0.15),
        "Fourier overlap > 0.5 (original)": ok(row.get("fourier_overlap"), lambda v: v > 0.5),
        # the replacement (husai.analysis.recovery): sparse latents can meet it, no-learning ones
        # cannot
        f"answer atoms: MCC > references + {ATOM_MARGIN}": None
        if bar is None
        else ok(row.get("centroid_mcc"), lambda v: v > bar),
    }


def _fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _sci(v):
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2e}"


def _mark(v):
    return "n/a" if v is None else ("PASS" if v else "FAIL")


def browsable(root: Path, cfg) -> bool:
    """Whether some cell finished: then the study writes browser.html right after the report
    (husai.study.runner), and the report links to it."""
    return any((r.folder(root) / "analysis.json").is_file() for r in cfg.runs())


def write_report(root: str | Path, rows: list[dict] | None = None) -> Path:
    """Build report.md, report.html and figures/ for a study folder; returns report.html.

    rows: the results table just built by the caller; None rebuilds it from the folders."""
    from husai.study import figures as rf
    from husai.study.results import build_table

    root = Path(root)
    cfg = load_study(root / "study.yaml")
    rows = build_table(root, cfg) if rows is None else rows
    figdir = root / "figures"
    figs: list[tuple[str, Path, str]] = []  # (section, png, caption)
    sections: list[tuple[str, str, str]] = []  # (title, report.md body, report.html body)

    for ms in cfg.model_seeds:
        mdir = root / "models" / f"seed{ms}"
        m = read_json(mdir / "metrics.json", "model metrics")
        hist = read_jsonl(mdir / "history.jsonl")
        figs.append(
            (
                "model",
                rf.training_curves(
                    hist,
                    m.get("grokked_epoch"),
                    m.get("clean_epoch"),
                    figdir / f"model_seed{ms}_training.png",
                    m.get("progress"),
                    m.get("memorised_epoch"),
                ),
                f"Model seed {ms}: the grokking story, with its three phases shaded "
                "(memorisation up to the memorised epoch, circuit formation and generalisation up "
                "to the grokked epoch, clean-up up to the clean epoch). Look for train loss "
                "falling long before test loss, then the single-frequency share climbing during "
                "the clean-up"
                + (
                    "; right: Nanda et al.'s progress measures from the weight snapshots, with the "
                    "final key frequencies (look for the restricted loss falling before the test "
                    "loss: the Fourier circuit forms while the model still memorises; the excluded "
                    "loss rises as the clean-up removes memorisation)."
                    if m.get("progress")
                    else "."
                ),
            )
        )
        figs.append(
            (
                "model",
                rf.fourier_spectrum(m, figdir / f"model_seed{ms}_spectrum.png"),
                f"Model seed {ms}: Fourier spectrum; key frequencies {m.get('key_frequencies')} "
                "(red). Look for a few tall red bars and little else: a sparse Fourier circuit.",
            )
        )
        model_lines = "\n".join(
            [
                f"- test accuracy {_fmt(m.get('test_acc'), 4)}, test loss "
                f"{_fmt(m.get('test_loss'), 6)}, train loss {_fmt(m.get('train_loss'), 6)}",
                f"- epochs {m.get('epochs_trained')}, grokked at {m.get('grokked_epoch')}, "
                f"clean at {m.get('clean_epoch')}",
                f"- key frequencies {m.get('key_frequencies')}; single-frequency neurons "
                f"{_fmt(m.get('frac_neurons_single_freq'))}",
                f"- restricted loss {_fmt(m.get('restricted_loss'), 6)}, excluded loss "
                f"{_fmt(m.get('excluded_loss'))}",
            ]
        )
        sections.append((f"Model (seed {ms})", model_lines, model_lines))

    cells = []
    for run in cfg.runs():
        folder = run.folder(root)
        crow = [r for r in rows if r["run"] == str(folder.relative_to(root))]
        an = read_json(folder / "analysis.json") if (folder / "analysis.json").is_file() else {}
        cells.append(
            dict(
                name=f"{run.name} @ {run.hook} (model seed {run.model_seed})",
                rows=crow,
                analysis=an,
                status=crow[0]["status"] if crow else "missing",
                arch=run.cfg.architecture,
            )
        )

    # Per-SAE quality with the success criteria (`criteria`).
    head = [
        "run",
        "seed",
        "EV",
        "L0",
        "dead",
        "spliced acc",
        "delta CE (nats)",
        "CE rec (zero)",
        "CE rec (mean)",
        "Fourier overlap",
        "cosine to init",
        "off span",
    ] + list(criteria(rows[0]).keys() if rows else [])
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            table.append(
                f"| {r['run']} | {r['seed']} | FAILED: {r['error']} |" + " |" * (len(head) - 3)
            )
            continue
        table.append(
            "| "
            + " | ".join(
                [
                    r["run"].split("/")[-1],
                    str(r["seed"]),
                    _fmt(r["explained_variance"]),
                    _fmt(r["l0"], 1),
                    _fmt(r["frac_dead"]),
                    _fmt(r["spliced_acc"]),
                    _sci(r.get("delta_ce")),
                    _fmt(r["ce_loss_recovered_zero"]),
                    _fmt(r["ce_loss_recovered_mean"]),
                    _fmt(r["fourier_overlap"]),
                    _fmt(r.get("cosine_to_init")),
                    _fmt(r.get("off_span_live")),
                ]
                + [_mark(v) for v in criteria(r).values()]
            )
            + " |"
        )
    quality = (
        "\n".join(table)
        + "\n\n"
        + (
            "delta CE: the model's loss with the SAE spliced in minus its clean loss, in nats; "
            "CE-loss-recovered saturates near 1.000 whenever the clean loss is near 0 (~1e-7 "
            "after a long weight-decay-1 run; the fast preset's stronger clean-up decay leaves "
            "it near 0.1), so delta CE is the figure to read. Cosine to init: mean cosine of "
            "each decoder row with its initialisation (high: it moved little). Off span: share "
            "of the live decoder rows' squared norm outside the 99.9%-variance span of the "
            "activations (a training-health figure)."
        )
    )
    sections.append(("SAE quality", quality, quality))

    ok_cells = [c for c in cells if c["analysis"].get("stability", {}).get("levels")]
    if ok_cells:
        figs.append(
            (
                "stability",
                rf.stability_heatmaps(ok_cells, figdir / "stability_heatmaps.png"),
                "PW-MCC between seeds (Hungarian-matched decoder cosine of live latents in the "
                "data metric), one panel per SAE cell. Look for off-diagonal values well above "
                "the fitting null in the title: seeds that agree; a uniform block means no seed "
                "stands out.",
            )
        )
        figs.append(
            (
                "stability",
                rf.stability_vs_null(ok_cells, figdir / "stability_vs_null.png"),
                "Stability at each level (bars: mean over seed pairs with its 95% bootstrap CI "
                "over seeds) against its nulls and the shared-init reference (markers). Look for "
                "bars whose CI clears the matched-geometry marker (atoms) or the random-in-span "
                "marker (classes); a bar at the symmetry marker agrees no more than a shifted "
                "copy.",
            )
        )
        figs.append(
            (
                "stability",
                rf.frequency_coverage(ok_cells, figdir / "frequency_coverage.png"),
                "Latents per key frequency, per seed: assigned by decoder weights (> 50% of the "
                "row in that frequency's residual subspace), with activation-pure ones "
                "(purity >= 0.85) in brackets. Look for every key frequency covered in every "
                "seed, with similar counts across seeds.",
            )
        )
    small = len(rows) <= MD_FULL_SAES
    if ok_cells:
        body = stability_table(ok_cells)
        sections.append(("Stability across seeds", body, body))
    if any(c["analysis"].get("ground_truth") for c in ok_cells):
        body = _ground_truth_section(ok_cells)
        sections.append(("Ground truth and what the latents are", body, body))
    # the long per-SAE and per-level tables: folded; in a large study's report.md only named
    sections = [
        (
            t,
            details(f"{t}: the table", md)
            if small
            else f"In report.html and results.csv ({len(rows)} SAEs: too long for this page).",
            details(f"{t}: the table", h),
        )
        if t in FOLDED
        else (t, md, h)
        for t, md, h in sections
    ]
    points = sweep_points(root, rows)
    sweep_lines = headline(points)
    if sweep_lines:  # a grid with at least two widths or sparsities of one architecture
        figs.insert(
            0,
            (
                "sweep",
                rf.sweep(
                    points, {f"p = {cfg.model.p} answer classes": cfg.model.p}, figdir / "sweep.png"
                ),
                "The sweep, one row per hook: stability's effect over chance (PW-MCC minus its "
                "matched-geometry null) and ground-truth atom recovery (Hungarian MCC minus the "
                "better no-learning reference) against width and against L0, explained variance "
                "against L0, and the optimisation gap against width (the oracle's EV minus the "
                "SAEs' at the same width and L0: above 0, a dictionary of the model's features "
                "does better than training finds). Error bars: across model seeds (one "
                "model seed: the 95% CI over SAE seeds). Look for curves that stay above 0 in the "
                "first four panels as width and L0 grow, and a gap panel near 0.",
            ),
        )
        body = details("The sweep's table, one row per cell", sweep_table(points)) + (
            "\n\nRecovery: the ground-truth atoms (answer-class centroids where most of the "
            "hook's variance is a function of the answer, else the single-frequency MLP neurons) "
            "matched by Hungarian MCC in the span, minus the better of two no-learning references "
            "of the same size (random directions in the span, random data points); > 0 means "
            "learned. ReLU cells with a target L0 trained at the penalty weight a search found "
            "for it (metrics.json `calibration`)."
        )
        sections.insert(0, ("Sweep: width and L0", body if small else NAMED, body))
    ocells = oracle_cells(rows)
    if ocells:
        body = details("The oracle's table, one row per cell", oracle_table(ocells))
        sections.insert(
            1 if sweep_lines else 0,
            ("Why the SAEs miss the truth: the oracle", body if small else NAMED, body),
        )
    failed = [r for r in rows if r["status"] != "ok"]
    overall = (
        sweep_lines
        + oracle_verdict(ocells)
        + ([f"{len(failed)} SAE(s) failed; see the SAE quality table."] if failed else [])
    )
    acells = answer_cells(rows)
    full = dict(zip((c["name"] for c in cells), verdict(cells)))
    folded_md, folded_html = [], []
    for c in cells:
        summary = f"{c['name']}: the full reading"
        short = "\n".join(f"- {v}" for v in brief(c))
        if small or c["analysis"].get("stability"):  # a large study: finished cells only
            folded_md.append(details(summary, f"- {full[c['name']]}" if small else short))
        folded_html.append(details(summary, f"- {full[c['name']]}"))
    lead = "\n".join(f"- {v}" for v in overall)
    table = hook_tables(acells) if acells else ""
    said = notes(acells)
    tail = (
        "Cells to read with care: " + " ".join(said)
        if said
        else (
            f"No cell has more than {DEAD_SHARE:.0%} dead latents, and every L0 search that "
            "ran bracketed its target."
        )
    )
    head = "\n\n".join(b for b in (lead, table, tail) if b)
    sections.insert(
        0,
        (
            "Verdict, cell by cell",
            head + "\n\n" + "\n\n".join(folded_md),
            head + "\n\n" + "\n\n".join(folded_html),
        ),
    )

    # the answer first, with the headline figure right under it
    top = None
    if acells:
        top = (
            rf.headline(
                rows, {f"p = {cfg.model.p} answer classes": cfg.model.p}, figdir / "headline.png"
            ),
            HEADLINE_CAPTION,
        )
    names = {p.name for _, p, _ in figs}
    roles = {
        "headline": "headline.png" if top else None,
        "levels": "stability_vs_null.png" if "stability_vs_null.png" in names else None,
        "gap": "sweep.png" if "sweep.png" in names else None,
    }
    ans = answer(rows, {k: v for k, v in roles.items() if v})
    body = answer_markdown(ans, lambda f: f"figures/{f}")
    md_body = body + (f"\n\n![headline](figures/{top[0].name})\n\n*{top[1]}*" if top else "")
    sections.insert(0, ("Answer", md_body, body))

    browser = browsable(root, cfg)
    md = ["# husai study report", ""] + (
        ["Every latent of every seed: [the feature browser](browser.html).", ""] if browser else []
    )
    for title, body, _ in sections:
        md += [f"## {title}", "", body, ""]
    md += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})\n\n*{cap}*\n" for _, p, cap in figs]
    atomic_write_bytes(root / "report.md", "\n".join(md).encode())
    page_html = page(
        [(t, h) for t, _, h in sections], [(p, cap) for _, p, cap in figs], top, browser
    )
    atomic_write_bytes(root / "report.html", page_html.encode())
    return root / "report.html"


def _ground_truth_section(cells: list[dict]) -> str:
    """Each cell's hook ground truth, and per SAE its latent types and recovery next to a random
    dictionary of the same size in the same span (husai.analysis.ground_truth, latent_types,
    recovery)."""
    lines = []
    for c in cells:
        gt = c["analysis"].get("ground_truth")
        if not gt:
            continue
        v, base = gt["variance"], gt["baselines"]
        lines.append(
            f"- {c['name']}: {_fmt(v['answer'])} of the variance is a function of the answer, "
            f"{_fmt(v['a'] + v['b'])} of a or b alone, {_fmt(v['conjugate'])} of "
            f"{gt['variance_names']['conjugate']}, {_fmt(v['rest'])} the rest; the output and "
            f"input planes of the key frequencies {gt['key_frequencies']} span {gt['span']['dim']} "
            f"dimensions holding {_fmt(gt['span']['share'])}; answer-centroid lookup (L0 = 1) EV "
            f"{_fmt(base['centroid_lookup']['explained_variance'])}, PCA EV "
            f"{_fmt(base['pca'].get('4'))} (r = 4) / {_fmt(base['pca'].get('16'))} (r = 16)."
        )
    head = [
        "cell",
        "SAE",
        "plane feature",
        "answer detector",
        "input feature",
        "patch",
        "other",
        "off span",
        "centroid MCC (random; data points)",
        "centroid F1 (random)",
        "out-plane coverage (random)",
        "out-plane mass (random; variance)",
    ]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cells:
        for label, f in c["analysis"].get("fourier", {}).items():
            lt, rec = f.get("latent_types"), f.get("recovery")
            if not lt or not rec:
                continue
            cent = rec["atoms"]["answer_centroids"]
            outs = [e for name, e in rec["planes"].items() if name.startswith("out")]
            mean = lambda key, ref=False: (
                sum((e["random_reference"] if ref else e)[key] for e in outs) / len(outs)
                if outs
                else None
            )
            rows.append(
                "| "
                + " | ".join(
                    [
                        c["name"],
                        label,
                        *(str(n) for n in lt["counts"].values()),
                        _fmt(lt["mean"]["off_span"]),
                        f"{_fmt(cent['mcc'])} ({_fmt(cent['random_reference']['mcc'])}; "
                        f"{_fmt((cent.get('data_point_reference') or {}).get('mcc'))})",
                        f"{_fmt(cent['f1'])} ({_fmt(cent['random_reference']['f1'])})",
                        f"{_fmt(mean('coverage'))} ({_fmt(mean('coverage', True))})",
                        f"{_fmt(sum(e['mass'] for e in outs))} "
                        f"({_fmt(sum(e['random_reference']['mass'] for e in outs))}; "
                        f"{_fmt(sum(e['variance_share'] for e in outs))})",
                    ]
                )
                + " |"
            )
    plane_names = next(
        (
            list(f["recovery"]["planes"])
            for c in cells
            for f in c["analysis"].get("fourier", {}).values()
            if f.get("recovery")
        ),
        [],
    )
    per_plane = [
        "| cell | SAE | " + " | ".join(plane_names) + " |",
        "|" + "---|" * (len(plane_names) + 2),
    ]
    for c in cells:
        for label, f in c["analysis"].get("fourier", {}).items():
            planes = (f.get("recovery") or {}).get("planes", {})
            if planes:
                per_plane.append(
                    f"| {c['name']} | {label} | "
                    + " | ".join(
                        f"{_fmt(planes[n]['coverage'], 2)} "
                        f"({_fmt(planes[n]['random_reference']['coverage'], 2)})"
                        if n in planes
                        else "-"
                        for n in plane_names
                    )
                    + " |"
                )
    lines += [
        "",
        "\n".join(rows),
        "",
        "Coverage of each plane (random reference in brackets):",
        "",
        "\n".join(per_plane),
        "",
        "Types by the rules of husai.analysis.latent_types (a function of the answer with its "
        "decoder in one output plane: plane feature; near one answer-class centroid: answer "
        "detector; f(a) + g(b): input feature; firing on under 5% of inputs: patch). MCC: "
        "Hungarian-matched cosine of in-span decoder rows to the answer-class centroids; coverage: "
        "how fully the latents lying mostly in each output plane fill it (1: they span it, 1/2: "
        "they lie on one line); mass: share of the dictionary in the output planes, with the "
        "planes' share of the variance after the semicolon. In brackets: a dictionary of as many "
        "random directions in the same span, and (MCC) one of as many random centred data points, "
        "what a data-initialised SAE starts from. The original criterion 'Fourier overlap > 0.5' "
        "cannot be met by sparse latents: a latent that fires on part of a phase cycle spreads its "
        "variance over harmonics (a perfect one-answer detector scores 2/(p - 1), 0.018 at "
        "p = 113).",
    ]
    return "\n".join(lines)
