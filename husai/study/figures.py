"""Matplotlib figures of the study report. Each returns the PNG path it wrote (atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from husai.analysis.measures import NULLS  # noqa: E402
from husai.io import atomic_write_bytes  # noqa: E402
from husai.sae.family import families  # noqa: E402

SHARED_INIT_STYLE = (
    "o",
    "tab:red",
)  # the shared-init reference's markers (the nulls': husai.analysis.measures)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


PHASES = (
    ("memorisation", "tab:purple"),
    ("circuit formation / generalisation", "tab:orange"),
    ("clean-up", "tab:green"),
)
"""The grokking phases shaded in the training figure (Nanda et al. 2023, section 5), bounded by the
epochs train-model records (docs/methods.md, "Grokking phases"): memorisation up to the memorised
evaluation (train accuracy >= 0.99, test < 0.9), circuit formation and generalisation up to
`grokked_epoch` (test accuracy >= 0.99), clean-up up to `clean_epoch` (test accuracy >= 0.999 and
>= 80% single-frequency neurons)."""


def phase_spans(
    memorised: int | None, grokked: int | None, clean: int | None, last: int | None
) -> list[tuple[str, str, float, float]]:
    """(phase, colour, start, end) of each phase whose bounds were recorded (PHASES)."""
    out, start = [], 0
    for (name, color), end in zip(PHASES, (memorised, grokked, clean)):
        if end is None or start is None:
            break
        if end > start:
            out.append((name, color, start, end))
        start = end
    return out


def training_curves(
    history: list[dict],
    grokked: int | None,
    clean: int | None,
    path: Path,
    progress: list[dict] | None = None,
    memorised: int | None = None,
) -> Path:
    """The grokking story as curves: loss; accuracy with the single-frequency neuron share; and
    (with weight snapshots) Nanda et al.'s progress measures, each with the three phases shaded
    (memorisation, circuit formation and generalisation, clean-up: PHASES)."""
    ep = [r["epoch"] for r in history]
    dense = len(ep) > 40  # dense evaluations: curves; sparse ones: marked points
    mk = dict(marker=None if dense else ".", lw=1.4)
    n = 3 if progress else 2
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 3.9))
    ax1, ax2 = axes[0], axes[1]
    ax1.semilogy(ep, [r["train_loss"] for r in history], label="train loss", **mk)
    ax1.semilogy(ep, [r["test_loss"] for r in history], label="test loss", **mk)
    ax1.set(xlabel="epoch", ylabel="cross-entropy (nats, log scale)", title="Loss")
    ax2.plot(ep, [r["train_acc"] for r in history], label="train accuracy", **mk)
    ax2.plot(ep, [r["test_acc"] for r in history], label="test accuracy", **mk)
    ax2.plot(
        ep,
        [r["frac_neurons_single_freq"] for r in history],
        label="single-frequency neurons",
        ls="--",
        **mk,
    )
    ax2.set(
        xlabel="epoch",
        ylabel="fraction",
        title="Accuracy and single-frequency share",
        ylim=(-0.02, 1.02),
    )
    if progress:
        ax3 = axes[2]
        pe = [r["epoch"] for r in progress]
        pm = dict(marker=None if len(pe) > 40 else ".", lw=1.4)
        ax3.semilogy(
            pe,
            [r["restricted_loss"] for r in progress],
            label="restricted loss (key frequencies only)",
            **pm,
        )
        ax3.semilogy(
            pe,
            [r["excluded_loss"] for r in progress],
            label="excluded loss (key freqs removed)",
            **pm,
        )
        ax3.semilogy(
            pe,
            [r["test_loss"] for r in progress],
            ls=":",
            color="tab:gray",
            label="test loss",
            **pm,
        )
        ax3.set(
            xlabel="epoch",
            ylabel="cross-entropy (nats, log scale)",
            title="Progress measures (final key frequencies)",
        )
    spans = phase_spans(memorised, grokked, clean, ep[-1] if ep else None)
    for i, ax in enumerate(axes):
        for name, color, a, b in spans:
            ax.axvspan(a, b, color=color, alpha=0.12, lw=0, label=name if i == 0 else None)
        ax.set_xlim(0, max(ep) if ep else None)
        ax.legend(fontsize=7)
    return _save(fig, path)


def fourier_spectrum(m: dict, path: Path) -> Path:
    keys = set(m.get("key_frequencies", []))
    emb, share = m.get("embed_spectrum", []), m.get("frequency_variance_share", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, vals, ylabel, title in (
        (ax1, emb, "norm of W_E along frequency", "Embedding Fourier norms"),
        (ax2, share, "share of MLP variance", "MLP neuron variance by frequency"),
    ):
        k = np.arange(1, len(vals) + 1)
        ax.bar(k, vals, color=["tab:red" if i in keys else "tab:blue" for i in k])
        ax.set(xlabel="frequency k (cycles per p)", ylabel=ylabel, title=title)
    from matplotlib.patches import Patch

    ax2.legend(
        handles=[
            Patch(color="tab:red", label=f"key frequencies {sorted(keys)}"),
            Patch(color="tab:blue", label="other frequencies"),
        ],
        fontsize=8,
    )
    return _save(fig, path)


def _short(c: dict) -> str:
    """'topk_n64_k8 @ blocks.0.hook_resid_post (model seed 0)' -> 'topk_n64_k8 @ hook_resid_post,
    m0'."""
    return c["name"].replace("blocks.0.", "").replace(" (model seed ", ", m").rstrip(")")


def _panels(n: int, width: float, height: float, cols: int = 4):
    """n panels in rows of at most `cols` (a sweep has tens of cells: one row was 14,000 px
    wide)."""
    ncols, nrows = min(n, cols), -(-n // cols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(width * ncols, height * nrows),
        squeeze=False,
        gridspec_kw={"wspace": 0.45, "hspace": 0.6},
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def stability_heatmaps(cells: list[dict], path: Path) -> Path:
    fig, axes = _panels(len(cells), 5.2, 3.8)
    for ax, c in zip(axes, cells):
        a = c["analysis"]["stability"]["levels"]["pw_mcc_dec"]
        M = np.array([[1.0 if v is None else v for v in r] for r in a["matrix"]], dtype=float)
        labels = [s["label"] for s in c["analysis"].get("saes", [])] or [
            str(i) for i in range(len(M))
        ]
        im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(M)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(M)), labels, fontsize=7)
        for i in range(len(M)):
            for j in range(len(M)):
                ax.text(
                    j,
                    i,
                    f"{M[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=6,
                    color="w" if M[i, j] < 0.6 else "k",
                )
        null = a.get("fitting", {}).get("value")
        ax.set_title(
            f"{_short(c)}\nPW-MCC, data metric (fitting null {null:.2f})"
            if null is not None
            else _short(c),
            fontsize=9,
        )
        fig.colorbar(im, ax=ax, fraction=0.046, label="PW-MCC")
    return _save(fig, path)


def stability_vs_null(cells: list[dict], path: Path) -> Path:
    """Per cell, each stability level's value with its 95% CI over seeds (bars) and its nulls and
    the shared-init reference (markers)."""
    metrics = (
        ("pw_mcc_dec", "atoms: PW-MCC (decoder)"),
        ("shared_fraction", "atoms: shared fraction"),
        ("act_mcc", "activations: matched correlation"),
        ("class_jaccard", "answer classes: Jaccard"),
    )
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.8))
    x = np.arange(len(cells))
    for ax, (m, title) in zip(axes, metrics):
        st = [c["analysis"].get("stability", {}) for c in cells]
        vals = [dict(s.get("levels", {}), **s.get("ground_truth", {})).get(m, {}) for s in st]
        v = [r.get("value") or 0 for r in vals]
        err = np.array(
            [
                [max(0.0, y - r["ci"][0]), max(0.0, r["ci"][1] - y)] if r.get("ci") else [0, 0]
                for y, r in zip(v, vals)
            ]
        ).T
        ax.bar(
            x, v, yerr=err, color="tab:blue", alpha=0.8, capsize=4, label="trained SAEs (95% CI)"
        )
        marks = [
            (
                f"{n.label} null",
                n.marker,
                n.color,
                [r.get("nulls", {}).get(n.name, {}).get("value") for r in vals],
            )
            for n in NULLS.values()
        ]
        marks.append(
            (
                "shared-init reference",
                *SHARED_INIT_STYLE,
                [
                    s.get("references", {}).get("shared_init", {}).get(m, {}).get("value")
                    for s in st
                ],
            )
        )
        for label, marker, color, ys in marks:
            pts = [(xi, y) for xi, y in zip(x, ys) if y is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=color, zorder=3, s=50, label=label)
        ax.set_xticks(x, [_short(c) for c in cells], rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="score", title=title, ylim=(0, 1.05))
        ax.legend(fontsize=6)
    return _save(fig, path)


def frequency_coverage(cells: list[dict], path: Path) -> Path:
    """Per seed and key frequency: latents assigned to that frequency by their decoder weights
    (> 50% of the row in the frequency's residual subspace), and in brackets those pure by
    activation."""
    fig, axes = _panels(len(cells), 5.2, 3.6)
    for ax, c in zip(axes, cells):
        an = c["analysis"]
        keys = an.get("key_frequencies", [])
        labels = [s["label"] for s in an.get("saes", [])]
        fr = an.get("fourier", {})

        def count(l, k, what):
            if what == "pure":
                return float((fr.get(l, {}).get("pure_per_frequency") or {}).get(str(k), 0))
            per = (fr.get(l, {}).get("weight_space") or {}).get("per_frequency", {}).get(str(k), {})
            return float(per.get("n_weight_assigned") or 0)

        W = (
            np.array([[count(l, k, "weights") for k in keys] for l in labels])
            if keys and labels
            else np.zeros((1, 1))
        )
        P = (
            np.array([[count(l, k, "pure") for k in keys] for l in labels])
            if keys and labels
            else np.zeros((1, 1))
        )
        im = ax.imshow(W, cmap="viridis", aspect="auto", vmin=0, vmax=max(1.0, float(W.max())))
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{W[i, j]:.0f} ({P[i, j]:.0f})",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w" if W[i, j] < 0.6 * max(1.0, W.max()) else "k",
                )
        ax.set_xticks(range(len(keys)), [str(k) for k in keys])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set(xlabel="key frequency k", title=_short(c))
        fig.colorbar(im, ax=ax, fraction=0.046, label="latents assigned by decoder weights")
    return _save(fig, path)


def sweep(points: list[dict], marks: dict[str, float], path: Path) -> Path:
    """One row per hook: stability's effect over chance and the ground-truth recovery against width
    (one line per architecture and sparsity) and against L0 (one line per architecture and width),
    the EV-vs-L0 frontier, and the optimisation gap against width (the oracle's EV minus the SAEs'
    at the same width and L0, husai.analysis.optimisation_gap); error bars:
    husai.study.sweep.curves. marks: widths to draw as vertical lines (e.g. the p answer
    classes)."""
    from husai.study.sweep import curves

    hooks = sorted({p["hook"] for p in points})
    panels = (
        ("latents", "stability_effect", "PW-MCC over chance"),
        ("latents", "recovery", "atom recovery over reference"),
        ("l0", "stability_effect", "PW-MCC over chance"),
        ("l0", "recovery", "atom recovery over reference"),
        ("l0", "ev", "explained variance"),
        ("latents", "gap", "optimisation gap (oracle EV - SAE EV)"),
    )
    fig, axes = plt.subplots(
        len(hooks), len(panels), figsize=(4.4 * len(panels), 4.0 * len(hooks)), squeeze=False
    )
    by = {"latents": curves(points, "knob", "latents"), "l0": curves(points, "latents", "l0")}
    for i, hook in enumerate(hooks):
        for j, (x, y, label) in enumerate(panels):
            ax = axes[i][j]
            series = sorted((k for k in by[x] if k[0] == hook), key=str)
            for n, key in enumerate(series):
                c = [r for r in by[x][key] if r[x] is not None and r[y] is not None]
                if not c:
                    continue
                xs, ys = [r[x] for r in c], [r[y] for r in c]
                lo = [r.get(f"{y}_lo") for r in c]
                hi = [r.get(f"{y}_hi") for r in c]
                err = None
                if all(v is not None for v in lo + hi):
                    err = np.array(
                        [
                            [max(0.0, v - a) for v, a in zip(ys, lo)],
                            [max(0.0, b - v) for v, b in zip(ys, hi)],
                        ]
                    )
                name = key[2] if x == "latents" else f"{key[2]:.0f} latents"
                fam = families().get(key[1])
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    marker="o",
                    ms=4,
                    capsize=3,
                    color=fam.color if fam else "k",
                    ls=("-", "--", ":", "-.")[n % 4],
                    label=f"{fam.label if fam else key[1]} {name}",
                )
            ax.set_xscale("log")
            xs_all = sorted(
                {round(r[x], 1) for key in series for r in by[x][key] if r[x] is not None}
            )
            if x == "latents" and xs_all:  # the widths themselves, not 10^k ticks
                ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            if y != "ev":
                ax.axhline(0, color="k", lw=0.6)
            if x == "latents":
                for mark, v in marks.items():
                    ax.axvline(v, color="tab:gray", ls=":", lw=1)
                    ax.text(v, ax.get_ylim()[1], f" {mark}", fontsize=6, va="top", color="tab:gray")
            ax.set(xlabel="latents" if x == "latents" else "L0 (log)", ylabel=label)
            ax.set_title(
                f"{hook.replace('blocks.0.', '')}: {label} vs "
                f"{'width' if x == 'latents' else 'L0'}",
                fontsize=9,
            )
            ax.legend(fontsize=6)
    fig.tight_layout()
    return _save(fig, path)


def headline(rows: list[dict], marks: dict[str, float], path: Path) -> Path:
    """The report's headline figure, one column per hook: top, the seeds' agreement over chance
    (PW-MCC minus its matched-geometry null); bottom, recovery of the model's features (plane
    coverage of the complete truth, with the same rows rotated at random as a faint line and the
    oracle tiling's coverage as a black dashed line; without the oracle, the answer-centroid MCC
    over the better no-learning reference), against width (latents, log axis). One line per
    architecture and sparsity; points and error bars: husai.study.answer.summarise (the mean with
    its 95% CI across model seeds, or across SAE seeds with one model seed)."""
    from collections import defaultdict

    from husai.study.answer import cells, summarise

    cs = cells(rows)
    hooks = sorted({c["hook"] for c in cs})
    plane = any(c["coverage"] is not None for c in cs)
    fig, axes = plt.subplots(
        2, max(1, len(hooks)), figsize=(4.8 * max(1, len(hooks)), 5.6), squeeze=False
    )
    rec_key = "coverage" if plane else "centroid_effect"
    for j, hook in enumerate(hooks):
        series = defaultdict(lambda: defaultdict(list))
        for c in cs:
            if c["hook"] == hook and c["latents"]:
                series[(c["architecture"], c["knob"])][c["latents"]].append(c)
        widths = sorted({w for s in series.values() for w in s})
        for row, key in ((0, "pw_effect"), (1, rec_key)):
            ax = axes[row][j]
            for n, ((arch, kn), by_w) in enumerate(sorted(series.items())):
                pts = [(w, summarise(by_w[w], key)) for w in sorted(by_w)]
                pts = [(w, s) for w, s in pts if s is not None]
                if not pts:
                    continue
                fam = families().get(arch)
                color = fam.color if fam else "k"
                xs, ys = [w for w, _ in pts], [s[0] for _, s in pts]
                err = np.array(
                    [
                        [max(0.0, s[0] - s[1]) for _, s in pts],
                        [max(0.0, s[2] - s[0]) for _, s in pts],
                    ]
                )
                ax.errorbar(
                    xs,
                    ys,
                    yerr=err,
                    marker="o",
                    ms=4,
                    capsize=3,
                    color=color,
                    ls=("-", "--", ":", "-.")[n % 4],
                    label=f"{fam.label if fam else arch} {kn}",
                )
                if row == 1 and plane:
                    ref = [
                        (
                            w,
                            np.mean(
                                [
                                    c["coverage_ref"]
                                    for c in by_w[w]
                                    if c["coverage_ref"] is not None
                                ]
                            ),
                        )
                        for w in xs
                        if any(c["coverage_ref"] is not None for c in by_w[w])
                    ]
                    if ref:
                        ax.plot(*zip(*ref), color=color, alpha=0.45, lw=1, ls=":", marker="x")
            if row == 1 and plane:
                orc = [
                    (w, np.mean(v))
                    for w in widths
                    if (
                        v := [
                            c["coverage_oracle"]
                            for s in series.values()
                            for c in s.get(w, [])
                            if c["coverage_oracle"] is not None
                        ]
                    )
                ]
                if orc:
                    ax.plot(
                        *zip(*orc),
                        color="k",
                        ls="--",
                        lw=1.2,
                        marker="_",
                        ms=14,
                        label="oracle tiling",
                    )
                ax.plot(
                    [], [], color="tab:gray", ls=":", marker="x", label="rows rotated at random"
                )
                ax.set_ylim(-0.02, 1.05)
            else:
                ax.axhline(0, color="k", lw=0.8, label="chance" if row == 0 else "reference")
            ax.set_xscale("log")
            if widths:
                ax.set_xticks(widths, [f"{w:g}" for w in widths])
                ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                lo, hi = min(widths), max(widths)
                ax.set_xlim(lo / 1.6, hi * 1.6)
            for mark, v in marks.items():
                if widths and min(widths) / 1.6 < v < max(widths) * 1.6:
                    ax.axvline(v, color="tab:gray", ls=":", lw=1)
                    ax.text(v, ax.get_ylim()[1], f" {mark}", fontsize=6, va="top", color="tab:gray")
            ax.set_xlabel("latents (log)")
            ax.set_ylabel(
                "PW-MCC - matched-geometry null"
                if row == 0
                else ("plane coverage" if plane else "centroid MCC - reference")
            )
            ax.set_title(
                f"{hook.replace('blocks.0.', '')}: "
                + ("do seeds agree? (over chance)" if row == 0 else "the model's features?"),
                fontsize=10,
            )
            ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
