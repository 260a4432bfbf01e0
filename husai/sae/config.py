"""The SAE training config: every key of a train-sae YAML file or a study's `saes` entry, validated.

Keys are the fields of SAETrainConfig; `config_from_dict` and `load_config` check names and types
and name the offending key in a one-line error.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from husai.errors import HusaiError
from husai.model.data import check_seed
from husai.sae.architectures import ARCHITECTURES, K_ARCHITECTURES
from husai.sae.optim import OPTIMIZERS
from husai.sae.topk import MATRYOSHKA_GROWTH


@dataclass
class SAETrainConfig:
    """Everything that defines an SAE training run (YAML keys are these field names)."""

    architecture: str = "topk"
    """One of topk, batchtopk, matryoshka, relu, jumprelu."""
    expansion: int = 16
    """d_sae = expansion * d_in (unless `latents` is set)."""
    latents: typing.Optional[int] = None
    """d_sae itself, whatever d_in is: widths compare across hooks of different sizes (resid_post
    d_in 128, mlp.hook_post 512) and can be smaller than d_in (a sweep from 32 latents). null: use
    expansion."""
    k: int = 32
    """Active latents per input (topk) or on average per input (batchtopk, matryoshka)."""
    l1_coeff: float = 2.0
    """ReLU SAE: weight of the decoder-norm-weighted L1 penalty (absolute: the MSE is not
    normalised, so scale it with the activations: 2.0 gave L0 ~30-40 with Adam on the 1,400-epoch
    model's layer-0 residual, variance ~2000; the fast preset's model since issue 14 has ~330)."""
    l0_coeff: float = 8.0
    """JumpReLU SAE: weight of the L0 penalty (absolute, like l1_coeff: 8.0 with 40 epochs gave
    L0 ~31, EV 0.89 on the 1,400-epoch model's layer-0 residual, measured)."""
    target_l0: typing.Optional[float] = None
    """ReLU / JumpReLU: find the l1_coeff / l0_coeff that gives this L0 before training
    (husai.sae.calibrate: a short search from the given coefficient, which is then only its start),
    then train every seed at that fixed coefficient; the search's table and the coefficient used are
    recorded in metrics.json (`calibration`) and each seed's cfg.json. A comparison across
    architectures is fair only at matched L0; the TopK family sets its L0 with k. null: the
    coefficient is used as given."""
    jumprelu_bandwidth: float = 2.0
    """JumpReLU: width eps of the rectangle kernel in the pseudo-derivatives (Rajamanoharan et al.
    sec. 4), in activation units: scale it with the pre-activations (here tens)."""
    jumprelu_init_threshold: float = 1.0
    """JumpReLU: initial threshold of every latent (> 0; learned as its logarithm)."""
    aux_coeff: float = 0.03125
    """TopK/BatchTopK: AuxK loss coefficient (Gao et al. A.2: 1/32)."""
    k_aux: typing.Optional[int] = None
    """TopK/BatchTopK: dead latents used by AuxK; None = d_in // 2 (Gao et al. A.2)."""
    decoder_norm: str = "unit"
    """TopK family: how training keeps the decoder rows. unit: unit rows, the gradient's component
    along each row removed and the rows renormalised after every step (Gao et al. sec. 2.3).
    rescale: rows with free norms n, each latent's pre-activation times its n and decoded with the
    unit row (SAELens's rescale_acts_by_decoder_norm, husai.sae.base.StackedSAE.rescale), folded
    into unit rows when training ends, so the saved SAE is the same kind. The same set of
    functions, trained differently: n is a per-latent gain on the encoder that Adam moves along
    with the row. Measured (BENCHMARKS.md, "SynthSAEBench"; 3 seeds): on SAELens's SynthSAEBench,
    TopK with rescale from decoder_init_norm 0.1 and b_dec_init zeros matches SAELens's trainer
    (F1 +0.004 at lr 3e-3, -0.002 at 1e-3; unit rows -0.022, -0.021), while BatchTopK does better
    with unit rows. From 0.1 a run is sensitive to float rounding (a 1e-6 change of the data moved
    some rows by 0.76 in 1 - cos after 3 epochs on the grokked model): it reproduces its figures
    across devices, not its rows. On the grokked model it converges
    faster (the study's TopK cell: EV 0.995 against 0.981 after 10 epochs, 0.999 against 0.991
    after 40). The default stays unit: the study was validated with it."""
    decoder_init_norm: float = 1.0
    """decoder_norm rescale: the decoder rows' norm at init (encoder rows likewise, W_enc = W_dec^T),
    SAELens's decoder_init_norm (its default 0.1). Small rows turn further per Adam step until their
    norms grow: on SynthSAEBench at lr 1e-3, 0.1 reaches SAELens's MCC where 1.0 stays 0.015 below
    (BENCHMARKS.md). With decoder_norm unit it must stay 1."""
    dead_after_epochs: float = 1.0
    """A latent counts as dead for AuxK when it has not fired for this many passes over the data."""
    resample_dead: list[int] = field(default_factory=list)
    """Epochs after which dead latents (not fired for dead_after_epochs) are resampled where the SAE
    reconstructs worst (husai.sae.resample, Bricken et al. 2023): the ReLU family's remedy for
    dead latents, as AuxK is the TopK family's. [] (default): never; epochs >= `epochs` are skipped."""
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
    b_dec_init: str = "median"
    """b_dec at init: median (the geometric median of the data, Gao et al. sec. 2.3) or zeros (SAELens
    6's). Data init centres its rows on the median either way. Measured on SynthSAEBench (BENCHMARKS.md;
    TopK, decoder_norm rescale from 0.1, 3 seeds): at lr 1e-3 zeros gives MCC 0.706, F1 0.447, the median
    0.702, 0.437 (SAELens's trainer 0.707, 0.449); at lr 3e-3 the two are within noise."""
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
        if self.decoder_norm not in ("unit", "rescale"):
            raise HusaiError(f"config key 'decoder_norm': unknown {self.decoder_norm!r}; choose unit or rescale")
        if self.decoder_norm == "rescale" and self.architecture not in K_ARCHITECTURES:
            raise HusaiError(f"config key 'decoder_norm': rescale is for the TopK family ({', '.join(K_ARCHITECTURES)}); "
                             f"{self.architecture} keeps its own decoder")
        if not (self.decoder_init_norm > 0 and math.isfinite(self.decoder_init_norm)):
            raise HusaiError(f"config key 'decoder_init_norm' must be a positive number, got {self.decoder_init_norm}")
        if self.decoder_norm == "unit" and self.decoder_init_norm != 1:
            raise HusaiError("config key 'decoder_init_norm' needs decoder_norm rescale (unit rows start at norm 1)")
        if self.b_dec_init not in ("median", "zeros"):
            raise HusaiError(f"config key 'b_dec_init': unknown {self.b_dec_init!r}; choose median or zeros")
        if self.init not in ("random", "data"):
            raise HusaiError(f"config key 'init': unknown {self.init!r}; choose random or data")
        if self.architecture not in ARCHITECTURES:
            raise HusaiError(f"config key 'architecture': unknown {self.architecture!r}; "
                             f"choose one of {', '.join(ARCHITECTURES)}")
        if self.latents is not None and self.latents < 1:
            raise HusaiError(f"config key 'latents' must be >= 1, got {self.latents}")
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
        if any(e < 1 for e in self.resample_dead) or len(set(self.resample_dead)) != len(self.resample_dead):
            raise HusaiError(f"config key 'resample_dead' must hold distinct epochs >= 1, got {self.resample_dead}")
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
                width = f"latents {self.latents}" if self.latents is not None else \
                    f"expansion {self.expansion} x d_in {d_in}"
                raise HusaiError(f"k must be smaller than d_sae = {self.d_sae(d_in)} ({width}), got k = {self.k}")
        if self.target_l0 is not None:
            if self.architecture not in ("relu", "jumprelu"):
                raise HusaiError(f"config key 'target_l0' is for relu and jumprelu; {self.architecture} sets its L0 with k")
            if not self.target_l0 > 0 or (d_in is not None and self.target_l0 >= self.d_sae(d_in)):
                raise HusaiError(f"config key 'target_l0' must lie between 0 and d_sae, got {self.target_l0}")
        if self.architecture == "matryoshka":
            if self.matryoshka_levels < 1:
                raise HusaiError(f"config key 'matryoshka_levels' must be >= 1, got {self.matryoshka_levels}")
            need = MATRYOSHKA_GROWTH ** (self.matryoshka_levels - 1)
            if d_in is not None and self.d_sae(d_in) < need:
                raise HusaiError(f"config key 'matryoshka_levels': {self.matryoshka_levels} levels growing "
                                 f"{MATRYOSHKA_GROWTH}x need d_sae >= {need}, got d_sae = {self.d_sae(d_in)}")
        return self

    def d_sae(self, d_in: int) -> int:
        return self.latents if self.latents is not None else self.expansion * d_in

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
