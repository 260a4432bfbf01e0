"""Train S SAEs (one per seed) on the same activations in one pass.

Each seed's initial weights come from its own generator (husai.sae.architectures.StackedSAE.init_weights)
and, by default, its batch order too (`data_seed` None: a batch x [S, B, d_in]); an integer
`data_seed` gives all seeds one shared order (x [B, d_in]). The loss is a sum of per-seed terms,
so training seeds [42, 123] together gives the same SAE for 42 as training [42] alone
(tests/sae/test_sae_train.py checks both this and bitwise determinism).
"""

from __future__ import annotations

import math
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from husai.errors import HusaiError
from husai.model.data import check_seed
from husai.resources import check_fits_in_memory
from husai.sae.activations import check_informative
from husai.sae.architectures import (
    ARCHITECTURES,
    K_ARCHITECTURES,
    BatchTopKSAE,
    JumpReLUSAE,
    MatryoshkaSAE,
    ReLUSAE,
    StackedSAE,
    TopKSAE,
)
from husai.sae.base import data_span_basis, geometric_median
from husai.sae.optim import OPTIMIZERS, make_optimizer
from husai.sae.topk import MATRYOSHKA_GROWTH, matryoshka_widths


@dataclass
class SAETrainConfig:
    """Everything that defines an SAE training run (YAML keys are these field names)."""

    architecture: str = "topk"
    """One of topk, batchtopk, matryoshka, relu, jumprelu."""
    expansion: int = 16
    """d_sae = expansion * d_in."""
    k: int = 32
    """Active latents per input (topk) or on average per input (batchtopk, matryoshka)."""
    l1_coeff: float = 2.0
    """ReLU SAE: weight of the decoder-norm-weighted L1 penalty (absolute: the MSE is not
    normalised, so scale it with the activations: 2.0 gave L0 ~30-40 with Adam on the 1,400-epoch
    model's layer-0 residual, variance ~2000; the fast preset's model since issue 14 has ~330)."""
    l0_coeff: float = 8.0
    """JumpReLU SAE: weight of the L0 penalty (absolute, like l1_coeff: 8.0 with 40 epochs gave
    L0 ~31, EV 0.89 on the 1,400-epoch model's layer-0 residual, measured)."""
    jumprelu_bandwidth: float = 2.0
    """JumpReLU: width eps of the rectangle kernel in the pseudo-derivatives (Rajamanoharan et al.
    sec. 4), in activation units: scale it with the pre-activations (here tens)."""
    jumprelu_init_threshold: float = 1.0
    """JumpReLU: initial threshold of every latent (> 0; learned as its logarithm)."""
    aux_coeff: float = 0.03125
    """TopK/BatchTopK: AuxK loss coefficient (Gao et al. A.2: 1/32)."""
    k_aux: typing.Optional[int] = None
    """TopK/BatchTopK: dead latents used by AuxK; None = d_in // 2 (Gao et al. A.2)."""
    dead_after_epochs: float = 1.0
    """A latent counts as dead for AuxK when it has not fired for this many passes over the data."""
    batchtopk_threshold_lr: float = 0.01
    """BatchTopK/Matryoshka: EMA rate of the inference threshold (SAELens's estimator)."""
    matryoshka_levels: int = 4
    """Matryoshka: nested dictionary widths, growing 4x per level up to d_sae (d_sae 2048, 4
    levels: 32, 128, 512, 2048; husai.sae.topk.matryoshka_widths). Bussmann et al. 2025 nest a
    few geometrically growing prefixes; the growth factor here is husai's choice."""
    init: str = "data"
    """Decoder init: random (isotropic unit rows, Gao et al.) or data (random centred data points,
    jittered by other data points: rotation-equivariant, StackedSAE.init_weights).
    On the grokked model's low-rank residual stream, random init leaves 15-40% of a 16x TopK SAE
    dead after 20 epochs (AuxK does not revive them); data init leaves none (measured)."""
    batch_size: int = 256
    """Inputs per step (per seed)."""
    epochs: int = 20
    """Passes over the activations."""
    lr: typing.Optional[float] = 3e-3
    """Learning rate (either optimizer); null = 2e-4 / sqrt(d_sae / 2^14) (Gao et al. sec. 2.4 scaling rule, made
    for LLM-scale runs; with only ~1000 steps here it under-trains: EV 0.70 vs 0.98 at 3e-3)."""
    optimizer: str = "adam"
    """adam (torch's, fused: one second moment per coordinate) or row_adam (husai.sae.optim.RowAdam:
    one per W_enc/W_dec/b_dec row, so training on X R gives the SAEs trained on X with those rows
    times R, for any orthogonal R). Measured (benchmarks/bench_span.py, 1 CPU thread; TopK 16x k 32,
    5 seeds, 20 epochs, lr 3e-3): row_adam EV 0.989 on raw, randomly rotated and PCA-basis data
    alike (adam 0.984, 0.984, 0.929), decoder rows 98.9% in the 99.9% span (adam, raw: 83%), 54.9
    vs 54.8 ms per step. Default adam because of ReLU (l1_coeff 25, batch 64, 40 epochs, 2 seeds):
    at lr 3e-3 row_adam lands at EV 0.727, L0 347 (adam 0.792, L0 45), at 1e-2 at 0.782, L0 56;
    its decoder rows shrink (median norm 0.13 vs 0.36 after 10 epochs), cheapening the L1."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.999
    """Adam beta2."""
    data_seed: typing.Optional[int] = None
    """Batch order. null (default): each SAE seed shuffles with its own generator (data_order_rng),
    so seeds differ in init AND data order and their agreement is not inflated by shared batches.
    An integer: one order from torch.Generator().manual_seed(data_seed), shared by all seeds (one
    [B, d_in] batch, one encoder matmul). The per-seed batch costs nothing measurable: 46.6 vs
    46.9 ms per TopK 16x k 32 step, 5 seeds, batch 256, 1 CPU thread (benchmarks/bench_span.py)."""
    data_span: typing.Optional[float] = None
    """Keep every decoder and encoder row in the data span: the fewest principal directions of the
    centred training activations holding >= this share of their variance (e.g. 0.999; Q [d_in, r],
    computed once). The initial rows are projected onto span(Q) (decoder rows renormalised) and,
    after every optimizer step, projected again (rows <- rows Q Q^T, then the usual decoder
    renormalisation): this equals projecting Adam's update (the rows start in the span) without
    keeping the old rows, and stays exact, which projecting the gradient would not (Adam divides
    each coordinate by its own scale). Why: directions with ~zero data variance otherwise take
    full-size Adam noise steps and rows drift out of the span (science brief, section 6).
    null (default) = off, measured (benchmarks/bench_span.py; TopK 16x k 32, 5 seeds, 20 epochs):
    on the raw residual it helps (EV 0.983 -> 0.986; decoder rows 75% -> 100% in the span), but
    in the PCA basis it is training in principal coordinates, where Adam's per-coordinate steps
    fail (EV 0.932 -> 0.602; with optimizer row_adam: EV 0.988 in both bases, seeds 42..1011); it
    changes a ReLU SAE's L1 trade (l1_coeff 25, 40 epochs, 2 seeds, raw: L0 40 -> 311, EV 0.791 ->
    0.728) and costs 19% per step (46.6 -> 55.4 ms, 1 CPU thread)."""
    trajectory_epochs: list[int] = field(default_factory=lambda: [0, 1, 3])
    """Epochs after which the weights are recorded (TrainResult.trajectory, OUT/trajectory.safetensors):
    0 = the initialisation; epochs >= `epochs` are skipped (the final SAE is saved anyway)."""

    def validate(self, d_in: int | None = None) -> "SAETrainConfig":
        if self.optimizer not in OPTIMIZERS:
            raise HusaiError(f"config key 'optimizer': unknown {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.init not in ("random", "data"):
            raise HusaiError(f"config key 'init': unknown {self.init!r}; choose random or data")
        if self.architecture not in ARCHITECTURES:
            raise HusaiError(f"config key 'architecture': unknown {self.architecture!r}; "
                             f"choose one of {', '.join(ARCHITECTURES)}")
        for name in ("expansion", "batch_size", "epochs"):
            if getattr(self, name) < 1:
                raise HusaiError(f"config key {name!r} must be >= 1, got {getattr(self, name)}")
        for name in ("l1_coeff", "l0_coeff", "aux_coeff", "dead_after_epochs"):
            if getattr(self, name) < 0:
                raise HusaiError(f"config key {name!r} must be >= 0, got {getattr(self, name)}")
        for name in ("jumprelu_bandwidth", "jumprelu_init_threshold"):
            if getattr(self, name) <= 0:
                raise HusaiError(f"config key {name!r} must be > 0, got {getattr(self, name)}")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise HusaiError(f"config key {f.name!r} must be a finite number, got {v}")
        if self.data_seed is not None:
            check_seed(self.data_seed, "config key 'data_seed'")
        if self.data_span is not None and not 0 < self.data_span <= 1:
            raise HusaiError(f"config key 'data_span' must lie in (0, 1] or be null, got {self.data_span}")
        if any(e < 0 for e in self.trajectory_epochs) or len(set(self.trajectory_epochs)) != len(self.trajectory_epochs):
            raise HusaiError(f"config key 'trajectory_epochs' must hold distinct epochs >= 0, got {self.trajectory_epochs}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise HusaiError(f"config key 'lr' must be a positive number, got {self.lr}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise HusaiError("config keys 'beta1' and 'beta2' must lie in [0, 1)")
        if self.k_aux is not None and self.k_aux < 1:
            raise HusaiError(f"config key 'k_aux' must be >= 1, got {self.k_aux}")
        if self.architecture in K_ARCHITECTURES:
            if self.k < 1:
                raise HusaiError(f"k must be >= 1, got {self.k}")
            if d_in is not None and self.k >= self.d_sae(d_in):
                raise HusaiError(f"k must be smaller than d_sae = {self.d_sae(d_in)} (expansion {self.expansion} x d_in "
                                 f"{d_in}), got k = {self.k}")
        if self.architecture == "matryoshka":
            if self.matryoshka_levels < 1:
                raise HusaiError(f"config key 'matryoshka_levels' must be >= 1, got {self.matryoshka_levels}")
            need = MATRYOSHKA_GROWTH ** (self.matryoshka_levels - 1)
            if d_in is not None and self.d_sae(d_in) < need:
                raise HusaiError(f"config key 'matryoshka_levels': {self.matryoshka_levels} levels growing "
                                 f"{MATRYOSHKA_GROWTH}x need d_sae >= {need}, got d_sae = {self.d_sae(d_in)}")
        return self

    def d_sae(self, d_in: int) -> int:
        return self.expansion * d_in

    def learning_rate(self, d_in: int) -> float:
        if self.lr is not None:
            return self.lr
        return max(1e-4, 2e-4 / math.sqrt(self.d_sae(d_in) / 2**14))

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, list) else v for k, v in d.items()}  # a copy: lists are mutable


def _check_type(key: str, value, hint) -> object:
    """Value of YAML key `key` checked against the dataclass annotation; ints accepted as floats."""
    if typing.get_origin(hint) is list:  # list[int]: every item an int (bools are not)
        if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise HusaiError(f"config key {key!r} must be a list of int, got {type(value).__name__} {value!r} (in a "
                         f"study config a list is a grid axis: write [[0, 1, 3]] for the list [0, 1, 3])")
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    raise HusaiError(f"config key {key!r} must be {hint.__name__}, got {type(value).__name__} {value!r}")


def config_from_dict(d: dict, source: str = "config") -> SAETrainConfig:
    """Build a config from a dict; unknown key or wrong type -> HusaiError naming the key."""
    if not isinstance(d, dict):
        raise HusaiError(f"{source} must be a mapping of keys to values, got {type(d).__name__}")
    hints = typing.get_type_hints(SAETrainConfig)
    unknown = [k for k in d if k not in hints]
    if unknown:
        raise HusaiError(f"{source}: unknown config key {unknown[0]!r}; valid keys: {', '.join(hints)}")
    return SAETrainConfig(**{k: _check_type(k, v, hints[k]) for k, v in d.items()}).validate()


def load_config(path: str | Path) -> SAETrainConfig:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise HusaiError(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise HusaiError(f"config {path} is not valid YAML ({str(e).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise HusaiError(f"config {path} is not a text file (not UTF-8)") from None
    return config_from_dict(d, f"config {path}")


def build_sae(cfg: SAETrainConfig, n_seeds: int, d_in: int, ks: list[int] | None = None) -> StackedSAE:
    """ks: TopK family only, one k per slot instead of cfg.k (husai.sae.cells.train_cells)."""
    d_sae, k = cfg.d_sae(d_in), cfg.k if ks is None else ks
    if cfg.architecture == "topk":
        return TopKSAE(n_seeds, d_in, d_sae, k, cfg.k_aux, cfg.aux_coeff)
    if cfg.architecture == "batchtopk":
        return BatchTopKSAE(n_seeds, d_in, d_sae, k, cfg.k_aux, cfg.aux_coeff, cfg.batchtopk_threshold_lr)
    if cfg.architecture == "matryoshka":
        return MatryoshkaSAE(n_seeds, d_in, d_sae, k, matryoshka_widths(d_sae, cfg.matryoshka_levels),
                             cfg.k_aux, cfg.aux_coeff, cfg.batchtopk_threshold_lr)
    if cfg.architecture == "relu":
        return ReLUSAE(n_seeds, d_in, d_sae, cfg.l1_coeff)
    return JumpReLUSAE(n_seeds, d_in, d_sae, cfg.l0_coeff, cfg.jumprelu_bandwidth, cfg.jumprelu_init_threshold)


@dataclass
class TrainResult:
    sae: StackedSAE
    """The trained SAEs, seed slot s = seeds[s] (the last good weights if training diverged)."""
    seeds: list[int]
    W_dec_init: torch.Tensor
    """[S, d_sae, d_in] decoder at initialisation (for cosine_to_init)."""
    steps: int
    wall_seconds: float
    diverged_at_step: int | None = None
    history: list[dict] = field(default_factory=list)
    """One row per epoch: epoch, step, loss, mse, l0, ev, frac_dead (lists over seeds)."""
    trajectory: dict[int, dict] = field(default_factory=dict)
    """epoch -> {"W_dec", "W_enc_T": [S, d_sae, d_in] float32 copies, "live": [S, d_sae] bool (fired
    during that epoch; all True at epoch 0, the init)}, for the epochs in cfg.trajectory_epochs."""


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in str(text).split(",") if s.strip()]
    except ValueError:
        raise HusaiError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise HusaiError("--seeds is empty")
    if len(set(seeds)) != len(seeds):
        raise HusaiError(f"--seeds has duplicates: {text}")
    for s in seeds:
        check_seed(s, "every SAE seed")
    return seeds


def init_saes(acts: torch.Tensor, cfg: SAETrainConfig, seeds: list[int], device: str = "cpu") -> StackedSAE:
    """The SAEs exactly as training starts them, from acts [N, d_in] (with cfg.data_span, rows
    projected onto the data span). Also the untrained-SAE null of `husai compare`, which must be
    the architecture's real init (science brief, section 4)."""
    return _init(acts, cfg, seeds, device)[0]


def _init(acts, cfg: SAETrainConfig, seeds: list[int], device, ks=None) -> tuple[StackedSAE, torch.Tensor | None]:
    """-> (the initial SAEs, Q [d_in, r] the data-span basis or None when cfg.data_span is off)."""
    N, d_in = acts.shape
    for s in seeds:
        check_seed(s, "every SAE seed")
    d_sae, B = cfg.d_sae(d_in), min(cfg.batch_size, N)
    # weights, gradients and Adam state (x4) of W_enc and W_dec, their trajectory copies, plus a
    # batch's [B, d_sae] pre-activations
    snaps = len([e for e in cfg.trajectory_epochs if e < cfg.epochs])
    need = 4 * len(seeds) * ((4 + snaps) * 2 * d_in * d_sae + 6 * B * d_sae)
    check_fits_in_memory(need, f"{len(seeds)} SAE(s) with d_sae = {d_sae} (expansion {cfg.expansion})", str(device))
    acts = acts.to(device=device, dtype=torch.float32)
    # b_dec init: geometric median of (a fixed subsample of) the data (Gao et al. sec. 2.3).
    sample = acts if N <= 8192 else acts[torch.randperm(N, generator=torch.Generator().manual_seed(0))[:8192].to(device)]
    sae = build_sae(cfg, len(seeds), d_in, ks).to(device).init_weights(
        seeds, geometric_median(sample.cpu()), sample.cpu() if cfg.init == "data" else None)
    Q = None if cfg.data_span is None else data_span_basis(acts, cfg.data_span)
    if Q is not None:
        sae.project_rows(Q, renormalise=True)
    return sae, Q


DATA_ORDER_KEY = 0x64617461  # "data": second entropy word of each seed's data-order SeedSequence


def data_order_rng(seed: int) -> np.random.Generator:
    """Seed `seed`'s batch-order generator (SAETrainConfig.data_seed null): numpy's PCG64 from
    SeedSequence([DATA_ORDER_KEY, seed + 2^63]), one-to-one in the seed over check_seed's range.
    A different algorithm from the init's torch (mt19937) generator, so the order can never
    replay any seed's init stream (torch's CPU generator keeps only a seed's low 32 bits: a
    torch generator from a derived seed could)."""
    return np.random.default_rng(np.random.SeedSequence([DATA_ORDER_KEY, int(seed) + 2**63]))


def _batch_orders(N: int, cfg: SAETrainConfig, seeds: list[int], device):
    """One call per epoch -> input order [N] (shared, data_seed set) or [S, N] (one per seed)."""
    if cfg.data_seed is not None:
        gen = torch.Generator().manual_seed(cfg.data_seed)
        return lambda: torch.randperm(N, generator=gen).to(device)
    rngs = [data_order_rng(s) for s in seeds]
    return lambda: torch.from_numpy(np.stack([r.permutation(N) for r in rngs])).to(device)


@torch.no_grad()
def _snapshot(sae: StackedSAE, live: torch.Tensor) -> dict:
    return dict(W_dec=sae.W_dec.detach().float().clone(), W_enc_T=sae.W_enc_T.detach().float().clone(),
                live=live.clone())


def train_saes(acts: torch.Tensor, cfg: SAETrainConfig, seeds: list[int], device: str = "cpu",
               on_step=None, on_epoch=None, ks: list[int] | None = None) -> TrainResult:
    """Train len(seeds) SAEs on acts [N, d_in]. on_step(step, total, stats) and
    on_epoch(row) are optional callbacks (progress bar, W&B). ks: see build_sae."""
    torch.set_flush_denormal(True)  # Adam state under weight decay goes denormal (science brief sec. 1)
    N, d_in = acts.shape
    cfg.validate(d_in)
    check_informative(acts)
    S = len(seeds)
    acts = acts.to(device=device, dtype=torch.float32)
    sae, span = _init(acts, cfg, seeds, device, ks)
    W_dec_init = sae.W_dec.detach().clone()
    opt = make_optimizer(sae, cfg.optimizer, cfg.learning_rate(d_in), (cfg.beta1, cfg.beta2))
    next_order = _batch_orders(N, cfg, seeds, device)
    record = {e for e in cfg.trajectory_epochs if e < cfg.epochs}
    trajectory = {0: _snapshot(sae, torch.ones(S, sae.d_sae, dtype=torch.bool, device=device))} if 0 in record else {}
    since_fired = torch.zeros(S, sae.d_sae, device=device)  # inputs seen since each latent last fired
    dead_after = max(1, math.ceil(cfg.dead_after_epochs * N))
    n_batches = math.ceil(N / cfg.batch_size)
    total, step, history, diverged = cfg.epochs * n_batches, 0, [], None
    last_good = {k: v.clone() for k, v in sae.state_dict().items()}
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        perm = next_order()  # [N] or [S, N]
        sums = torch.zeros(4, S, device=device)
        fired_epoch = torch.zeros(S, sae.d_sae, dtype=torch.bool, device=device)
        for i in range(0, N, cfg.batch_size):
            x = acts[perm[..., i:i + cfg.batch_size]]  # [B, d_in] or [S, B, d_in]
            loss, stats = sae.training_loss(x, since_fired >= dead_after)
            if not bool(torch.isfinite(stats["loss"]).all()):
                diverged = step
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sae.remove_parallel_grads()
            opt.step()
            if span is not None:  # back into the data span; after_step then renormalises decoder rows
                sae.project_rows(span)
            sae.after_step(stats)
            fired = stats["fired"]
            fired_epoch |= fired
            since_fired = torch.where(fired, torch.zeros_like(since_fired), since_fired + x.shape[-2])
            sums += torch.stack([stats["loss"], stats["mse"], stats["l0"], stats["ev"]])
            step += 1
            if on_step is not None:
                on_step(step, total, stats, (since_fired >= dead_after).float().mean(1))
        if diverged is None and not all(bool(torch.isfinite(p).all()) for p in sae.parameters()):
            diverged = step
        if diverged is not None:
            sae.load_state_dict(last_good)  # keep the last good checkpoint (end of the previous epoch)
            break
        last_good = {k: v.clone() for k, v in sae.state_dict().items()}
        if epoch + 1 in record:
            trajectory[epoch + 1] = _snapshot(sae, fired_epoch)
        means = (sums / n_batches).tolist()
        row = dict(epoch=epoch + 1, step=step, loss=means[0], mse=means[1], l0=means[2], ev=means[3],
                   frac_dead=(since_fired >= dead_after).float().mean(1).tolist())
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    sae._pre_buffer = None  # the training steps' scratch buffer (StackedSAE.pre_acts)
    return TrainResult(sae, list(seeds), W_dec_init, step, time.perf_counter() - t0, diverged, history, trajectory)
