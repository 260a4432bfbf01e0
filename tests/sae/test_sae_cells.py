"""Many cells in one pass (husai.sae.cells): cells that differ only in k train together, and each
cell comes out as it would have trained alone; cells that differ otherwise never share a pass."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from husai.sae.cells import group, train_cells
from husai.sae.checkpoint import load_sae, save_sae
from husai.sae.config import SAETrainConfig
from husai.sae.train import train_saes

torch.set_num_threads(1)


def _acts(n=400, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g) @ torch.randn(5, d, generator=g) + 0.05 * torch.randn(
        n, d, generator=g
    )


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_cells_in_one_pass_equal_cells_alone(arch):
    """k 2, 7 and 4 in one pass (seed 1 in two cells): every cell's weights, L0 and history as
    alone."""
    levels = dict(matryoshka_levels=2) if arch == "matryoshka" else {}
    base = SAETrainConfig(architecture=arch, expansion=4, k=4, epochs=3, batch_size=64, **levels)
    cells = [(replace(base, k=2), [1, 2]), (replace(base, k=7), [3, 1]), (base, [5])]
    assert group(cells) == [[0, 1, 2]]
    acts = _acts()
    for (cfg, seeds), got in zip(cells, train_cells(acts, cells)):
        alone = train_saes(acts, cfg, seeds)
        assert got.seeds == seeds and got.sae.n_seeds == len(seeds) and got.sae.k == cfg.k
        for name, t in alone.sae.state_dict().items():
            torch.testing.assert_close(
                got.sae.state_dict()[name], t, rtol=1e-4, atol=1e-5, msg=f"{arch} k {cfg.k} {name}"
            )
        assert got.history[-1]["l0"] == pytest.approx(alone.history[-1]["l0"])
        assert got.history[-1]["ev"] == pytest.approx(alone.history[-1]["ev"], abs=1e-4)
        assert set(got.trajectory) == set(alone.trajectory)
        torch.testing.assert_close(got.W_dec_init, alone.W_dec_init)


def test_per_slot_k_is_each_slots_own_topk():
    """Dense reference: slot s keeps exactly its own k largest pre-activations."""
    from husai.sae.architectures import TopKSAE

    sae = TopKSAE(3, 6, 20, [1, 5, 3])
    pre = torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(0))
    z = sae.activate(pre)
    for s, k in enumerate([1, 5, 3]):
        want = torch.zeros_like(pre[s]).scatter(
            -1, pre[s].topk(k, -1).indices, pre[s].topk(k, -1).values.relu()
        )
        torch.testing.assert_close(z[s], want)


def test_a_cell_of_a_shared_pass_saves_with_its_own_k(tmp_path):
    base = SAETrainConfig(architecture="topk", expansion=2, k=3, epochs=1, batch_size=64)
    res = train_cells(_acts(), [(base, [1]), (replace(base, k=6), [2])])
    sae = res[1].sae
    save_sae(tmp_path / "s", sae, 0)
    loaded = load_sae(tmp_path / "s")
    assert loaded.cfg["k"] == 6 and loaded.cfg["metadata"]["husai_hparams"]["k"] == 6


def test_cells_that_differ_beyond_k_never_share_a_pass():
    base = SAETrainConfig(architecture="topk", expansion=2, k=3, epochs=1, batch_size=64)
    cells = [
        (base, [1]),
        (replace(base, expansion=4), [1]),
        (replace(base, k=5), [1]),
        (replace(base, architecture="relu"), [1]),
        (replace(base, architecture="relu"), [2]),
    ]
    assert group(cells) == [[0, 2], [1], [3, 4]]  # two ReLU cells with one config: just more seeds
    with pytest.raises(ValueError, match="cannot share"):
        train_cells(_acts(), cells, passes=[[0, 1]])
