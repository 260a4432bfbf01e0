"""SAELens-format folders: husai writes them, SAELens 6 loads them and encodes/decodes to the
same values, and husai's load_sae reads them (and SAELens's own saves) without pickle."""

from __future__ import annotations

import json

import pytest
import torch

from husai.errors import HusaiError
from husai.sae.checkpoint import load_sae, load_saes, save_sae
from husai.sae.train import train_saes

from tiny_sae_configs import tiny_configs

torch.set_num_threads(1)
import sae_lens  # noqa: E402  the interop extra is part of the test install: no skip

CFGS = tiny_configs(epochs=2)
SAELENS_ARCH = {
    "topk": "topk",
    "batchtopk": "jumprelu",
    "matryoshka": "jumprelu",
    "relu": "standard",
    "jumprelu": "jumprelu",
}


def _acts(n=256, d=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 0.5


@pytest.mark.parametrize("arch", list(CFGS))
def test_saelens_loads_husai_sae_and_agrees(arch, tmp_path):
    x = _acts()
    sae = train_saes(x, CFGS[arch], [1, 2]).sae
    save_sae(
        tmp_path / "s",
        sae,
        slot=1,
        metadata=dict(seed=2, hook_name="blocks.0.hook_resid_post", model_path="m"),
    )
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert cfg["architecture"] == SAELENS_ARCH[arch] and cfg["d_in"] == 8 and cfg["d_sae"] == 32
    assert (
        cfg["metadata"]["seed"] == 2 and cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    )
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "s"))
    ours = load_sae(tmp_path / "s")
    z_husai = sae.encode(x)[1].detach()
    with torch.no_grad():
        z_theirs = theirs.encode(x)
        x_theirs = theirs.decode(z_theirs)
    assert (z_husai > 0).any()
    torch.testing.assert_close(z_theirs, z_husai, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.encode(x), z_husai, rtol=1e-5, atol=1e-5)
    x_husai = sae.decode(sae.encode(x))[1].detach()
    torch.testing.assert_close(x_theirs, x_husai, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.decode(ours.encode(x)), x_husai, rtol=1e-5, atol=1e-5)
    assert ours.W_enc.shape == (8, 32) and ours.W_dec.shape == (32, 8)
    assert ours.b_enc.shape == (32,) and ours.b_dec.shape == (8,) and isinstance(ours.cfg, dict)


def test_load_sae_reads_a_saelens_saved_sae(tmp_path):
    from sae_lens import TopKSAE, TopKSAEConfig

    theirs = TopKSAE(TopKSAEConfig(d_in=8, d_sae=16, k=4))
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    theirs.save_model(str(tmp_path / "t"))
    ours = load_sae(tmp_path / "t")
    x = _acts()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.decode(ours.encode(x)), theirs(x), rtol=1e-5, atol=1e-5)


def test_load_saes_multi_and_single(tmp_path):
    sae = train_saes(_acts(), CFGS["topk"], [4, 9]).sae
    for i, s in enumerate([4, 9]):
        save_sae(tmp_path / "multi" / f"seed_{s}", sae, i, dict(seed=s))
    save_sae(tmp_path / "single", sae, 0, dict(seed=4))
    multi = load_saes(tmp_path / "multi")
    assert sorted(multi) == [4, 9]
    torch.testing.assert_close(multi[9].W_dec, sae.W_dec[1].detach())
    assert list(load_saes(tmp_path / "single")) == [4]


def test_load_sae_bad_folders(tmp_path):
    with pytest.raises(HusaiError, match="not found"):
        load_sae(tmp_path / "nope")
    sae = train_saes(_acts(), CFGS["topk"], [4]).sae
    save_sae(tmp_path / "s", sae, 0)
    w = tmp_path / "s" / "sae_weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(HusaiError, match="truncated or corrupt"):
        load_sae(tmp_path / "s")
    save_sae(tmp_path / "s", sae, 0)
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    cfg["d_sae"] = 99
    (tmp_path / "s" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(HusaiError, match="shape"):
        load_sae(tmp_path / "s")
