"""Habits the package promises: no hard-coded CUDA, every preset's parts fit together."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from openhart.diffusion import ResidualDiffusionHead
from openhart.presets import PRESETS, preset_configs
from openhart.tokenizer import HybridTokenizer
from openhart.transformer import HartTransformer

PACKAGE = Path(__file__).resolve().parents[1] / "openhart"


def test_no_hard_coded_cuda_in_the_package():
    offenders = [
        f"{path.relative_to(PACKAGE.parent)}:{number}"
        for path in PACKAGE.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.cuda\(", line)
    ]
    assert not offenders, f".cuda() found: {offenders}"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_components_fit_and_shapes(name):
    configs = preset_configs(name)
    tok, tr, head, text = configs.tokenizer, configs.transformer, configs.diffusion_head, configs.text_encoder
    assert tok.patch_nums == tr.patch_nums and tok.codebook_size == tr.codebook_size
    assert tok.latent_channels == tr.latent_channels == head.latent_channels
    assert head.condition_dim == tr.width
    assert text.hidden_size == tr.context_dim and text.max_length == tr.context_tokens
    with torch.device("meta"):
        tokenizer = HybridTokenizer(tok)
        transformer = HartTransformer(tr)  # builds without allocating (meta device)
        ResidualDiffusionHead(head)
        images = torch.empty(2, 3, tok.image_size, tok.image_size)
        latent = tokenizer.encode(images)
        assert latent.shape == (2, tok.latent_channels, tok.patch_nums[-1], tok.patch_nums[-1])
        assert tokenizer.decode(latent).shape == images.shape
    assert transformer.config.num_image_tokens == sum(p * p for p in tok.patch_nums)


def test_release_preset_sizes():
    configs = preset_configs("hart-0.7b-1024")
    assert len(configs.transformer.patch_nums) == 14 and configs.tokenizer.image_size == 1024
    assert (
        configs.transformer.num_image_tokens + configs.transformer.context_tokens == 9751
    )  # 9750 + 1 (scale 0 has no input)
    assert len(preset_configs("hart-0.7b-512").transformer.patch_nums) == 10
    assert preset_configs("hart-0.7b-512").tokenizer.image_size == 512
