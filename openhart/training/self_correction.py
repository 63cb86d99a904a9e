"""Self-correcting teacher forcing: earlier scales hold plausible mistakes, later scales fix them.

At sampling the transformer reads its *own* draws of the earlier scales; plain teacher forcing
only ever shows it the tokenizer's tokens, so it never learns what to do after a wrong draw, and
at ~40% token accuracy most of its draws are not the tokenizer's. Infinity (Han et al., 2024)
flips bits of earlier scales during training and recomputes the later scales' targets from the
flipped history. The same for an index codebook:

1. scale by scale, the target token is the code nearest to what the history so far misses
   (exactly the tokenizer's split while nothing is replaced);
2. a random fraction of the scale's tokens is replaced by one of the ``neighbours − 1`` codes
   nearest to the target other than itself: a mistake a model makes, not a random code;
3. the running reconstruction takes the replaced codes, so every later scale's target (and the
   residual head's) is what *that* history still misses: the model learns to correct, not copy.

The replacements may instead come from the model itself (``proposals``): its own draws for each
earlier scale on a teacher-forced pass, so the history holds the mistakes it actually makes.

Identity that holds by construction (and is tested): latent = Σ_{k<S−1} Φ_k(up(emb(input_ids_k)))
+ last_latent, for any replaced fraction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from openhart.tokenizer.quantizer import MultiScaleQuantizer
from openhart.utils.random import GeneratorSpec, rand_tensor


@dataclass
class CorruptedSplit:
    """One batch's training tokens; per-scale lists hold (B, pn_k²) int64, row-major."""

    target_ids: list[torch.Tensor]  # the nearest code to what the (replaced) history misses
    input_ids: list[torch.Tensor]  # the targets with the replaced tokens: what later scales read
    last_latent: torch.Tensor  # (B, Cz, H, W) latent minus the Φ'd earlier scales' input codes
    replaced: torch.Tensor  # () float: the fraction of the earlier scales' tokens replaced


@torch.no_grad()
def corrupted_split(
    quantize: MultiScaleQuantizer,
    latent: torch.Tensor,
    fraction: torch.Tensor,
    neighbours: int,
    generator: GeneratorSpec = None,
    proposals: Sequence[torch.Tensor] | None = None,
) -> CorruptedSplit:
    """Split ``latent`` (B, Cz, H, W) into scales, replacing a ``fraction`` (B,) of each image's
    tokens of every scale but the last by one of the ``neighbours − 1`` other nearest codes, or,
    given ``proposals`` (one (B, pn_k²) id tensor per earlier scale, e.g. a model's draws), by the
    proposed token at that position (a proposal equal to the target changes nothing).

    ``fraction`` all zero gives the tokenizer's own split (``quantize.quantize``) for targets and
    inputs alike. Draws come from ``generator`` (the trainer's per-step one). ``replaced`` counts
    the tokens that differ from their target.
    """
    quantize.check_latent(latent, "latent")
    B = latent.shape[0]
    if fraction.shape != (B,):
        raise ValueError(f"fraction: expected shape ({B},), got {tuple(fraction.shape)}")
    if not 2 <= neighbours <= quantize.codebook_size:
        raise ValueError(f"neighbours: expected 2..{quantize.codebook_size}, got {neighbours}")
    Cz, last = quantize.latent_channels, quantize.num_scales - 1
    if proposals is not None:
        expected = [(B, n) for n in quantize.scale_lengths[:last]]
        shapes = [tuple(p.shape) for p in proposals]
        if shapes != expected:
            raise ValueError(
                f"proposals: expected one id tensor per earlier scale, shapes {expected}, got {shapes}"
            )
    rest = latent  # what the (replaced) history has not explained
    target_ids: list[torch.Tensor] = []
    input_ids: list[torch.Tensor] = []
    replaced = torch.zeros((), device=latent.device)
    for k in range(quantize.num_scales):
        rows = quantize.downsample_to_scale(rest, k).permute(0, 2, 3, 1).reshape(-1, Cz)  # (B·pn², Cz)
        dist = quantize.code_distances(rows)  # (B·pn², V), nearest_code's numbers
        ids = dist.argmin(dim=1).view(B, -1)  # (B, pn²): the split's token, first index on ties
        target_ids.append(ids)
        if k == last:  # never read by a later scale: nothing to replace
            input_ids.append(ids)
            break
        n = ids.shape[1]
        swap = rand_tensor((B, n), generator, device=latent.device) < fraction.view(B, 1).to(latent.device)
        if proposals is None:
            pick = (rand_tensor((B, n), generator, device=latent.device) * (neighbours - 1)).long()
            pick = pick.clamp_(max=neighbours - 2)  # (B, pn²) which of the other near codes
            dist.scatter_(1, ids.view(-1, 1), float("inf"))  # never "replace" a token by itself
            near = dist.topk(neighbours - 1, dim=1, largest=False).indices.view(B, n, -1)  # nearest first
            replacement = near.gather(2, pick.unsqueeze(-1)).squeeze(-1)
        else:
            replacement = proposals[k].to(ids.device)
        inputs = torch.where(swap, replacement, ids)
        input_ids.append(inputs)
        replaced = replaced + (inputs != ids).sum()
        rest = rest - quantize.phi(quantize.upsample_to_latent(quantize.code_map(inputs, k)), k)
    earlier_tokens = B * sum(quantize.scale_lengths[:last])
    # rest: the latent minus the earlier scales' input codes, what the last scale and head explain
    return CorruptedSplit(target_ids, input_ids, rest, replaced / max(earlier_tokens, 1))
