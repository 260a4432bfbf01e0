"""What each latent is, read against the ground truth of its hook (husai.analysis.ground_truth).

Per live latent, from its activations z over all inputs and its decoder row w:

    answer_share        share of z's centred variance explained by E[z | c] (a function of the
                        answer)
    inputs_share        ... by a function of a plus a function of b (f(a) + g(b))
    purity, frequency   its best single frequency's 3x3-block share (the MLP-neuron rule, kept and
                        named as such: no sparse latent reaches 0.85, see
                        husai.analysis.latent_fourier)
    off_span            fraction of ||w||^2 outside the span of all planes
    in_output, in_input fraction of the in-span part of w in each key frequency's output / input
                        plane
    centroid_cos        largest cosine between the in-span part of w and an answer-class centroid
    firing_rate         fraction of inputs where z > 0

Types, first rule that holds (the thresholds below, each with its reason):

    plane feature     a function of the answer smooth on one circle (its variance at that
                      frequency's first harmonics), decoder mostly in that circle's output plane
    answer detector   a function of the answer, decoder close to one class centroid
    input feature     a function of the inputs taken separately, f(a) + g(b)
    patch             none of these and fires on under 5% of the inputs (rare; whether those inputs
                      form one connected region of the torus is not checked)
    other
"""

from __future__ import annotations

import torch

from husai.analysis.ground_truth import (
    GroundTruth,
    frequency_masks,
    frequency_purity,
    grid_power,
    on_grid,
)

FUNCTION_OF = 0.8
"""A latent is "a function of" c (or of the inputs) when that explains >= 80% of its variance."""
IN_PLANE = 0.5
"""A decoder row lies "in" a plane when more than half its squared norm is there (for the nearly
orthogonal planes of a grokked model, at most one plane can hold that much)."""
NEAR_CENTROID = 0.8
"""A decoder row is "near" a class centroid at cosine >= 0.8 (the p centroids are far apart)."""
ON_CIRCLE = 0.5
"""A plane feature's activation is a function of its circle's phase w_k c with most of its answer
variance at the circle's first harmonics (k, 2k): ReLU(cos(w_k c - phi)) has 99% there, a one-answer
detector 2 of the (p-1)/2 frequencies' worth (3.6% at p = 113, measured). Any function of c is some
function of the phase (c -> k c is a bijection mod p), so smoothness on the circle is what makes it
a circle feature."""
PATCH_RATE = 0.05
"""A patch fires on under 5% of the inputs (a single answer class is 1/p, under 1% for p = 113)."""
TYPES = ("plane feature", "answer detector", "input feature", "patch", "other")


def _shares(power: torch.Tensor, gt: GroundTruth, freqs: list[int]) -> tuple[torch.Tensor, ...]:
    """From the latents' grid power [n, n, m]: (answer share, a-or-b share, and [m, len(freqs)] the
    share of the answer part at the first two harmonics of each frequency's circle, k and 2k)."""
    n = gt.grid.n
    masks = frequency_masks(gt.grid)
    total = power.sum(dim=(0, 1)).clamp_min(1e-30)
    answer_power = power[masks["answer"]].sum(0)
    harmonics = []
    for k in freqs:  # on the answer diagonal, a function of c at frequency u sits at (u, +-u)
        us = {(h * k) % n for h in (1, 2)} | {(-h * k) % n for h in (1, 2)}
        harmonics.append(
            sum(power[uu, (-uu if gt.grid.operation == "sub" else uu) % n] for uu in us if uu)
        )
    harmonic = (
        torch.stack(harmonics, 1) / answer_power.clamp_min(1e-30).unsqueeze(1)
        if freqs
        else power.new_zeros(power.shape[2], 0)
    )
    return answer_power / total, power[masks["a"] | masks["b"]].sum(0) / total, harmonic


def latent_types(latent_acts: torch.Tensor, W_dec: torch.Tensor, gt: GroundTruth) -> dict:
    """Per-latent measures and types (module docstring) for an SAE at the hook `gt` describes.

    latent_acts: [p*p, d_sae] over all inputs (rows a*p + b); W_dec: [d_sae, d]. Dead latents (never
    nonzero) are left out. Returns {thresholds, counts {type: n}, latents {index, type, ...}}.
    """
    live = (latent_acts[gt.grid.rows] != 0).any(
        0
    )  # live on the group grid, where everything below is measured
    idx = torch.nonzero(live).squeeze(1)
    thresholds = dict(
        function_of=FUNCTION_OF,
        in_plane=IN_PLANE,
        on_circle=ON_CIRCLE,
        near_centroid=NEAR_CENTROID,
        patch_rate=PATCH_RATE,
    )
    if len(idx) == 0:  # every latent dead: nothing to type
        return dict(
            thresholds=thresholds,
            n_live=0,
            counts={t: 0 for t in TYPES},
            examples={t: [] for t in TYPES},
            mean=dict(
                answer_share=None,
                inputs_share=None,
                off_span=None,
                in_output_planes=None,
                in_input_planes=None,
            ),
            latents=[],
        )
    Z = on_grid(latent_acts[:, idx], gt.grid)
    outs = [pl for pl in gt.planes if pl.name.startswith("out")]
    power = grid_power(Z, gt.grid)  # one DFT for the shares and the purity
    answer, inputs, harmonic = _shares(power, gt, [int(pl.name.split()[1]) for pl in outs])
    purity, freq = frequency_purity(Z, gt.grid, power).max(dim=1)
    del power
    W = W_dec[idx].double()
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    off_span = 1 - (W @ gt.span).pow(2).sum(1)
    # Plane fractions and centroid cosines of the row's in-span part: how far a decoder drifted off
    # the data span is a property of the training coordinates (docs/methods.md, "The data metric"),
    # kept as off_span.
    W = W @ gt.span @ gt.span.T
    W = W / W.norm(dim=1, keepdim=True).clamp_min(1e-30)
    ins = [pl for pl in gt.planes if pl.name.startswith("in")]
    in_out = (
        torch.stack([(W @ pl.basis).pow(2).sum(1) for pl in outs], 1)
        if outs
        else W.new_zeros(len(idx), 0)
    )
    in_in = (
        torch.stack([(W @ pl.basis).pow(2).sum(1) for pl in ins], 1)
        if ins
        else W.new_zeros(len(idx), 0)
    )
    C = gt.centroids / gt.centroids.norm(dim=1, keepdim=True).clamp_min(1e-30)
    centroid_cos = (W @ C.T).max(dim=1).values
    rate = (latent_acts[gt.grid.rows][:, idx] > 0).double().mean(0)
    if outs:
        best_out, plane = in_out.max(dim=1)
        on_circle = harmonic.gather(1, plane.unsqueeze(1)).squeeze(
            1
        )  # at the decoder's own plane's frequency
    else:
        best_out = on_circle = torch.zeros(len(idx), dtype=torch.float64)
    types = []
    for i in range(len(idx)):
        if answer[i] >= FUNCTION_OF and best_out[i] > IN_PLANE and on_circle[i] >= ON_CIRCLE:
            types.append("plane feature")
        elif answer[i] >= FUNCTION_OF and centroid_cos[i] >= NEAR_CENTROID:
            types.append("answer detector")
        elif inputs[i] >= FUNCTION_OF:
            types.append("input feature")
        elif rate[i] < PATCH_RATE:
            types.append("patch")
        else:
            types.append("other")
    latents = [
        dict(
            index=int(j),
            type=types[i],
            answer_share=float(answer[i]),
            inputs_share=float(inputs[i]),
            purity=float(purity[i]),
            frequency=int(freq[i]) + 1,
            firing_rate=float(rate[i]),
            on_circle=float(on_circle[i]),
            centroid_cos=float(centroid_cos[i]),
            off_span=float(off_span[i]),
            in_output={pl.name.split()[1]: float(in_out[i, m]) for m, pl in enumerate(outs)},
            in_input={pl.name.split()[1]: float(in_in[i, m]) for m, pl in enumerate(ins)},
        )
        for i, j in enumerate(idx.tolist())
    ]
    counts = {t: types.count(t) for t in TYPES}
    mean = lambda v: float(v.mean()) if v.numel() else None
    return dict(
        thresholds=thresholds,
        n_live=len(idx),
        counts=counts,
        examples={t: [lat["index"] for lat in latents if lat["type"] == t][:5] for t in TYPES},
        mean=dict(
            answer_share=mean(answer),
            inputs_share=mean(inputs),
            off_span=mean(off_span),
            in_output_planes=mean(in_out.sum(1)) if outs else None,
            in_input_planes=mean(in_in.sum(1)) if ins else None,
        ),
        latents=latents,
    )
