"""A deeper decoder that starts as the function of a trained one (identity blocks appended).

Widening (``openhart.tokenizer.widen``) adds channels; this adds ResNet blocks. Every level of the
decoder gets the extra blocks at its end, after the trained ones and before its upsample, where
input and output widths are equal and a block is ``x + conv2(...)`` with a plain skip. With
``conv2`` at zero such a block is the identity, so the deeper decoder draws exactly the trained
decoder's images on the first step. ``conv2`` still gets a gradient (its input is not zero), so the
block starts learning at once; ``conv1`` follows as soon as ``conv2`` is non-zero. The level with
attention gets one attention block per new ResNet block, made the identity by its zero
``proj_out`` in the same way.

Appending at the end of each level (not only at level 0) follows from one depth per level
(``decoder_num_res_blocks``); the full-resolution level is the one the fine error is drawn by.
"""

from __future__ import annotations

import torch

from openhart.tokenizer.autoencoder import Decoder
from openhart.tokenizer.hybrid import HybridTokenizer, with_decoder_of


def deepen_tokenizer_decoder(tokenizer: HybridTokenizer, decoder_num_res_blocks: int) -> HybridTokenizer:
    """``tokenizer`` with ``decoder_num_res_blocks`` (more than now) per decoder level, same images.

    Everything outside the decoder is copied unchanged. A depth that is not larger than the
    current one is a ValueError: it would silently retrain the trained decoder.
    """
    config = tokenizer.config
    blocks = config.decoder_blocks
    if decoder_num_res_blocks <= blocks:
        raise ValueError(
            f"a deepened decoder needs decoder_num_res_blocks above the trained decoder's {blocks}, "
            f"got {decoder_num_res_blocks}"
        )
    deep = with_decoder_of(tokenizer, config.replace(decoder_num_res_blocks=decoder_num_res_blocks))
    deepen_decoder_into(tokenizer.decoder, deep.decoder)
    return deep


@torch.no_grad()
def deepen_decoder_into(shallow: Decoder, deep: Decoder) -> None:
    """Fill ``deep`` (more blocks per level, same widths) with ``shallow``'s function."""
    # Same names for every trained module: conv_in, mid, up.<level>.block.<j> for the first
    # blocks of each level, its upsample, norm_out and conv_out.
    _, unexpected = deep.load_state_dict(shallow.state_dict(), strict=False)
    if unexpected:
        raise RuntimeError(f"deepened decoder: the trained decoder has modules it lacks: {unexpected}")
    for shallow_level, deep_level in zip(shallow.up, deep.up, strict=True):
        for block in list(deep_level.block)[len(shallow_level.block) :]:
            block.conv2.weight.zero_()
            block.conv2.bias.zero_()
        for attention in list(deep_level.attn)[len(shallow_level.attn) :]:
            attention.proj_out.weight.zero_()
            attention.proj_out.bias.zero_()


def appended_parameter_names(shallow: HybridTokenizer, deep: HybridTokenizer) -> tuple[str, ...]:
    """Names (in ``deep.named_parameters()``) of the blocks that deepening ``shallow`` appended."""
    kept = {name for name, _ in shallow.named_parameters()}
    return tuple(name for name, _ in deep.named_parameters() if name not in kept)
