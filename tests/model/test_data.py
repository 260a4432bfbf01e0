"""The data format is pinned: input [a, b, =], label at `=`, answer never an input token."""

import pytest
import torch

from husai.errors import HusaiError
from husai.model.data import make_dataset, make_labels, make_tokens


def test_input_is_exactly_a_b_equals_and_answer_never_an_input():
    p = 7
    tokens, labels = make_tokens(p), make_labels(p)
    assert tokens.shape == (p * p, 3)
    for row, (a, b) in enumerate([(a, b) for a in range(p) for b in range(p)]):
        assert tokens[row].tolist() == [a, b, p]  # `=` is token id p
        assert labels[row].item() == (a + b) % p
    # Leakage guard: no sequence position ever carries the answer c (unless c coincides with a or b
    # by arithmetic, which happens for b = 0 or a = 0 only).
    same = (tokens[:, 0] == labels) | (tokens[:, 1] == labels)
    assert same.sum().item() == 2 * p - 1 and bool(
        ((tokens[:, 0] == 0) | (tokens[:, 1] == 0))[same].all()
    )
    assert (tokens[:, 2] == p).all()


def test_operations():
    p = 5
    assert make_labels(p, "sub")[1 * p + 3].item() == (1 - 3) % p
    assert make_labels(p, "mul")[4 * p + 3].item() == (4 * 3) % p


def test_split_is_seeded_disjoint_and_complete():
    d1, d2, d3 = make_dataset(23, 0.3, 0), make_dataset(23, 0.3, 0), make_dataset(23, 0.3, 1)
    assert torch.equal(d1.train_idx, d2.train_idx)
    assert not torch.equal(d1.train_idx, d3.train_idx)
    assert len(d1.train_idx) == round(0.3 * 23 * 23)
    both = torch.cat([d1.train_idx, d1.test_idx]).sort().values
    assert torch.equal(both, torch.arange(23 * 23))


@pytest.mark.parametrize("p", [1, 2, 4, 15, 100])
def test_bad_modulus(p):
    with pytest.raises(HusaiError, match="prime"):
        make_tokens(p)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.5, 1.5])
def test_bad_train_frac(frac):
    with pytest.raises(HusaiError, match="train fraction"):
        make_dataset(23, frac, 0)
