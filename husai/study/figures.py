"""Matplotlib figures of the study report. Each returns the PNG path it wrote (atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from husai.io import atomic_write_bytes  # noqa: E402

NULL_STYLE = {"isotropic": ("x", "tab:gray"), "activation": ("^", "tab:purple"), "subspace": ("s", "tab:orange"),
              "untrained": ("o", "tab:red")}


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def training_curves(history: list[dict], grokked: int | None, clean: int | None, path: Path) -> Path:
    ep = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    ax1.semilogy(ep, [r["train_loss"] for r in history], label="train loss")
    ax1.semilogy(ep, [r["test_loss"] for r in history], label="test loss")
    ax1.set(xlabel="epoch", ylabel="cross-entropy (nats, log scale)", title="Loss")
    ax2.plot(ep, [r["train_acc"] for r in history], label="train accuracy")
    ax2.plot(ep, [r["test_acc"] for r in history], label="test accuracy")
    ax2.plot(ep, [r["frac_neurons_single_freq"] for r in history], label="single-frequency neurons", ls="--")
    ax2.set(xlabel="epoch", ylabel="fraction", title="Accuracy and circuit clean-up", ylim=(-0.02, 1.02))
    for ax in (ax1, ax2):
        if grokked:
            ax.axvline(grokked, color="k", ls=":", label=f"grokked (epoch {grokked})")
        if clean:
            ax.axvline(clean, color="tab:green", ls=":", label=f"clean (epoch {clean})")
        ax.legend(fontsize=8)
    return _save(fig, path)


def fourier_spectrum(m: dict, path: Path) -> Path:
    keys = set(m.get("key_frequencies", []))
    emb, share = m.get("embed_spectrum", []), m.get("frequency_variance_share", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    for ax, vals, ylabel, title in ((ax1, emb, "norm of W_E along frequency", "Embedding Fourier norms"),
                                    (ax2, share, "share of MLP variance", "MLP neuron variance by frequency")):
        k = np.arange(1, len(vals) + 1)
        ax.bar(k, vals, color=["tab:red" if i in keys else "tab:blue" for i in k])
        ax.set(xlabel="frequency k (cycles per p)", ylabel=ylabel, title=title)
    from matplotlib.patches import Patch

    ax2.legend(handles=[Patch(color="tab:red", label=f"key frequencies {sorted(keys)}"),
                        Patch(color="tab:blue", label="other frequencies")], fontsize=8)
    return _save(fig, path)


def stability_heatmaps(cells: list[dict], path: Path) -> Path:
    n = len(cells)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.8), squeeze=False, gridspec_kw={"wspace": 0.45})
    for ax, c in zip(axes[0], cells):
        a = c["analysis"]["atom_level"]["pw_mcc_dec"]
        M = np.array(a["matrix"], dtype=float)
        labels = [s["label"] for s in c["analysis"].get("saes", [])] or [str(i) for i in range(len(M))]
        im = ax.imshow(M, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(M)), labels, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(M)), labels, fontsize=7)
        for i in range(len(M)):
            for j in range(len(M)):
                ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="w" if M[i, j] < 0.6 else "k")
        iso = a.get("nulls", {}).get("isotropic", {}).get("null_mean")
        ax.set_title(f"{c['name'].split(' @')[0]}\nPW-MCC (isotropic null {iso:.2f})" if iso is not None
                     else c["name"].split(" @")[0], fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, label="PW-MCC")
    return _save(fig, path)


def stability_vs_null(cells: list[dict], path: Path) -> Path:
    metrics = (("pw_mcc_dec", "PW-MCC (decoder)"), ("shared_fraction", "shared fraction (enc & dec cos > thr)"))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = np.arange(len(cells))
    for ax, (m, title) in zip(axes, metrics):
        vals = [c["analysis"]["atom_level"].get(m, {}) for c in cells]
        ax.bar(x, [v.get("mean") or 0 for v in vals], yerr=[v.get("std") or 0 for v in vals], color="tab:blue",
               alpha=0.8, capsize=4, label="trained SAEs")
        for kind, (marker, color) in NULL_STYLE.items():
            ys = [v.get("nulls", {}).get(kind, {}).get("null_mean") for v in vals]
            pts = [(xi, y) for xi, y in zip(x, ys) if y is not None]
            if pts:
                ax.scatter(*zip(*pts), marker=marker, color=color, zorder=3, s=50, label=f"{kind} null")
        ax.set_xticks(x, [c["name"].split(" @")[0] for c in cells], rotation=20, ha="right", fontsize=8)
        ax.set(ylabel="score (0-1)", title=title, ylim=(0, 1.05))
        ax.legend(fontsize=7)
    return _save(fig, path)


def frequency_coverage(cells: list[dict], path: Path) -> Path:
    """Per seed and key frequency: latents assigned to that frequency by their decoder weights (> 50%
    of the row in the frequency's residual subspace), and in brackets those pure by activation."""
    n = len(cells)
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 3.6), squeeze=False, gridspec_kw={"wspace": 0.45})
    for ax, c in zip(axes[0], cells):
        an = c["analysis"]
        keys = an.get("key_frequencies", [])
        labels = [s["label"] for s in an.get("saes", [])]
        fr = an.get("fourier", {})

        def count(l, k, what):
            if what == "pure":
                return float((fr.get(l, {}).get("pure_per_frequency") or {}).get(str(k), 0))
            per = (fr.get(l, {}).get("weight_space") or {}).get("per_frequency", {}).get(str(k), {})
            return float(per.get("n_weight_assigned") or 0)
        W = np.array([[count(l, k, "weights") for k in keys] for l in labels]) if keys and labels else np.zeros((1, 1))
        P = np.array([[count(l, k, "pure") for k in keys] for l in labels]) if keys and labels else np.zeros((1, 1))
        im = ax.imshow(W, cmap="viridis", aspect="auto", vmin=0, vmax=max(1.0, float(W.max())))
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                ax.text(j, i, f"{W[i, j]:.0f} ({P[i, j]:.0f})", ha="center", va="center", fontsize=7,
                        color="w" if W[i, j] < 0.6 * max(1.0, W.max()) else "k")
        ax.set_xticks(range(len(keys)), [str(k) for k in keys])
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
        ax.set(xlabel="key frequency k", title=c["name"].split(" @")[0])
        fig.colorbar(im, ax=ax, fraction=0.046, label="latents assigned by decoder weights")
    return _save(fig, path)
