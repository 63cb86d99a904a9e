"""Deepen a trained HART transformer without changing what it computes.

Training a larger generator from scratch costs the whole schedule again; on a CPU that is days.
Growing the trained one instead keeps everything it has learnt: each new block is inserted with its
residual branches' output projections at zero, so it starts as the identity and the deeper model's
logits and last-scale hidden states equal the original's (up to float rounding). Training then
gives the new blocks work to do. The output projections receive gradients from the first step on
(their inputs are not zero), and the rest of each new block follows once they have moved.

The new blocks are spread evenly between the old ones (depth 6 → 10: two old blocks, then one
new block after each further old one), so that every stage of the network gains capacity, not only its top.
"""

from __future__ import annotations

import torch

from openhart.transformer.blocks import TransformerBlock
from openhart.transformer.model import HartTransformer


class GrowthError(ValueError):
    """The requested growth is not possible (e.g. a smaller depth than the model has)."""


def new_block_positions(old_depth: int, new_depth: int) -> list[int]:
    """Indices, in the deeper model, of the inserted blocks: spread evenly among the old ones.

    ``new_block_positions(6, 10) == [2, 4, 6, 8]``, i.e. old, old, new, old, new, old, new, old,
    new, old: the old blocks keep their order.
    """
    if new_depth < old_depth:
        raise GrowthError(f"cannot grow depth {old_depth} to a smaller depth {new_depth}")
    added = new_depth - old_depth
    # New block k goes after old block ceil((k + 1) · old / (added + 1)) − 1, i.e. evenly.
    after_old = [-(-(k + 1) * old_depth // (added + 1)) for k in range(added)]
    return [count + k for k, count in enumerate(after_old)]


def _silence(block: TransformerBlock) -> None:
    """Zero the block's residual output projections (under no_grad): it then adds nothing to its input."""
    block.attn.proj.weight.zero_()
    block.attn.proj.bias.zero_()
    block.ffn.down_proj.weight.zero_()


def deepen(transformer: HartTransformer, depth: int, generator: torch.Generator) -> HartTransformer:
    """A ``depth``-block copy of ``transformer`` that computes the same function.

    Every parameter of ``transformer`` is copied (the original is left untouched); the added blocks
    start as the identity (see the module docstring). ``generator`` seeds their input weights.
    """
    old_depth = transformer.config.depth
    positions = set(new_block_positions(old_depth, depth))
    config = transformer.config.replace(depth=depth)
    parameter = next(transformer.parameters())
    grown = HartTransformer(config).to(device=parameter.device, dtype=parameter.dtype)
    grown.reset_parameters(generator)  # what the copies below do not overwrite: the new blocks
    old_blocks = iter(transformer.blocks)
    with torch.no_grad():
        for index, block in enumerate(grown.blocks):
            if index in positions:
                _silence(block)
            else:
                block.load_state_dict(next(old_blocks).state_dict())
        outside_blocks = {
            name: value for name, value in transformer.state_dict().items() if not name.startswith("blocks.")
        }
        missing, unexpected = grown.load_state_dict(outside_blocks, strict=False)
    if unexpected or any(not name.startswith("blocks.") for name in missing):
        raise GrowthError(f"layouts differ outside the blocks: missing {missing}, unexpected {unexpected}")
    return grown
