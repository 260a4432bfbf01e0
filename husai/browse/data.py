"""What the feature browser shows, gathered from SAE folders and their model into compact data.

Per SAE (one seed of one cell), for every live latent (fired on some input of the p^2 grid):
    its activation z over the whole grid, stored as 4-bit levels q = round(15 z / max z) (the
    latent's `scale` = max z is kept, so z = q * scale / 15, within scale / 30 of the true value,
    except that any z > 0 is at least level 1: a firing input is never drawn as silent);
    the grid is laid out answer-major, (c, a) for c = a + b (or a - b), so that a function of the
    answer is a run of equal bytes for deflate. Bytes per latent after deflate, measured on the
    default study's TopK 256-latent k 32 and ReLU 64-latent L0 8 seeds at resid_post:
        8 bits, (a, b) order   2577 / 2888      8 bits, (c, a)   2115 / 2295
        6 bits, (c, a)         1685 / 1805      5 bits, (c, a)   1489 / 1539
        4 bits, (c, a)         1260 / 1244
    (PNG's prediction filters, sub / up / average / Paeth, made every case 13-60% larger: these
    heatmaps are not smooth at the grid's resolution). The whole default study's page (~14,700 live
    latents, a third of them firing on a third to half of the inputs) came to 35.1 MB at 5 bits and
    29.8 MB at 4 bits (base64), 29.0 MB as it is now (BENCHMARKS.md has each step), against a budget
    of ~30 MB; 16 levels still show a heatmap's shape (stripe, patch, lattice).
    its type and measures from husai.analysis.latent_types (the ground truth of its hook);
    its best match in every other seed of the cell, by decoder cosine in the data metric
    (husai.analysis.data_span: the basis-free comparison the stability figures use), with that
    cosine and the correlation of the two latents' activations;
    its reappearance: the share of other seeds where that cosine is >= the study's stability
    threshold (the cell's analysis.json; 0.7 for a folder without one), None in a one-seed cell.
    its direct logit effect W_dec[i] W_U (W_dec[i] W_out W_U at mlp.hook_post), as 8-bit signed
    levels of its largest |effect| (~1.4 bytes a class in base85), with the share of its centred
    variance in its best single frequency over c and that frequency; the histogram of its non-zero
    activations in log-spaced bins; its nearest atom of its seed's oracle tiling and that cosine
    (husai.browse.effects says how each is defined).
Per cell, after its seeds: the oracle's pseudo-SAE (seed "oracle"): the first seed's tiling, each
atom a latent with the same measures, matched against the seeds (its matches are shown but not
counted in the seeds' reappearance).
The page computes the rest from z: the heatmap, E[z | c], the 2-D Fourier spectrum, the top inputs.

Per model: the key frequencies, the training figures, each hook's ground-truth planes with their
variance, and the MLP's single-frequency neurons with a few examples per frequency (as heatmaps,
stored like latents): the ground truth a latent is compared with.
"""

from __future__ import annotations

import base64
import zlib
from pathlib import Path

import numpy as np
import torch

from husai.analysis.stability import SHARED_THRESHOLD
from husai.errors import HusaiError

LEVELS = 15
"""4-bit activation levels (the module docstring has the measured sizes)."""
MATCH_THRESHOLD = SHARED_THRESHOLD
"""A latent reappears in another seed when its best decoder cosine there is >= the threshold of the
study's stability figures, read from the cell's analysis.json; where there is none (a `husai
train-sae` output), the stability figures' default."""
NEURON_EXAMPLES = 4
"""Example neurons shown per key frequency on the model page (the purest ones)."""
MLP_HOOK = "blocks.0.mlp.hook_post"


def grid_layout(p: int, operation: str) -> np.ndarray:
    """[p*p] the input row (a*p + b) stored at each position of a latent's byte grid: answer-major
    (c, a) for add and sub, plain (a, b) for mul (whose answers are not a bijection of b)."""
    a = np.arange(p)[None, :]
    c = np.arange(p)[:, None]
    if operation == "add":
        return (a * p + (c - a) % p).reshape(-1)
    if operation == "sub":
        return (a * p + (a - c) % p).reshape(-1)
    return np.arange(p * p)


def pack_levels(z: np.ndarray, layout: np.ndarray) -> tuple[str, list[float]]:
    """z [p*p, n] (rows a*p + b, values >= 0) -> (text85 of deflate(uint8 [n, p*p] in layout order),
    per-column scales). A negative value (no husai activation gives one) would be clipped to 0."""
    scale = z.max(0) if z.size else np.zeros(0)
    q = np.rint(np.clip(z, 0, None) / np.maximum(scale, 1e-30) * LEVELS).astype(np.uint8)
    # a latent that fires, however weakly, is drawn as firing: rounding to level 0 hid 6% of the
    # firing inputs of the default study (one latent lost 14% of its support); level 1 for them
    # costs ~nothing
    q[(z > 0) & (q == 0)] = 1
    raw = np.ascontiguousarray(q[layout].T).tobytes()
    # zlib's run-length strategy: 4% smaller than level 9's default here, and 30x faster (0.09 s
    # against 2.9 s for a 256-latent seed): the runs are of zeros and of one answer's value
    pack = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    return text85(pack.compress(raw) + pack.flush()), [float(f"{s:.6g}") for s in scale]


def text85(data: bytes) -> str:
    """Bytes as base85 text that is safe inside a <script> element: RFC 1924's alphabet (Python's
    b85encode) with "<" and ">" swapped for "," and "." (which it lacks), so no "</script" or "<!--"
    can appear. 5 characters per 4 bytes: 6% smaller than base64's 4 per 3, 1.8 MB of the default
    study's page."""
    return base64.b85encode(data).decode("ascii").translate(_TO_HTML)


def bytes85(text: str) -> bytes:
    """text85's inverse (the page's `b85bytes` does the same in JavaScript)."""
    return base64.b85decode(text.translate(_FROM_HTML))


_TO_HTML, _FROM_HTML = str.maketrans("<>", ",."), str.maketrans(",.", "<>")


def _round(v, nd: int = 3) -> list:
    """Floats rounded for the page's JSON (NaN, which JSON lacks, as null)."""
    return [round(float(x), nd) if np.isfinite(x) else None for x in v]


def find_cells(root: Path) -> list[Path]:
    """The SAE cells under root, sorted by path: folders holding seed_*/cfg.json (a study's cells,
    a multi-seed `husai train-sae` output) and folders holding cfg.json themselves (a one-seed
    output). Hidden folders are skipped: a `.NAME.partial-XXXX` is an unfinished output
    (husai.outputs)."""
    cells = set()
    for cfg in [root / "cfg.json"] if (root / "cfg.json").is_file() else root.rglob("cfg.json"):
        if any(part.startswith(".") for part in cfg.relative_to(root).parts):
            continue
        cells.add(cfg.parent.parent if cfg.parent.name.startswith("seed_") else cfg.parent)
    if not cells:
        raise HusaiError(f"{root} holds no SAEs (no cfg.json in it or below it)")
    return sorted(cells)


def resolve_model(recorded: str | None, root: Path, given: Path | None) -> Path:
    """The model run folder of a cell: --model, else the recorded path (as written, else the
    folder of that name under root/models, where a study keeps its models, so a moved study still
    opens)."""
    if given is not None:
        if not (given / "config.json").is_file():
            raise HusaiError(f"--model {given} is not a model run folder (no config.json)")
        return given
    if recorded:
        for cand in (Path(recorded), root / "models" / Path(recorded).name):
            if (cand / "config.json").is_file():
                return cand
        raise HusaiError(f"the SAEs' model {recorded} is not there; pass --model DIR")
    raise HusaiError("the SAEs record no model (metadata.model_path); pass --model DIR")


def _matches(views: list, codes: list[torch.Tensor]) -> list[dict]:
    """For every seed's live latents, the best decoder match in every other seed:
    {j: (index [n], cosine [n], activation correlation [n])}, unrounded."""
    out: list[dict] = [{} for _ in views]
    for i, A in enumerate(views):
        for j, B in enumerate(views):
            if i == j or A.n == 0 or B.n == 0:
                continue
            best, arg = (A.dec @ B.dec.T).max(dim=1)
            za, zb = codes[i], codes[j][:, arg]  # [N, n_A] each: the pair's activations
            za, zb = za - za.mean(0), zb - zb.mean(0)
            corr = (za * zb).sum(0) / (za.norm(dim=0) * zb.norm(dim=0)).clamp_min(1e-30)
            out[i][j] = (B.live[arg.numpy()].tolist(), best.numpy(), corr.numpy())
    return out


def _latent_fields(z: torch.Tensor, W_dec: torch.Tensor, gt) -> tuple[torch.Tensor, list, dict]:
    """(live indices, keys, the per-latent measures of latent_types) for codes z [p*p, n]."""
    from husai.analysis.latent_types import TYPES, latent_types

    types = {lat["index"]: lat for lat in latent_types(z, W_dec.double(), gt)["latents"]}
    live = torch.tensor(sorted(types), dtype=torch.long)
    lats = [types[int(i)] for i in live]
    keys = [int(k) for k in (lats[0]["in_output"] if lats else {})]
    comp = [[lat["in_output"][str(k)] + lat["in_input"][str(k)] for k in keys] for lat in lats]
    fields = dict(
        index=live.tolist(),
        type=[TYPES.index(lat["type"]) for lat in lats],
        freq=[keys[int(np.argmax(c))] if c and max(c) >= 0.5 else 0 for c in comp],
        purity=_round(lat["purity"] for lat in lats),
        purity_freq=[lat["frequency"] for lat in lats],
        rate=_round((lat["firing_rate"] for lat in lats), 5),
        answer=_round(lat["answer_share"] for lat in lats),
        inputs=_round(lat["inputs_share"] for lat in lats),
        centroid=_round(lat["centroid_cos"] for lat in lats),
        off_span=_round(lat["off_span"] for lat in lats),
        # plane shares to 2 decimals, as the page draws them (0.4 MB of the default study's page
        # at 3)
        out=[_round((lat["in_output"][str(k)] for k in keys), 2) for lat in lats],
        inp=[_round((lat["in_input"][str(k)] for k in keys), 2) for lat in lats],
    )
    return live, keys, fields


def cell_data(
    cell: Path,
    label: str,
    ctx: dict,
    gt,
    layout: np.ndarray,
    model_id: int,
    threshold: float = MATCH_THRESHOLD,
    logits: torch.Tensor | None = None,
) -> list[dict]:
    """One entry per seed of the cell (module docstring), in the cell's seed order, then the
    oracle's pseudo-SAE (husai.browse.effects) where the cell's width tiles the truth. logits
    [d_in, p]: the hook's direct map to the answer logits (effects.logit_map). Each entry's "blob"
    holds its activation levels, "effect" its logit effects' bytes."""
    from husai.analysis.agreement import seed_view
    from husai.analysis.compare import expand_sae_dirs, hook_of, load_sae_folders, metadata
    from husai.analysis.data_span import data_span
    from husai.browse import effects

    dirs = expand_sae_dirs([cell])
    saes = load_sae_folders(dirs)
    x = ctx["acts"]
    if any(s.W_dec.shape[1] != x.shape[1] for s in saes):
        raise HusaiError(
            f"{cell}: the SAEs' d_in does not match the model's activations at {hook_of(saes[0])}"
        )
    op = ctx.get("operation", "add")
    span = data_span(x)
    seeds = [metadata(s).get("seed", d.name) for d, s in zip(dirs, saes)]
    tilings = effects.cell_oracle_tilings(ctx, gt, seeds, int(saes[0].W_dec.shape[0]))
    members = []  # (W_dec, W_enc^T, z [p*p, n] float64, the entry's own fields)
    for d, sae, seed in zip(dirs, saes, seeds):
        with torch.no_grad():
            z = sae.encode(x.float()).double()
            x_hat = sae.decode(z.float()).double()
        meta = metadata(sae)
        ev = float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum())
        own = dict(
            seed=seed,
            path=str(d),
            architecture=meta.get("husai_architecture") or sae.cfg.get("architecture"),
            ev=round(ev, 4),
            oracle=False,
        )
        members.append((sae.W_dec.detach(), sae.W_enc.detach().T, z, own))
    if tilings:
        first = seeds[0]
        atoms, labels = tilings[first]
        z = effects.oracle_code(x, gt.grid.rows, atoms, labels)
        own = dict(
            seed="oracle",
            path=str(cell),
            architecture=f"oracle tiling of seed {first} ({atoms.shape[0]} atoms)",
            ev=None,
            oracle=True,
            tiling_seed=first,
        )
        members.append((atoms.float(), atoms.float(), z, own))
    entries, views, codes = [], [], []
    for W_dec, W_enc_T, z, own in members:
        live, keys, fields = _latent_fields(z, W_dec, gt)
        views.append(
            seed_view(
                str(own["seed"]),
                W_dec,
                W_enc_T,
                span,
                live=torch.isin(torch.arange(z.shape[1]), live),
            )
        )
        codes.append(z[:, live])
        blob, scale = pack_levels(z[:, live].numpy(), layout)
        entry = dict(
            cell=label,
            model=model_id,
            hook=hook_of(saes[0]),
            d_sae=int(z.shape[1]),
            l0=round(float((z != 0).sum(1).double().mean()), 3),
            n_live=len(live),
            keys=keys,
            blob=blob,
            scale=scale,
            latents=fields,
            **own,
        )
        fields["density"] = effects.density(z[:, live].numpy())
        # each seed against its own tiling (the oracle's atoms against theirs: themselves)
        tiling = tilings.get(own.get("tiling_seed", own["seed"]))
        if tiling is not None:
            fields["near"] = effects.nearest_atoms(W_dec[live], tiling[0], tiling[1], op)
        if logits is not None:
            E = W_dec[live].double() @ logits
            entry["effect"], entry["effect_scale"] = effects.pack_effects(E)
            fields["logit_freq"], fields["logit_share"] = effects.effect_stats(E)
        entries.append(entry)
    trained = [i for i, (_, _, _, own) in enumerate(members) if not own["oracle"]]
    for i, (e, m) in enumerate(zip(entries, _matches(views, codes))):
        # keyed by the other seed's position in this cell (made global ids by the caller)
        # the same-feature flags from the unrounded cosines: a cosine of 0.6996 does not reappear
        e["matches"] = {
            j: (idx, _round(cos), _round(corr), (cos >= threshold).astype(int).tolist())
            for j, (idx, cos, corr) in m.items()
        }
        n = len(e["latents"]["index"])
        # reappearance is over the other trained seeds: the oracle's card is shown, not counted
        cos = [v[1] for j, v in m.items() if j in trained and j != i]
        e["latents"]["reappear"] = (
            _round(np.mean([c >= threshold for c in cos], 0)) if cos else [None] * n
        )
        e["latents"]["best_cos"] = _round(np.mean(cos, 0)) if cos else [None] * n
    return entries


def model_data(model_dir: Path, hooks: list[str], contexts: dict) -> dict:
    """The model page (module docstring). contexts: {hook: model context}
    (husai.analysis.compare)."""
    from husai.analysis.compare import hook_ground_truth, model_context
    from husai.io import read_json

    cfg = read_json(model_dir / "config.json", "model config")
    metrics = (
        read_json(model_dir / "metrics.json", "model metrics")
        if (model_dir / "metrics.json").is_file()
        else {}
    )
    keep = (
        "test_acc",
        "train_acc",
        "memorised_epoch",
        "grokked_epoch",
        "clean_epoch",
        "epochs_trained",
        "frac_neurons_single_freq",
        "neurons_per_key_frequency",
        "key_frequencies",
        "frac_neurons_dead",
    )
    out = dict(
        path=str(model_dir),
        p=cfg["p"],
        operation=cfg["operation"],
        seed=cfg.get("seed"),
        metrics={k: metrics[k] for k in keep if k in metrics},
        hooks={},
    )
    for hook in hooks:
        gt = hook_ground_truth(contexts[hook]).to_json()
        out["hooks"][hook] = dict(
            variance=gt["variance"],
            variance_names=gt["variance_names"],
            planes={k: round(v["share"], 4) for k, v in gt["planes"].items()},
            span=gt["span"],
            key_frequencies=gt["key_frequencies"],
        )
    mlp = model_context(model_dir, MLP_HOOK)
    neurons = hook_ground_truth(mlp).neurons or {"neurons": [], "clusters": {}, "count": 0, "of": 0}
    by_freq: dict[int, list] = {}
    for n in sorted(neurons["neurons"], key=lambda n: -n["purity"]):
        by_freq.setdefault(n["frequency"], []).append(n)
    examples = [n for k in sorted(by_freq) for n in by_freq[k][:NEURON_EXAMPLES]]
    idx = [n["index"] for n in examples]
    blob, scale = pack_levels(mlp["acts"][:, idx].numpy(), grid_layout(cfg["p"], cfg["operation"]))
    out["neurons"] = dict(
        count=neurons["count"],
        of=neurons["of"],
        clusters={str(k): v for k, v in neurons["clusters"].items()},
        examples=dict(
            index=idx,
            freq=[n["frequency"] for n in examples],
            purity=_round(n["purity"] for n in examples),
        ),
        blob=blob,
        scale=scale,
    )
    return out
