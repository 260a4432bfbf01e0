"""Why a cell's SAEs miss the true features: the oracle (husai.analysis.oracle) at the cell's width
and L0 against the trained SAEs, and the cell's own recipe started at the oracle.

Per SAE seed s, the oracle of seed s (a circle tiling with its own phases) is coded as well as
possible with at most k atoms an input (k: the cell's k, or the trained SAEs' mean L0 rounded for
the L1 families), and the optimisation gap is

    gap_s = EV(oracle_s) - EV(SAE_s)        (both over all p^2 inputs, EV centred)

with its mean and 95% t-interval over seeds. At mlp.hook_post, whose coordinates are the model's
neurons, the neurons of largest variance as one-hot atoms are a second oracle, and each seed's
oracle is the better of the two. The reading, by stated rules (`reading`):

    optimisation   the interval lies above 0: a dictionary of the model's features reconstructs
                   better at this width and L0, and training does not find it (flagged when the
                   training had not converged: `convergence`)
    objective      the interval lies below 0: the SAE loss prefers what the SAEs learned
    neither        the interval holds 0 (or one seed: no interval)

Started at the truth: the cell's recipe (its config, the penalty weight its L0 search found) trained
from decoder = the tiling (its atoms in the first rows, the other rows at the usual init), encoder =
its transpose, b_dec = the data mean (for ReLU and JumpReLU also b_enc, so that each atom fires on
its arc: `truth_start`), for the cell's seeds, each with its own tiling. It says whether the
truth is near a minimum of the SAE loss (rows stay near their atoms, EV at least the standard
init's) and so whether the standard init is what loses it.

With the family's encoder: the tiling as a frozen decoder and the cell's own encoder trained on it
by the cell's recipe. The best code's EV minus this one's is the amortisation gap (O'Neill et al.
2024, "Compute optimal inference and provable amortisation gap in sparse autoencoders"): what the
one-layer encoder loses in choosing atoms, apart from the dictionary.

Near the truth: the share of a dictionary's live rows within cosine NEAR of an atom of the seed's
tiling, for the trained SAEs and the started runs alike.

Plane recovery (husai.analysis.plane_recovery), for the trained SAEs and the started runs alike:
per circle of the truth, the live rows lying in its plane, how much of the plane they cover and how
evenly they tile its phase, next to the seed's tiling (the ceiling) and the SAE's rows rotated at
random inside the data span (the reference).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from husai.analysis.data_span import data_span
from husai.analysis.ground_truth import group_grid, on_grid
from husai.analysis.oracle import complete_truth, neuron_atoms, score, tiling, truth_circles
from husai.analysis.plane_recovery import plane_recovery
from husai.timing import stage

CONVERGED = 0.001
"""Training had converged when the last epoch raised the training EV by less than 0.001 (mean over
seeds). An optimisation reading of SAEs still improving says first that they are under-trained: on
the default study's reference cells a longer, faster recipe (lr 1e-2, 30 epochs) reaches or passes
the oracle's EV (BENCHMARKS.md, "Oracle dictionaries")."""

NEAR = 0.9
"""A decoder row is near the truth when its cosine to some atom of the tiling is >= 0.9."""


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its 95% t-interval; lo = hi = mean for a single value."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def gap_stats(oracle_ev: list[float], sae_ev: list[float]) -> dict:
    """Per-seed gaps (paired by seed) and their mean with its 95% t-interval."""
    gaps = [o - s for o, s in zip(oracle_ev, sae_ev)]
    mean, lo, hi = t_interval(gaps)
    return dict(per_seed=gaps, mean=mean, ci=[lo, hi])


def reading(gap: dict) -> str:
    """The module docstring's rules on gap_stats' output."""
    lo, hi = gap["ci"]
    if len(gap["per_seed"]) < 2:
        return "neither"
    return "optimisation" if lo > 0 else "objective" if hi < 0 else "neither"


def convergence(history: list[dict] | None, rule: bool | None = None) -> dict | None:
    """{last_epoch_ev_gain, converged}: the mean over seeds of the training EV's rise in the last
    epoch, and whether training converged: the training's own rule where it ran one (rule:
    metrics.json's `converged`, SAETrainConfig.converge_ev), else whether that rise is below
    CONVERGED. None without two epochs of history."""
    if not history or len(history) < 2:
        return None
    last, before = history[-1]["ev"], history[-2]["ev"]
    gain = sum(a - b for a, b in zip(last, before)) / len(last)
    return dict(last_epoch_ev_gain=gain, converged=gain < CONVERGED if rule is None else rule)


def near_truth(W_dec: torch.Tensor, atoms: torch.Tensor, live: torch.Tensor | None = None) -> float:
    """Share of the (live) rows of W_dec [d_sae, d] within cosine NEAR of a row of atoms [m, d]
    (unit)."""
    W = W_dec.double()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    best = (W @ atoms.double().T).max(1).values
    if live is not None:
        best = best[live]
    return float((best >= NEAR).double().mean()) if best.numel() else float("nan")


def cell_oracle(
    acts: torch.Tensor,
    p: int,
    operation: str,
    key_freqs: list[int],
    cfg,
    seeds: list[int],
    d_sae: int,
    sae_ev: list[float],
    sae_l0: list[float],
    saes: dict | None = None,
    started: bool = True,
    encoder: bool = True,
    neurons: bool = False,
    history: list[dict] | None = None,
    converged: bool | None = None,
) -> dict:
    """The oracle reading of one cell. acts [p^2, d] the hook's activations; cfg the cell's
    SAETrainConfig (with the penalty weight its L0 search found); sae_ev, sae_l0 per seed; saes
    {seed: loaded SAE} for the near-truth share of the trained rows; neurons: the hook's coordinates
    are the model's neurons (mlp.hook_post), whose top-variance one-hot atoms are a second oracle;
    history, converged: the training's epoch rows and its rule's verdict (metrics.json), for
    `convergence`. -> JSON-ready dict (module
    docstring)."""
    grid = group_grid(p, operation)
    X = on_grid(acts, grid)  # centred, float64, grid order
    circles = truth_circles(X, grid, key_freqs)
    fixed = cfg.family.fixed_l0()  # TopK's k; a penalised family's L0 is what training found
    k = int(fixed) if fixed is not None else max(1, round(sum(sae_l0) / len(sae_l0)))
    tiled = [tiling(circles, d_sae, seed) for seed in seeds]
    tilings = [D for D, _ in tiled]
    with stage("oracle_score"):
        circle_scores = [dict(score(X, D, k), source="circles") for D in tilings]
    per = circle_scores
    out = dict(
        k=k, width=d_sae, truth=complete_truth(X, circles), circles=[c.name for c in circles]
    )
    if neurons:  # the model's own basis is a second oracle; the better one per seed is the ceiling
        with stage("oracle_score"):
            out["neurons"] = dict(score(X, neuron_atoms(X, d_sae), k), source="neurons")
        per = [max(s, out["neurons"], key=lambda o: o["explained_variance"]) for s in circle_scores]
    gap = gap_stats([s["explained_variance"] for s in per], sae_ev)
    out.update(
        oracle=dict(
            per_seed=per,
            explained_variance=sum(s["explained_variance"] for s in per) / len(per),
            atoms=per[0]["atoms"],
        ),
        gap=gap,
        reading=reading(gap),
        convergence=convergence(history, converged),
    )
    basis = data_span(acts).basis  # where the plane reference rotates

    def planes(slot: int, rows: torch.Tensor) -> dict:  # against the slot's seed's tiling
        return plane_recovery(rows, circles, basis, oracle=tilings[slot])

    if saes:
        lives = {s: (saes[s].encode(acts.float()) > 0).any(0) for s in seeds if s in saes}
        out["trained_near_truth"] = [
            near_truth(saes[s].W_dec, D, lives[s]) for s, D in zip(seeds, tilings) if s in saes
        ]
        out["plane_recovery"] = [
            planes(i, saes[s].W_dec.detach()[lives[s]]) for i, s in enumerate(seeds) if s in saes
        ]
    with stage("oracle_training"):
        enc, begun = truth_runs(
            acts, cfg, seeds, truth_start(acts, cfg, tiled), encoder, started, planes
        )
    if enc is not None:
        enc["amortisation_gap"] = [
            c["explained_variance"] - e  # against the tiling's own best code
            for c, e in zip(circle_scores, enc["explained_variance"])
        ]
        out["encoder"] = enc
    if begun is not None:
        out["started"] = begun
    return out


def truth_start(acts: torch.Tensor, cfg, tiled: list[tuple[torch.Tensor, list[dict]]]) -> dict:
    """The start at the truth for train_saes: decoder and encoder rows = each seed's tiling
    [S, m, d], b_dec the data mean, and for the L1 families (ReLU, JumpReLU, which have no top-k to
    pick atoms) b_enc at minus each atom's radius times cos(phase step), so that an atom fires on
    the arc of phases its two neighbours bound, as the best code uses it (the TopK family starts at
    b_enc 0 and selects)."""
    start = dict(
        W_dec=torch.stack([D for D, _ in tiled]).float(), b_dec=acts.double().mean(0).float()
    )
    if cfg.family.fixed_l0() is None:  # no top-k to pick the atoms
        start["b_enc"] = torch.tensor(
            [[-a["radius"] * math.cos(a["spacing"]) for a in labels] for _, labels in tiled],
            dtype=torch.float32,
        )
    return start


def truth_runs(
    acts: torch.Tensor,
    cfg,
    seeds: list[int],
    start: dict,
    encoder: bool = True,
    started: bool = True,
    planes=None,
) -> tuple[dict | None, dict | None]:
    """The cell's recipe from `start` (truth_start), in one pass of the multi-seed trainer: with the
    decoder frozen (the oracle with the family's encoder) and free (started at the truth), each for
    every seed -> (oracle_with_encoder's dict, started_at_truth's dict), None for a run not asked
    for. Slots train independently, so each run is the one it would be alone. planes(slot, live
    rows [n, d]) -> dict, if given, scores each started run's rows (`plane_recovery`)."""
    from husai.sae.metrics import reconstruction_metrics
    from husai.sae.train import train_saes

    runs = [frozen for frozen, wanted in ((True, encoder), (False, started)) if wanted]
    if not runs:
        return None, None
    S = len(seeds)
    both = {key: torch.cat([v] * len(runs)) if key != "b_dec" else v for key, v in start.items()}
    res = train_saes(
        acts.float(),
        replace(cfg, trajectory_epochs=[]),
        seeds * len(runs),
        start=both,
        freeze_decoder=[f for f in runs for _ in range(S)],
    )
    m = reconstruction_metrics(res.sae, acts.float())
    with torch.no_grad():
        live = (res.sae.encode(acts.float()) > 0).any(1)  # [R S, d_sae]
    W = res.sae.unit_decoder().detach().double()
    out = {}
    for r, frozen in enumerate(runs):
        part = slice(r * S, (r + 1) * S)
        entry = dict(
            explained_variance=m["explained_variance"][part],
            l0=m["l0"][part],
            frac_dead=m["frac_dead"][part],
            diverged=res.diverged_at_step is not None,
        )
        if not frozen:
            n = start["W_dec"].shape[1]
            cos = torch.nn.functional.cosine_similarity(
                W[part, :n], start["W_dec"].double(), dim=-1
            )  # [S, n]
            entry.update(
                cosine_to_start=cos.mean(1).tolist(),
                min_cosine_to_start=cos.min(1).values.tolist(),
                near_truth=[
                    near_truth(W[r * S + s], start["W_dec"][s].double(), live[r * S + s])
                    for s in range(S)
                ],
            )
            if planes is not None:
                entry["plane_recovery"] = [
                    planes(s, W[r * S + s][live[r * S + s]]) for s in range(S)
                ]
        out[frozen] = entry
    return out.get(True), out.get(False)


def oracle_with_encoder(acts: torch.Tensor, cfg, seeds: list[int], start: dict) -> dict:
    """Each seed's tiling as a frozen decoder (and b_dec) with the cell's own encoder trained by the
    cell's recipe (the other rows at the usual init and frozen too) -> EV, L0, dead per seed.
    Against the best code, its shortfall is the amortisation gap (O'Neill et al. 2024): what a
    one-layer encoder loses in choosing the atoms, apart from the dictionary."""
    return truth_runs(acts, cfg, seeds, start, encoder=True, started=False)[0]


def started_at_truth(acts: torch.Tensor, cfg, seeds: list[int], start: dict) -> dict:
    """The cell's recipe started at each seed's tiling (module docstring) -> EV, L0, dead per seed,
    each started row's cosine to its atom at the end (mean and min), and the share of live rows near
    the truth."""
    return truth_runs(acts, cfg, seeds, start, encoder=False, started=True)[1]
