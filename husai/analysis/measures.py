"""The seed-agreement measures and their nulls, each declared once.

A Measure names one agreement figure (its key in analysis.json and results.csv, its level, its
report label and the chance null it is read against); a Null says what agreement above it rules out,
how it is drawn (the draw itself: a function of one seed pair and that pair's generator) and how the
figures mark it. husai.analysis.agreement computes every declared measure against every declared
null; the report, the figures, the results table and `husai compare` list them from here, so a
registered null appears in all of them (docs/methods.md, "Seed agreement", says what each one
means).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from husai.analysis.data_span import shift_map, shift_permutation
from husai.analysis.nulls import isotropic_dictionary, matched_geometry_dictionary
from husai.analysis.stability import unit

PAIR_LEVELS = ("atoms", "activations")
"""Levels computed from the two SAEs' rows and codes (husai.analysis.agreement.pair_agreement)."""
TRUTH_LEVELS = ("planes", "classes")
"""Levels computed from the two SAEs' ground-truth profiles (agreement.ground_truth_agreement)."""


@dataclass(frozen=True)
class Measure:
    name: str
    """Key in analysis.json (stability.levels / ground_truth) and column prefix in results.csv."""
    level: str
    """atoms, activations, planes or classes."""
    label: str
    """The report's name for it."""
    short: str
    """`husai compare`'s column name."""
    fitting: tuple[str, ...] = ()
    """The chance null(s) its effect is read against (the pairwise max of these); () =
    descriptive."""


@dataclass
class Draw:
    """One null draw for one seed pair: A and B are seed views (husai.analysis.agreement.SeedView),
    or [n, r] unit dictionaries (compared with encoder = decoder, no activation level); fit: a
    quality figure of the draw, averaged into analysis.json as `<null>_fit`."""

    A: object
    B: object
    fit: float | None = None


@dataclass(frozen=True)
class Null:
    name: str
    label: str
    controls_for: str
    """What agreement above this null rules out (the report's legend: "above it rules out ...")."""
    drawn: str
    """How it is drawn (one sentence, the report's legend)."""
    marker: str
    color: str
    """Matplotlib style of its markers in the figures."""
    pair: Callable[[dict, torch.Generator], Draw | None] | None = None
    """Draw for the atom and activation levels: ctx {A, B (the pair's SeedViews), r (span dim), grid
    (Y [p^2, r], p) or None}, gen -> Draw, or None where it cannot be drawn for this pair."""
    truth: Callable[[dict, torch.Generator], Draw | None] | None = None
    """Draw for the ground-truth levels: ctx {A, B (the pair's profiles), sizes, profile (dictionary
    [n, d_in] -> profile), span, p, operation}, gen -> Draw of two profiles, or None."""
    truth_measures: tuple[str, ...] | None = None
    """The ground-truth measures it is read for (None: all)."""


MEASURES: dict[str, Measure] = {}
NULLS: dict[str, Null] = {}


def register_measure(m: Measure) -> Measure:
    MEASURES[m.name] = m
    return m


def register_null(n: Null) -> Null:
    """Add a null (in the order the draws consume each pair's generator: a new one goes last, so
    the others keep their values)."""
    NULLS[n.name] = n
    return n


def unregister_null(name: str) -> None:
    NULLS.pop(name, None)


def measures(*levels: str) -> list[str]:
    """Names of the measures at these levels (all levels when none given), in declaration order."""
    return [m.name for m in MEASURES.values() if not levels or m.level in levels]


def fitting(name: str) -> tuple[str, ...]:
    return MEASURES[name].fitting if name in MEASURES else ()


def nulls_for(name: str) -> list[str]:
    """The nulls drawn for measure `name`."""
    level = MEASURES[name].level
    if level in PAIR_LEVELS:
        return [n.name for n in NULLS.values() if n.pair is not None]
    return [
        n.name
        for n in NULLS.values()
        if n.truth is not None and (n.truth_measures is None or name in n.truth_measures)
    ]


# ---------------------------------------------------------------- the measures
# (in results.csv's column order)

for _m in (
    Measure("pw_mcc_dec", "atoms", "PW-MCC", "PW-MCC dec", ("matched_geometry",)),
    Measure("pw_mcc_enc", "atoms", "PW-MCC (encoder)", "PW-MCC enc", ("matched_geometry",)),
    Measure(
        "mean_max_abs_cos_dec",
        "atoms",
        "mean-max |cos| (public HUSAI 'PWMCC')",
        "max|cos| dec*",
        ("matched_geometry",),
    ),
    Measure("shared_fraction", "atoms", "shared fraction", "shared", ("matched_geometry",)),
    Measure("reappearance", "atoms", "reappearance", "reappearance", ("matched_geometry",)),
    Measure("act_mcc", "activations", "matched activation correlation", "activation MCC"),
    Measure(
        "act_reappearance", "activations", "activation reappearance", "activation reappearance"
    ),
    Measure("plane_coverage_agreement", "planes", "plane coverage agreement", "plane coverage"),
    Measure("mass_agreement", "planes", "plane mass agreement", "plane mass"),
    Measure(
        "class_jaccard", "classes", "answer-class Jaccard", "answer classes", ("random_in_span",)
    ),
):
    register_measure(_m)


# ---------------------------------------------------------------- the nulls

SYMMETRY_FIT = 0.9
"""The symmetry null needs the shift to be (nearly) an isometry of the representation: it is drawn
only where the Procrustes map explains >= 90% of the shifted activations' variance (R^2; the grokked
model's resid_post: ~0.97, measured; a random representation: ~0)."""


def _isotropic(ctx: dict, gen: torch.Generator) -> Draw:
    return Draw(
        isotropic_dictionary(ctx["A"].n, ctx["r"], gen),
        isotropic_dictionary(ctx["B"].n, ctx["r"], gen),
    )


def _matched_geometry(ctx: dict, gen: torch.Generator) -> Draw:
    return Draw(
        matched_geometry_dictionary(ctx["A"].dec, gen),
        matched_geometry_dictionary(ctx["B"].dec, gen),
    )


def _symmetry(ctx: dict, gen: torch.Generator) -> Draw | None:
    """Seed B's SAE moved by the shift t (shifted_view), with the orthogonal Procrustes map of the
    shift (husai.analysis.data_span.shift_map)."""
    if ctx["grid"] is None:
        return None
    Y, p = ctx["grid"]
    t = int(torch.randint(1, p, (1,), generator=gen))
    M = shift_map(Y, p, t)
    Ys = Y[shift_permutation(p, t)]
    fit = float(1 - (Ys - Y @ M).pow(2).sum() / Ys.pow(2).sum())
    if fit < SYMMETRY_FIT:
        return Draw(None, None, fit)
    return Draw(ctx["A"], shifted_view(ctx["B"], M, p, t), fit)


def shifted_view(view, M: torch.Tensor, p: int, t: int):
    """A SeedView's SAE moved by the shift t: decoder and encoder rows times the orthogonal M [r, r]
    (span coordinates), codes z(a - t, b - t)."""
    codes = view.codes[shift_permutation(p, -t)] if view.codes is not None else None
    return replace(view, dec=unit(view.dec @ M), enc=unit(view.enc @ M), codes=codes)


def _random_in_span(ctx: dict, gen: torch.Generator) -> Draw:
    S = ctx["span"]
    return Draw(
        *[
            ctx["profile"](torch.randn(n, S.shape[1], generator=gen, dtype=torch.float64) @ S.T)
            for n in ctx["sizes"]
        ]
    )


def _class_symmetry(ctx: dict, gen: torch.Generator) -> Draw | None:
    """(a + b) mod p only: a shift by t moves answer class c to c + 2t."""
    if ctx["operation"] != "add":
        return None
    p = ctx["p"]
    t = int(torch.randint(1, p, (1,), generator=gen))
    return Draw(ctx["A"], dict(ctx["B"], classes={(c + 2 * t) % p for c in ctx["B"]["classes"]}))


for _n in (
    Null(
        "isotropic",
        "isotropic",
        controls_for="random directions (the naive null, blind to the data's low rank)",
        drawn="random unit directions in the data span, as many as each seed has live latents",
        marker="x",
        color="tab:gray",
        pair=_isotropic,
    ),
    Null(
        "matched_geometry",
        "matched geometry",
        controls_for="the chance agreement of any dictionary spread over the space as this one is",
        drawn="Gaussian atoms with each seed's own second moment in the span",
        marker="^",
        color="tab:purple",
        pair=_matched_geometry,
    ),
    Null(
        "random_in_span",
        "random in span",
        controls_for="the answer classes any random dictionary of this size covers",
        drawn="two random dictionaries of the seeds' sizes in the ground truth's span",
        marker="v",
        color="tab:brown",
        truth=_random_in_span,
    ),
    Null(
        "symmetry",
        "symmetry",
        controls_for="agreement on the planes alone (above it the seeds agree on phase: which "
        "latents exist)",
        drawn="one seed's SAE moved by the shift (a, b) -> (a + t, b + t), an equally good SAE at "
        "another phase",
        marker="s",
        color="tab:orange",
        pair=_symmetry,
        truth=_class_symmetry,
        truth_measures=("class_jaccard",),
    ),
):
    register_null(_n)
