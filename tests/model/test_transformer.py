"""The model: TransformerLens names, shapes and hooks; the fast path equals the plain path.
That a run loads into TransformerLens 3 and 4 with the same logits and cache:
tests/model/test_interop.py."""

import pytest
import torch
import torch.nn.functional as F

from husai.model.data import make_tokens
from husai.model.transformer import ModelConfig, Transformer

HOOKS = [
    "hook_embed",
    "hook_pos_embed",
    "blocks.0.hook_resid_pre",
    "blocks.0.attn.hook_pattern",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.0.mlp.hook_pre",
    "blocks.0.mlp.hook_post",
    "blocks.0.hook_mlp_out",
    "blocks.0.hook_resid_post",
]


def _model(p=23, n_layers=1, seed=0, random_biases=False):
    m = Transformer(ModelConfig(p=p, n_layers=n_layers)).init_weights(seed)
    if random_biases:  # biases are zero in training; make the test see whether they are used right
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for b in m.buffers():
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return m


def test_parameter_names_and_shapes_are_transformer_lens():
    sd = _model(p=113).state_dict()
    assert sd["embed.W_E"].shape == (114, 128)
    assert sd["pos_embed.W_pos"].shape == (3, 128)
    assert sd["blocks.0.attn.W_Q"].shape == (4, 128, 32)
    assert sd["blocks.0.attn.W_O"].shape == (4, 32, 128)
    assert sd["blocks.0.mlp.W_in"].shape == (128, 512)
    assert sd["blocks.0.mlp.W_out"].shape == (512, 128)
    assert sd["unembed.W_U"].shape == (128, 113)


def test_every_hook_is_exposed_with_position_axis():
    m = _model()
    tokens = make_tokens(23)
    logits, cache = m.run_with_cache(tokens)
    assert set(HOOKS) <= set(cache) and set(cache) == set(m.hook_names())
    assert cache["blocks.0.attn.hook_pattern"].shape == (23 * 23, 4, 3, 3)
    assert cache["blocks.0.mlp.hook_post"].shape == (23 * 23, 3, 512)
    # The causal mask: position 0 attends only to itself.
    assert torch.allclose(cache["blocks.0.attn.hook_pattern"][:, :, 0, 0], torch.ones(1))
    # Residual bookkeeping holds exactly as named.
    torch.testing.assert_close(
        cache["blocks.0.hook_resid_post"],
        cache["blocks.0.hook_resid_mid"] + cache["blocks.0.hook_mlp_out"],
    )
    torch.testing.assert_close(
        logits[:, -1], cache["blocks.0.hook_resid_post"][:, -1] @ m.unembed.W_U
    )


@pytest.mark.parametrize("n_layers", [1, 2])
def test_fast_path_matches_plain_path(n_layers):
    m = _model(n_layers=n_layers, random_biases=True)
    tokens = make_tokens(23)
    fast = m(tokens)  # table fast path for 1 layer, last-only generic path for 2
    plain, _ = m.run_with_cache(tokens)
    torch.testing.assert_close(fast, plain[:, -1], rtol=1e-5, atol=1e-5)
    # Gradients agree too (the fast path's gathers must scatter back correctly).
    labels = torch.randint(0, 23, (23 * 23,), generator=torch.Generator().manual_seed(0))
    g_fast = torch.autograd.grad(F.cross_entropy(m(tokens), labels), list(m.parameters()))
    g_plain = torch.autograd.grad(
        F.cross_entropy(m.run_with_hooks(tokens, [("hook_embed", lambda x: x)]), labels),
        list(m.parameters()),
    )
    for a, b in zip(g_fast, g_plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_run_with_hooks_replaces_activation():
    m = _model()
    tokens = make_tokens(23)
    zeroed = m.run_with_hooks(tokens, [("blocks.0.hook_resid_post", torch.zeros_like)])
    assert torch.allclose(zeroed, m.unembed.b_U.expand_as(zeroed))


def test_same_seed_same_weights_different_seed_different():
    a, b, c = _model(seed=3).state_dict(), _model(seed=3).state_dict(), _model(seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.W_E"], c["embed.W_E"])
