"""husai's compiled kernels in use: a training run with and without them, KernelAdam against
torch.optim.Adam, and the build (a failed compile, the cache, its private fallback). The kernels
themselves are checked against slow references in test_sae_kernels.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from test_sae_kernels import REPO, _gen, _kernels_on, _ref_topk_rows  # noqa: F401 (_kernels_on: autouse fixture)

from husai.sae import kernels
from husai.sae.config import SAETrainConfig
from husai.sae.train import train_saes

# ---------------------------------------------------------------- end to end


def _low_rank_acts():
    """[2000, 16] rank-4 data plus small noise, offset from 0."""
    g = _gen(0)
    return (
        torch.randn(2000, 4, generator=g) @ torch.randn(4, 16, generator=g)
        + 0.01 * torch.randn(2000, 16, generator=g)
        + 0.3
    )


@pytest.mark.parametrize(
    "epochs,options",
    [
        (5, {}),
        (5, dict(data_seed=0)),
        (2, dict(decoder_norm="rescale")),
        (3, dict(resample_dead=[2])),
        (4, dict(data_span=0.99)),
    ],
    ids=["default", "shared_batch", "rescale", "resample", "span"],
)
def test_training_with_and_without_kernels_agree(monkeypatch, epochs, options):
    """A TopK SAE (16 -> 128, k 4, random init so a third of the latents die and AuxK runs from
    epoch 2, 2 seeds) trained through the kernels and through the PyTorch path (HUSAI_KERNELS=off)
    ends with the same weights: the two paths make the same selections and differ only in the order
    of some sums. Measured (default): max |W_dec diff| 3.0e-7, |W_enc_T diff| 8.9e-8, EV equal to
    1e-7; the 1e-4 bound leaves room for other CPUs' rounding but not for a wrong selection or sum
    (one Adam step at lr 3e-3 moves a weight ~3e-3). Also with one batch order for all seeds (pre's
    [B, S, d] layout), free decoder norms, dead-latent resampling (which edits the optimizer's
    state) and a data span (the decoder constraint then runs outside the optimizer). Counting the
    kernels' calls shows the kernel run used every kernel of the step, AuxK's topk_among included,
    and the other none. With free norms the run stops after 2 epochs: there the two paths' rounding
    (KernelAdam against torch's fused Adam, ~5e-7 after 16 steps) flipped a near-tied selection at
    step 21 and the weights then differed by 3e-4 (EV by 3e-5); torch's own two Adam kernels happen
    not to. In the data span the same happens in epoch 5 (since the loss's gradient is written in C,
    rounded differently from autograd's: seed 2's decoder 1.3e-6 apart after epoch 4, 5e-4 after
    epoch 5), so that run stops after 4."""
    assert shutil.which("cc") is None or kernels.library() is not None
    calls: dict[str, int] = {}
    for name in (
        "topk_step",
        "topk_rows",
        "topk_among",
        "sparse_decode",
        "decode_backward",
        "sum_by_latent",
        "weighted_row_sum",
    ):

        def counted(*a, _f=getattr(kernels, name), _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            if _name == "topk_step" and bool(a[6].any()):  # its dead mask: a step with AuxK
                calls["topk_step with AuxK"] = calls.get("topk_step with AuxK", 0) + 1
            return _f(*a, **kw)

        monkeypatch.setattr(kernels, name, counted)

    acts = _low_rank_acts()
    cfg = SAETrainConfig(
        architecture="topk",
        expansion=8,
        k=4,
        epochs=epochs,
        batch_size=256,
        init="random",
        lr=3e-3,
        **options,
    )
    with_kernels = train_saes(acts, cfg, [1, 2])
    n_steps = epochs * 8
    if "decoder_norm" in options:  # free norms: the step's kernels one by one (no topk_step)
        assert calls["topk_rows"] == calls["sparse_decode"] == n_steps and "topk_step" not in calls
        assert (
            min(calls["decode_backward"], calls["sum_by_latent"], calls["weighted_row_sum"])
            >= n_steps
        )
        aux_steps = calls["topk_among"]
    else:  # one topk_step call per step (resampling selects through topk_rows)
        assert calls["topk_step"] == n_steps and "sparse_decode" not in calls
        aux_steps = calls.get("topk_step with AuxK", 0)
    if "resample_dead" in options:  # resampled after epoch 2: they live again for a while
        assert with_kernels.history[1]["resampled"] and 0 < aux_steps < n_steps - 8
    elif "data_span" not in options:  # in the data span no latent dies here
        assert all(f > 0.2 for f in with_kernels.history[0]["frac_dead"])
        assert (
            aux_steps == n_steps - 8
        )  # AuxK from epoch 2 on: the first epoch has no dead latent yet

    calls.clear()
    monkeypatch.setenv("HUSAI_KERNELS", "off")
    assert kernels.library() is None
    without = train_saes(acts, cfg, [1, 2])
    assert calls == {}

    a, b = with_kernels.sae, without.sae
    a.requires_grad_(False)
    b.requires_grad_(False)
    assert float((a.W_dec - b.W_dec).abs().max()) < 1e-4
    assert float((a.W_enc_T - b.W_enc_T).abs().max()) < 1e-4
    assert float((a.b_dec - b.b_dec).abs().max()) < 1e-4
    for ha, hb in zip(with_kernels.history, without.history):
        assert max(abs(u - v) for u, v in zip(ha["ev"], hb["ev"])) < 1e-4
        assert ha["frac_dead"] == hb["frac_dead"]
    assert not torch.allclose(
        a.W_dec, with_kernels.W_dec_init, atol=1e-2
    )  # training moved the decoder


@pytest.mark.parametrize(
    "arch,options",
    [
        ("topk", dict(decoder_norm="rescale")),
        ("batchtopk", {}),
        ("matryoshka", dict(matryoshka_levels=2)),
        ("relu", {}),
        ("jumprelu", {}),
    ],
)
def test_every_decode_gets_sorted_rows(monkeypatch, arch, options):
    """sparse_decode finds each task's entries by binary search over the rows, so every entry list
    that training decodes must have each seed's rows non-decreasing (husai.sae.sparse.Codes): the
    TopK family's nested levels and AuxK rows, BatchTopK's batch-wide selection, and the ReLU
    family's entries with their padding. (topk_step builds its own lists, b then B + b.)"""
    seen = []

    def checked(z, rows, cols, W, R, _f=kernels.sparse_decode):
        seen.append(bool((rows[:, 1:] >= rows[:, :-1]).all()) and int(rows.max()) < R)
        return _f(z, rows, cols, W, R)

    monkeypatch.setattr(kernels, "sparse_decode", checked)
    if arch in (
        "relu",
        "jumprelu",
    ):  # the sparse path every step (these small codes are too dense for it)
        from husai.sae.architectures import JumpReLUSAE, ReLUSAE

        monkeypatch.setattr(ReLUSAE if arch == "relu" else JumpReLUSAE, "dense_above", None)
    k = {} if arch in ("relu", "jumprelu") else dict(k=4)
    cfg = SAETrainConfig(
        architecture=arch,
        expansion=8,
        epochs=3,
        batch_size=256,
        init="random",
        lr=3e-3,
        **k,
        **options,
    )
    train_saes(_low_rank_acts(), cfg, [1, 2])
    assert len(seen) >= 8 and all(seen)


# ---------------------------------------------------------------- the build


_CHILD = """
import json, warnings
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    from husai.sae import kernels, sparse
    first, second = kernels.library(), kernels.library()
    x = torch.randn(6, 160, generator=torch.Generator().manual_seed(5))
    vals, idx = sparse.topk_rows(x, 5)
print(json.dumps(dict(first=first is not None, second=second is not None, \
warnings=[str(w.message) for w in caught],
                      x=x.tolist(), vals=vals.tolist(), idx=idx.tolist())))
"""


def _child(env_changes: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HUSAI_KERNELS"}
    env.update(env_changes)
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_child_topk(out: dict):
    x = torch.tensor(out["x"])
    idx, order = torch.tensor(out["idx"]).sort(-1)  # the PyTorch path returns them unsorted
    assert torch.equal(idx, _ref_topk_rows(x, 5))
    assert torch.equal(torch.tensor(out["vals"]).gather(-1, order), x.gather(-1, idx))


def test_failed_build_warns_once_and_falls_back(tmp_path):
    """CC=/bin/false (the compile fails): library() is None on every call, with exactly one warning
    that says the kernels are unavailable; no temporary file is left in the cache; and
    husai.sae.sparse.topk_rows still gives the right top-k through the PyTorch path."""
    cache = tmp_path / "cache"
    out = _child({"CC": "/bin/false", "HUSAI_CACHE": str(cache)})
    assert not out["first"] and not out["second"]
    assert len(out["warnings"]) == 1 and "unavailable" in out["warnings"][0]
    assert not cache.exists() or list(cache.iterdir()) == []
    _check_child_topk(out)


def test_build_into_fresh_cache(tmp_path):
    """With the real compiler and an empty cache: the library loads without a warning, the cache
    then holds exactly one kernels-*.so and nothing else (the temporary build file was renamed in);
    a second process reuses it (not rebuilt: same file, same mtime)."""
    cache = tmp_path / "cache"
    env = {"HUSAI_CACHE": str(cache)}
    if os.environ.get("CC") == "/bin/false":
        env["CC"] = shutil.which("cc") or "cc"
    out = _child(env)
    assert out["first"] and out["second"] and out["warnings"] == []
    _check_child_topk(out)
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith("kernels-") and files[0].suffix == ".so"
    mtime = files[0].stat().st_mtime_ns
    again = _child(env)
    assert again["first"] and again["warnings"] == []
    assert list(cache.iterdir()) == files and files[0].stat().st_mtime_ns == mtime


def test_cache_falls_back_to_a_private_temporary_directory(tmp_path):
    """When the cache directory cannot be created (here: its path runs through a file), the library
    is built in <tmp>/husai-kernels-<uid>, created with mode 0700; a temporary directory of that
    name that others may write is never used (a library found there would be loaded into the
    process), so then the kernels are unavailable, with the one warning, and the PyTorch path
    runs."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"HUSAI_CACHE": str(blocker / "cache"), "TMPDIR": str(tmp)}
    if os.environ.get("CC") == "/bin/false":
        env["CC"] = shutil.which("cc") or "cc"
    out = _child(env)
    assert out["first"] and out["warnings"] == []
    _check_child_topk(out)
    private = tmp / f"husai-kernels-{os.getuid()}"
    assert private.stat().st_mode & 0o777 == 0o700
    assert [f.suffix for f in private.iterdir()] == [".so"]

    shared = tmp_path / "tmp2"
    (shared / f"husai-kernels-{os.getuid()}").mkdir(parents=True)
    (shared / f"husai-kernels-{os.getuid()}").chmod(0o777)
    out = _child(dict(env, TMPDIR=str(shared)))
    assert not out["first"] and len(out["warnings"]) == 1 and "unavailable" in out["warnings"][0]
    assert list((shared / f"husai-kernels-{os.getuid()}").iterdir()) == []
    _check_child_topk(out)


@pytest.mark.parametrize(
    "constrain,shape", [(False, (3, 40, 16)), (False, (3, 40)), (True, (3, 40, 16))]
)
def test_kernel_adam_equals_torch_adam(constrain, shape):
    """KernelAdam (kernels.adam_rows) makes torch.optim.Adam's update, state included, over 25 steps
    of fresh gradients (float32 rounding apart); with the decoder constraint it equals the three
    steps it replaces: the gradient's part along each unit row removed, Adam, the rows
    renormalised."""
    from husai.sae.optim import KernelAdam

    g = _gen(5 + len(shape))
    w0 = torch.randn(*shape, generator=g)
    w0 = w0 / w0.norm(dim=-1, keepdim=True)
    a, b = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    ka = KernelAdam([a], 1e-2, (0.9, 0.99), [a] if constrain else [])
    ta = torch.optim.Adam([b], lr=1e-2, betas=(0.9, 0.99))
    for _ in range(25):
        grad = torch.randn(*shape, generator=g)
        a.grad, b.grad = grad.clone(), grad.clone()
        ka.step()
        assert torch.equal(a.grad, grad)  # the kernel reads the gradient, never writes it
        if constrain:
            b.grad -= (b.grad * b.detach()).sum(-1, keepdim=True) * b.detach()
        ta.step()
        if constrain:
            with torch.no_grad():
                b /= b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(
            ka.state[a][key], ta.state[b][key], rtol=1e-5, atol=1e-6
        )  # values O(1): rounding
    assert float(ka.state[a]["step"]) == float(ta.state[b]["step"]) == 25
    if constrain:
        torch.testing.assert_close(a.norm(dim=-1), torch.ones(shape[:-1]))
