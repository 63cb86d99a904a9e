"""Named model sizes: ``tiny`` (tests), ``emoji-64`` (the embedded default), and the released HART-0.7B.

``build_pipeline(name, seed=...)`` returns a :class:`HartPipeline` of that size with freshly
initialised weights (what benchmarks and tests build on); trained weights are loaded with
``HartPipeline.from_pretrained``.

The released presets reproduce the architecture of ``mit-han-lab/hart-0.7b-1024px`` (the
official-compatibility switches: max pooling, the release's RoPE layout and 0.25/sqrt(d)
attention scale, unmasked prompt padding, residual scale 0.6). Their text encoder is a stand-in
of the released Qwen2-1.5B's shape (300 tokens of 1536): a hash encoder, because the Qwen2
weights are not downloadable here; with the real weights pass a ``TransformersTextEncoder``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from openhart.diffusion import DiffusionHeadConfig, ResidualDiffusionHead
from openhart.models.hart import HartPipeline
from openhart.models.latent_diffusion import LatentDiffusionPipeline, diffusion_baseline_config
from openhart.text import TextEncoderConfig, build_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.transformer import HartTransformer, HartTransformerConfig


@dataclass(frozen=True)
class PresetConfigs:
    text_encoder: TextEncoderConfig
    tokenizer: TokenizerConfig
    transformer: HartTransformerConfig
    diffusion_head: DiffusionHeadConfig


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    configs: Callable[[], PresetConfigs]


def _tiny() -> PresetConfigs:
    patch_nums = (1, 2, 3, 4, 6, 8)  # 8x8 latent, 4x downsampling: 32x32 images
    return PresetConfigs(
        text_encoder=TextEncoderConfig(
            kind="hash", max_length=8, hidden_size=32, vocab_size=512, lowercase=True
        ),
        tokenizer=TokenizerConfig(
            ch=32,
            ch_mult=(1, 1, 2),
            num_res_blocks=1,
            latent_channels=8,
            codebook_size=128,
            patch_nums=patch_nums,
        ),
        transformer=HartTransformerConfig(
            codebook_size=128,
            latent_channels=8,
            patch_nums=patch_nums,
            context_dim=32,
            context_tokens=8,
            width=64,
            depth=2,
            num_heads=4,
        ),
        diffusion_head=DiffusionHeadConfig(latent_channels=8, condition_dim=64, width=64, depth=2),
    )


def _emoji_64() -> PresetConfigs:
    # Sized to train on a 2-core CPU in about an hour and a half (tokenizer + generator) and to ship
    # inside the package (~11 M parameters, ~22 MB in fp16).
    patch_nums = (1, 2, 3, 4, 5, 6, 8)  # 8x8 latent, 8x downsampling: 64x64 images
    return PresetConfigs(
        text_encoder=TextEncoderConfig(kind="minilm", max_length=24, hidden_size=384, lowercase=True),
        tokenizer=TokenizerConfig(
            ch=32,
            ch_mult=(1, 2, 2, 4),
            num_res_blocks=1,
            latent_channels=16,
            codebook_size=1024,
            patch_nums=patch_nums,
        ),
        transformer=HartTransformerConfig(
            codebook_size=1024,
            latent_channels=16,
            patch_nums=patch_nums,
            context_dim=384,
            context_tokens=24,
            width=256,
            depth=6,
            num_heads=4,
        ),
        diffusion_head=DiffusionHeadConfig(latent_channels=16, condition_dim=256, width=256, depth=3),
    )


def _release(patch_nums: tuple[int, ...]) -> Callable[[], PresetConfigs]:
    def configs() -> PresetConfigs:
        return PresetConfigs(
            text_encoder=TextEncoderConfig(kind="hash", max_length=300, hidden_size=1536),
            tokenizer=TokenizerConfig(patch_nums=patch_nums),  # the released tokenizer's sizes
            transformer=HartTransformerConfig(
                codebook_size=4096,
                latent_channels=32,
                patch_nums=patch_nums,
                context_dim=1536,
                context_tokens=300,
                width=1536,
                depth=16,
                num_heads=24,
                adaln="block",
                block_pooling="max",
                head_pooling="max",
                level_embedding="timestep",
                context_norm=True,
                attn_scale=0.25 / 64**0.5,
                rope_2d="hart",
                mask_context_padding=False,
            ),
            diffusion_head=DiffusionHeadConfig(
                latent_channels=32, condition_dim=1536, width=1024, depth=6, output_scale=0.6
            ),
        )

    return configs


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset("tiny", "32 px test model (hash text encoder, 6 scales, ~0.3M params)", _tiny),
        Preset(
            "emoji-64",
            "64 px emoji architecture, 8x8 latent, 7 scales (all-MiniLM-L6-v2 text encoder); the embedded"
            " emoji-64 weights carry their own configs: 16x16 latent, 10 scales",
            _emoji_64,
        ),
        Preset(
            "hart-0.7b-1024",
            "released HART-0.7B architecture at 1024 px (14 scales); Qwen2-shaped stand-in text encoder",
            _release((1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)),
        ),
        Preset(
            "hart-0.7b-512",
            "released HART-0.7B architecture at 512 px (10 scales); Qwen2-shaped stand-in text encoder",
            _release((1, 2, 3, 4, 6, 9, 13, 18, 24, 32)),
        ),
    )
}


def preset_configs(name: str) -> PresetConfigs:
    """The component configs of preset ``name`` (ValueError listing the presets when unknown)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].configs()


def build_pipeline(
    name: str,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HartPipeline:
    """A :class:`HartPipeline` of preset ``name`` with freshly initialised weights.

    ``seed`` makes the initialisation reproducible without touching the caller's global RNG state.
    """
    configs = preset_configs(name)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
    rng_scope = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
    with rng_scope:
        if seed is not None:
            torch.manual_seed(seed)
        text_config = configs.text_encoder
        if text_config.kind == "hash" and seed is not None:
            text_config = text_config.replace(seed=seed)
        pipeline = HartPipeline(
            text_encoder=build_text_encoder(text_config),
            tokenizer=HybridTokenizer(configs.tokenizer),
            transformer=HartTransformer(configs.transformer),
            diffusion_head=ResidualDiffusionHead(configs.diffusion_head),
        )
    return pipeline.eval().to(device=device, dtype=dtype)


def build_diffusion_baseline(
    preset: str,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    hart: HartPipeline | None = None,
) -> LatentDiffusionPipeline:
    """The diffusion baseline sized for HART preset ``preset``, with random transformer weights.

    With ``hart`` its text encoder and tokenizer are shared (the same objects: what a fair
    comparison trains on); otherwise the preset's are built with ``seed``.
    """
    config = diffusion_baseline_config(preset)
    source = hart if hart is not None else build_pipeline(preset, seed=seed)
    pipeline = LatentDiffusionPipeline.from_components(
        source.text_encoder, source.tokenizer, config, seed=seed
    )
    return pipeline.to(device=device, dtype=dtype)
