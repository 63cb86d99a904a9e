"""Deepening a trained transformer (openhart/transformer/growth.py): same function, and trainable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from openhart import HartPipeline
from openhart.transformer import HartTransformer, HartTransformerConfig
from openhart.transformer.growth import GrowthError, deepen, new_block_positions
from tests.conftest import make_tiny_pipeline, perturb_
from tests.test_transformer import BASE, _cached_logits, _inputs

ROOT = Path(__file__).resolve().parents[1]


def _trained_like(depth: int = 3, **overrides) -> HartTransformer:
    """A model whose every weight is live (perturbed), as after training."""
    torch.manual_seed(0)
    model = HartTransformer(HartTransformerConfig(**{**BASE, "depth": depth, **overrides})).eval()
    perturb_(model, seed=1)
    return model


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [(6, 10, [2, 4, 6, 8]), (6, 12, [1, 3, 5, 7, 9, 11]), (3, 4, [2]), (2, 5, [1, 2, 4]), (4, 4, [])],
)
def test_new_blocks_are_spread_among_the_old(old, new, expected):
    assert new_block_positions(old, new) == expected


def test_growing_to_a_smaller_depth_is_refused():
    with pytest.raises(GrowthError, match="smaller depth 2"):
        deepen(_trained_like(depth=3), 2, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "overrides", [{}, {"adaln": "table"}, {"adaln": "none", "level_embedding": "table"}], ids=str
)
def test_grown_transformer_computes_the_same_logits_teacher_forced_and_cached(overrides):
    old = _trained_like(depth=3, **overrides)
    before = {name: value.clone() for name, value in old.state_dict().items()}
    grown = deepen(old, 5, torch.Generator().manual_seed(0)).eval()
    assert grown.config.depth == 5 and len(grown.blocks) == 5
    context, mask, inputs = _inputs(old.config)
    with torch.no_grad():
        expected = old(context, mask, inputs).logits
        assert torch.equal(grown(context, mask, inputs).logits, expected)  # zero branches add exact zeros
        cached, _ = _cached_logits(grown, context, mask, inputs)
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)
    # The old blocks sit in the grown model in their order; the original is untouched.
    old_positions = [i for i in range(5) if i not in new_block_positions(3, 5)]
    for old_block, index in zip(old.blocks, old_positions, strict=True):
        assert torch.equal(grown.blocks[index].attn.qkv_proj.weight, old_block.attn.qkv_proj.weight)
    assert all(torch.equal(before[name], value) for name, value in old.state_dict().items())


def test_new_blocks_learn_from_the_first_steps():
    old = _trained_like(depth=2)
    grown = deepen(old, 3, torch.Generator().manual_seed(0)).train()
    new = grown.blocks[new_block_positions(2, 3)[0]]
    start = {name: value.clone() for name, value in new.named_parameters()}
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-2)
    context, mask, inputs = _inputs(old.config)
    targets = torch.randint(0, old.config.codebook_size, (3, old.config.num_image_tokens))
    for _ in range(2):  # step 1 moves the zero output projections, step 2 everything behind them
        logits = grown(context, mask, inputs).logits
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    moved = {name for name, value in new.named_parameters() if not torch.equal(value, start[name])}
    for name in ("attn.proj.weight", "ffn.down_proj.weight", "attn.qkv_proj.weight", "ffn.gate_proj.weight"):
        assert name in moved, f"{name} of the new block did not train"


def test_new_block_weights_follow_the_generator():
    old = _trained_like(depth=2)
    a = deepen(old, 3, torch.Generator().manual_seed(5)).state_dict()
    b = deepen(old, 3, torch.Generator().manual_seed(5)).state_dict()
    c = deepen(old, 3, torch.Generator().manual_seed(6)).state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["blocks.1.attn.qkv_proj.weight"], c["blocks.1.attn.qkv_proj.weight"])


def test_grow_script_saves_a_pipeline_that_draws_the_same_images(tmp_path):
    source = tmp_path / "source"
    make_tiny_pipeline(seed=3).save_pretrained(source)
    destination = tmp_path / "grown"
    command = [sys.executable, str(ROOT / "scripts" / "grow_generator.py"), str(source), str(destination)]
    subprocess.run([*command, "--depth", "4"], check=True, cwd=ROOT, capture_output=True, text=True)
    original, grown = HartPipeline.from_pretrained(source), HartPipeline.from_pretrained(destination)
    assert grown.transformer.config.depth == 4 and original.transformer.config.depth == 2
    images = [
        pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
        for pipeline in (original, grown)
    ]
    torch.testing.assert_close(images[1], images[0], atol=1e-5, rtol=0)
    # A destination that exists is never overwritten.
    refused = subprocess.run([*command, "--depth", "4"], cwd=ROOT, capture_output=True, text=True)
    assert refused.returncode != 0 and "exists" in refused.stderr
