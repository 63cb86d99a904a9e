"""A wider decoder that starts as the function of a trained one (Net2Net-style widening).

A decoder trained from scratch at twice the width needs thousands of steps to catch up with the
narrow one it replaces. Widening by an integer ``factor`` copies every internal feature channel
``factor`` times, so the wide decoder computes exactly the narrow decoder's image on the first
step and training only has to add what the extra width can hold.

Layout: wide channel ``j`` of any internal feature map is a copy of narrow channel ``j // factor``.
That keeps every GroupNorm group a set of whole copies of one narrow group (32 groups at both
widths), so group means and variances are unchanged. A convolution's weights are gathered by the
same map on both sides; the weight of each narrow input channel is split over its ``factor``
copies by random positive shares that sum to one, so the sum a wide output sees is the narrow one.
The shares differ between copies of the same output channel: their gradients then differ and the
copies drift apart in training (with equal halves they would stay equal forever). Attention's
queries are scaled by 1/√factor because its dot products run over ``factor`` times the channels
while ``scaled_dot_product_attention`` divides by √(width), which only grows by √factor.

The latent (``conv_in``'s input) and the pixels (``conv_out``'s output) keep their widths.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from openhart.tokenizer.autoencoder import AttnBlock, Decoder
from openhart.tokenizer.hybrid import HybridTokenizer, with_decoder_of

# Copies get shares drawn from U(SHARE_LOW, SHARE_HIGH) before normalising: bounded away from 0,
# so no copy starts dead and none holds more than a few times another's weight.
SHARE_LOW = 0.5
SHARE_HIGH = 1.5


def widen_tokenizer_decoder(
    tokenizer: HybridTokenizer, decoder_ch: int, generator: torch.Generator
) -> HybridTokenizer:
    """``tokenizer`` with its decoder widened to ``decoder_ch``, computing the same images.

    Everything outside the decoder is copied unchanged. ``decoder_ch`` must be a whole multiple of
    the current decoder width, at least twice it (ValueError otherwise: widening to the same width
    would silently train the trained decoder); ``generator`` draws the weight shares.
    """
    config = tokenizer.config
    width = config.decoder_width
    if decoder_ch % width != 0 or decoder_ch <= width:
        raise ValueError(
            f"a widened decoder needs decoder_ch a whole multiple (2x or more) of the trained "
            f"decoder's width {width}, got {decoder_ch}"
        )
    wide = with_decoder_of(tokenizer, config.replace(decoder_ch=decoder_ch))
    widen_decoder_into(tokenizer.decoder, wide.decoder, decoder_ch // width, generator)
    return wide


@torch.no_grad()
def widen_decoder_into(narrow: Decoder, wide: Decoder, factor: int, generator: torch.Generator) -> None:
    """Fill ``wide`` (``factor`` times ``narrow``'s width, same layout) with ``narrow``'s function."""
    wide_modules = dict(wide.named_modules())
    for name, module in narrow.named_modules():
        target = wide_modules[name]
        if isinstance(module, nn.Conv2d):
            in_factor = 1 if name == "conv_in" else factor
            out_factor = 1 if name == "conv_out" else factor
            parent = narrow.get_submodule(name.rpartition(".")[0])
            is_qkv = isinstance(parent, AttnBlock) and module is parent.qkv
            _widen_conv(module, target, in_factor, out_factor, is_qkv, generator)
        elif isinstance(module, nn.GroupNorm):
            # Affine parameters per channel: each copy keeps its narrow channel's.
            target.weight.copy_(module.weight.repeat_interleave(factor))
            target.bias.copy_(module.bias.repeat_interleave(factor))


def _output_map(conv: nn.Conv2d, out_factor: int, is_qkv: bool) -> torch.Tensor:
    """For each wide output channel, the narrow one it copies."""
    if not is_qkv:
        return torch.arange(conv.out_channels * out_factor) // out_factor
    # qkv holds q, k and v one after another: copy within each of the three.
    width = conv.out_channels // 3
    part = torch.arange(width * out_factor) // out_factor
    return torch.cat([part + index * width for index in range(3)])


def _widen_conv(
    narrow: nn.Conv2d,
    wide: nn.Conv2d,
    in_factor: int,
    out_factor: int,
    is_qkv: bool,
    generator: torch.Generator,
) -> None:
    rows = _output_map(narrow, out_factor, is_qkv).to(narrow.weight.device)
    weight = narrow.weight[rows]  # (O·fo, I, kh, kw)
    out_channels, in_channels, kh, kw = weight.shape
    if in_factor > 1:
        # Drawn where the generator lives (a CPU generator for a model on any device).
        shares = torch.empty((out_channels, in_channels, in_factor, kh, kw), dtype=torch.float64)
        shares.uniform_(SHARE_LOW, SHARE_HIGH, generator=generator)
        shares /= shares.sum(dim=2, keepdim=True)
        # Copy c·f + k of input channel c gets share k of c's weight.
        split = weight.unsqueeze(2).double() * shares.to(weight.device)
        weight = split.reshape(out_channels, in_channels * in_factor, kh, kw)
    wide.weight.copy_(weight.to(wide.weight.dtype))
    if narrow.bias is not None:
        wide.bias.copy_(narrow.bias[rows])
    if is_qkv:
        # q is the first third of qkv's outputs (AttnBlock's channel order).
        queries = wide.out_channels // 3
        wide.weight[:queries] /= math.sqrt(out_factor)
        wide.bias[:queries] /= math.sqrt(out_factor)
