"""The data's own geometry: where stability is measured so that it does not depend on the basis.

Why not raw decoder cosines. Adam is not rotation-invariant: trained decoder rows drift out of the
span of the activations, differently per seed, and the drift depends on the coordinates (raw PW-MCC
0.651 in the model's basis, 0.295 after rotating the same activations into their PCA basis; inside
the span 0.830 and 0.844; docs/methods.md, "The data metric"). The off-span part is invisible to the
data, so it says nothing about the features.

The data metric. A dictionary row w [d_in] is compared through its coordinates in the span of the
principal directions that hold >= SPAN_VARIANCE of the activation variance,

    y = w Q,    Q [d_in, r] orthonormal (the top-r eigenvectors of Cov(x)),

and two rows by the cosine of their y's. Rotating the activations, x -> x R, rotates Q -> R^T Q, so
y and every cosine is unchanged: the metric is basis-free. We project rather than whiten (y
Lambda^{-1/2}): both are basis-free, but whitening gives a direction holding 0.1% of the variance
the weight of one holding 35%, so the noise directions at the span's edge would dominate the
cosines; projection keeps the Euclidean metric that the SAE's own MSE uses. `off_span` (the share of
a row's squared norm outside span(Q)) is reported per SAE as a training-health figure, not folded
into the comparison.

The symmetry of the task. For (a + b) mod p the shift (a, b) -> (a + t, b + t) maps the input grid
onto itself, and the activations move with it by a linear map of the span (a rotation of each
Fourier plane; `shift_map`). An SAE moved by it is an equally good SAE placed at another phase:
the symmetry null of husai.analysis.agreement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SPAN_VARIANCE = 0.999
"""The span holds >= 99.9% of the activation variance (21 of 128 dimensions at the default model's
resid_post; the key-frequency planes alone hold 99.7%, docs/methods.md,
"blocks.0.hook_resid_post")."""


@dataclass
class DataSpan:
    """The principal subspace of a set of activations."""

    mean: torch.Tensor
    """[d_in] the activations' mean."""
    basis: torch.Tensor
    """Q [d_in, r], orthonormal columns, by descending variance."""
    variances: torch.Tensor
    """[r] the variance along each column of Q."""
    share: float
    """The share of the total variance that span(Q) holds (>= the requested share)."""

    def coords(self, W: torch.Tensor) -> torch.Tensor:
        """Rows W [n, d_in] -> their span coordinates W Q [n, r] (float64)."""
        return W.detach().to("cpu", torch.float64) @ self.basis

    def unit_coords(self, W: torch.Tensor) -> torch.Tensor:
        """Span coordinates scaled to unit norm [n, r]: what the data metric compares by cosine.
        A row with no component in the span stays zero (cosine 0 with everything)."""
        Y = self.coords(W)
        return Y / Y.norm(dim=1, keepdim=True).clamp_min(1e-30)

    def off_span(self, W: torch.Tensor) -> torch.Tensor:
        """[n] the share of each row's squared norm outside the span (0: inside it)."""
        W = W.detach().to("cpu", torch.float64)
        return 1 - self.coords(W).pow(2).sum(1) / W.pow(2).sum(1).clamp_min(1e-30)

    def data_coords(self, acts: torch.Tensor) -> torch.Tensor:
        """Centred activations [N, d_in] -> their span coordinates [N, r]."""
        return (acts.detach().to("cpu", torch.float64) - self.mean) @ self.basis


_LAST: list = []
"""data_span's last results as (acts, its _version, share, span): the same tensor object is asked
for its span several times per comparison (stability, frequency level; an SVD of [12769, 512] ~1 s).
The entry holds the tensor itself, so its identity cannot pass to another; _version catches an
in-place change."""


def data_span(acts: torch.Tensor, share: float = SPAN_VARIANCE) -> DataSpan:
    """The fewest principal directions of acts [N, d_in] holding >= `share` of the variance.

    Raises ValueError for constant activations (no direction holds any variance)."""
    for a, version, sh, span in _LAST:
        if a is acts and version == acts._version and sh == share:
            return span
    span = _data_span(acts, share)
    _LAST[:] = ([(acts, acts._version, share, span)] + _LAST)[:2]
    return span


def _data_span(acts: torch.Tensor, share: float) -> DataSpan:
    X = acts.detach().to("cpu", torch.float64)
    mu = X.mean(0)
    X = X - mu
    _, s, Vh = torch.linalg.svd(X, full_matrices=False)
    var = s.pow(2)
    total = float(var.sum())
    if not total > 0:
        raise ValueError("the activations are constant: they span no direction")
    energy = var.cumsum(0) / total
    r = int((energy < share - 1e-12).sum()) + 1
    r = min(r, len(s))
    return DataSpan(
        mu, Vh[:r].T.contiguous(), var[:r] / max(X.shape[0] - 1, 1), float(energy[r - 1])
    )


def shift_permutation(p: int, t: int) -> torch.Tensor:
    """Row index of input (a + t, b + t) for every row a * p + b of the p^2 grid. -> [p^2] long."""
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    return ((a + t) % p) * p + (b + t) % p


def shift_map(Y: torch.Tensor, p: int, t: int) -> torch.Tensor:
    """M [r, r] orthogonal with Y[shift(n)] ~ Y[n] M: how the shift by t moves span coordinates.

    Y: [p^2, r] the span coordinates of the centred activations on the grid (row a * p + b).
    The shift permutes the inputs, so it keeps the covariance: the exact map is a rotation inside
    each Fourier plane (cos/sin pairs of equal variance), i.e. orthogonal. We take the orthogonal M
    closest in least squares (Procrustes: U V^T from the SVD of Y^T Y_shift). An unconstrained
    least-squares map is not orthogonal here (singular values 0.34-2.35 at the default resid_post,
    measured): the span's weakest directions (variance ~1 against ~400) are not exactly
    shift-covariant, and it would stretch them. A decoder row d (a reconstruction direction) moves
    to d M, an encoder row e (a read-out direction) to e M^{-T} = e M.
    """
    U, _, Vh = torch.linalg.svd(Y.T @ Y[shift_permutation(p, t)])
    return U @ Vh
