"""Training recipes: YAML files → typed, validated, frozen dataclasses.

A recipe names what to train (``kind: tokenizer``, ``generator`` or ``diffusion``: the latent-diffusion
baseline), the model sizes (a preset, optionally with field overrides), the data (a spec handed to
``openhart.data.build_dataset``), the optimiser and schedule, the losses and the run's
bookkeeping (output folder, logging, checkpoints, sample grids). Every field has a documented
default; unknown keys and bad values raise ValueError naming the dotted field (``optim.lr``).

Command-line overrides use the same dotted names: ``--set optim.lr=1e-4 --set data.batch_size=8``
(values are parsed as YAML, so ``true``, ``3``, ``[0.9, 0.99]`` have their types). Relative paths
in a recipe are relative to the working directory the command runs in.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openhart.errors import ConfigError
from openhart.presets import PRESETS, preset_configs
from openhart.tokenizer import TokenizerConfig
from openhart.training.adversarial import LOSS_KINDS
from openhart.utils.config import Config

RECIPE_KINDS = ("tokenizer", "generator", "diffusion")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


class RecipeError(ConfigError):
    """A recipe file or override is malformed; the message names the field."""


# ---------------------------------------------------------------------- field checks
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, field: str, expected: str, value: Any) -> None:
    if not condition:
        raise RecipeError(f"{field}: expected {expected}, got {value!r}")


# ---------------------------------------------------------------------- sections
@dataclasses.dataclass(frozen=True)
class DataRecipe(Config):
    """Where the images come from and how they are batched."""

    # Handed as is to ``openhart.data.build_dataset(spec, image_size)`` (see the data module for
    # its keys, e.g. ``{kind: imagefolder, path: ...}``).
    train: dict = dataclasses.field(default_factory=dict)
    batch_size: int = 16  # per process: the global batch is batch_size × world size
    num_workers: int = 0  # DataLoader worker processes per training process

    def __post_init__(self) -> None:
        _check(isinstance(self.train, dict), "data.train", "a mapping (dataset spec)", self.train)
        _check(
            _int(self.batch_size) and self.batch_size >= 1, "data.batch_size", "an int >= 1", self.batch_size
        )
        _check(
            _int(self.num_workers) and self.num_workers >= 0,
            "data.num_workers",
            "an int >= 0",
            self.num_workers,
        )


@dataclasses.dataclass(frozen=True)
class OptimRecipe(Config):
    """AdamW with linear warmup then cosine decay; gradient clipping; optional EMA."""

    lr: float = 3e-4  # peak learning rate (reached after warmup_steps)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05  # applied to matrices only (not to norms, biases, embeddings' gains)
    warmup_steps: int = 100  # linear warmup from 0
    max_steps: int = 1000  # total optimiser steps; the cosine reaches its floor here
    min_lr_ratio: float = 0.1  # the cosine floor, as a fraction of lr
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    ema_decay: float = 0.0  # 0 disables the EMA; e.g. 0.999 for about 1000 steps of memory

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        _check(_number(self.lr) and self.lr > 0, "optim.lr", "a positive number", self.lr)
        _check(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_number(b) and 0 <= b < 1 for b in self.betas),
            "optim.betas",
            "two numbers in [0, 1)",
            self.betas,
        )
        _check(_number(self.eps) and self.eps > 0, "optim.eps", "a positive number", self.eps)
        _check(
            _number(self.weight_decay) and self.weight_decay >= 0,
            "optim.weight_decay",
            "a number >= 0",
            self.weight_decay,
        )
        _check(_int(self.max_steps) and self.max_steps >= 1, "optim.max_steps", "an int >= 1", self.max_steps)
        _check(
            _int(self.warmup_steps) and 0 <= self.warmup_steps <= self.max_steps,
            "optim.warmup_steps",
            f"an int in [0, optim.max_steps={self.max_steps}]",
            self.warmup_steps,
        )
        _check(
            _number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1,
            "optim.min_lr_ratio",
            "a number in [0, 1]",
            self.min_lr_ratio,
        )
        _check(
            _number(self.grad_clip) and self.grad_clip >= 0,
            "optim.grad_clip",
            "a number >= 0",
            self.grad_clip,
        )
        _check(
            _number(self.ema_decay) and 0 <= self.ema_decay < 1,
            "optim.ema_decay",
            "a number in [0, 1)",
            self.ema_decay,
        )


@dataclasses.dataclass(frozen=True)
class RunRecipe(Config):
    """Output folder, device, precision and the cadence of logs, checkpoints and samples."""

    out_dir: str = "runs/default"  # checkpoints/, final/, metrics.csv, samples/ go here
    device: str = "auto"  # auto: this process's CUDA GPU, else MPS, else CPU
    precision: str = "auto"  # auto: bf16 autocast on CUDA (if supported), fp32 elsewhere
    deterministic: bool = False  # torch.use_deterministic_algorithms (exact resume on CPU)
    log_every: int = 10  # steps between metric rows in metrics.csv (and the log)
    checkpoint_every: int = 500  # steps between checkpoints; 0: only the final one
    keep_checkpoints: int = 2  # older step-* checkpoints are deleted
    sample_every: int = 500  # steps between sample grids; 0: never
    tensorboard: bool = False  # also write TensorBoard scalars (needs the tensorboard package)
    progress: bool = True  # tqdm bar on rank 0
    # Convolution weights and image batches in channels-last memory order (oneDNN's and cuDNN's
    # preferred layout); the numbers are the same, only the speed changes. No effect on linears.
    channels_last: bool = False

    def __post_init__(self) -> None:
        _check(
            isinstance(self.out_dir, str) and bool(self.out_dir),
            "run.out_dir",
            "a non-empty path",
            self.out_dir,
        )
        _check(self.device in DEVICES, "run.device", f"one of {DEVICES}", self.device)
        _check(self.precision in PRECISIONS, "run.precision", f"one of {PRECISIONS}", self.precision)
        for name in ("deterministic", "tensorboard", "progress", "channels_last"):
            _check(isinstance(getattr(self, name), bool), f"run.{name}", "true or false", getattr(self, name))
        _check(_int(self.log_every) and self.log_every >= 1, "run.log_every", "an int >= 1", self.log_every)
        for name in ("checkpoint_every", "sample_every"):
            value = getattr(self, name)
            _check(_int(value) and value >= 0, f"run.{name}", "an int >= 0", value)
        _check(
            _int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
            "run.keep_checkpoints",
            "an int >= 1",
            self.keep_checkpoints,
        )


@dataclasses.dataclass(frozen=True)
class TokenizerLossRecipe(Config):
    """Reconstruction + VQ loss weights, HART's alternating hybrid training, dead-code revival."""

    l1_weight: float = 1.0
    l2_weight: float = 1.0
    vq_weight: float = 1.0  # × (codebook term + commitment_beta · commitment term), see the quantizer
    # HART's alternating training: each step the decoder sees the discrete-only latent with this
    # probability and the full (discrete + residual) latent otherwise.
    discrete_probability: float = 0.5
    # Every revive_every steps, codes no rank used since the last check are re-initialised from
    # this step's encoder outputs (the per-scale residuals the codes are matched against). 0: off.
    revive_every: int = 50
    revive_noise: float = 0.01  # relative noise added to revived codes so duplicates can diverge

    def __post_init__(self) -> None:
        for name in ("l1_weight", "l2_weight", "vq_weight", "revive_noise"):
            value = getattr(self, name)
            _check(_number(value) and value >= 0, f"loss.{name}", "a number >= 0", value)
        _check(
            _number(self.discrete_probability) and 0 <= self.discrete_probability <= 1,
            "loss.discrete_probability",
            "a number in [0, 1]",
            self.discrete_probability,
        )
        _check(
            _int(self.revive_every) and self.revive_every >= 0,
            "loss.revive_every",
            "an int >= 0",
            self.revive_every,
        )
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise RecipeError(
                "loss.l1_weight, loss.l2_weight: at least one reconstruction weight must be > 0"
            )


@dataclasses.dataclass(frozen=True)
class AdversarialRecipe(Config):
    """VQGAN-style PatchGAN loss for the tokenizer (``training/adversarial.py``); off when weight is 0.

    The reconstruction losses train alone for the first ``start_step`` steps (a discriminator
    facing blurry early reconstructions wins at once and teaches nothing); from then on the decoder
    also minimises ``weight · adaptive · adversarial`` and the discriminator trains every step.
    """

    weight: float = 0.0  # 0: no discriminator; VQGAN uses 0.8, VAR/HART 0.2 (with a perceptual loss)
    start_step: int = 0  # optimiser step at which the adversarial phase begins
    loss: str = "hinge"  # "hinge" or "non-saturating"
    channels: int = 64  # width of the discriminator's first conv
    layers: int = 3  # stride-2 convs; the patch each logit sees grows with them (70 px at 3)
    lr: float = 1.0e-4  # the discriminator's AdamW learning rate (constant)
    betas: tuple[float, float] = (0.5, 0.9)  # GAN-usual: a short first-moment memory
    max_adaptive_weight: float = 1.0e4  # clamp of ‖∇ reconstruction‖ / ‖∇ adversarial‖

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        for name in ("weight", "max_adaptive_weight"):
            value = getattr(self, name)
            _check(_number(value) and value >= 0, f"adversarial.{name}", "a number >= 0", value)
        _check(_number(self.lr) and self.lr > 0, "adversarial.lr", "a positive number", self.lr)
        _check(
            _int(self.start_step) and self.start_step >= 0,
            "adversarial.start_step",
            "an int >= 0",
            self.start_step,
        )
        _check(self.loss in LOSS_KINDS, "adversarial.loss", f"one of {LOSS_KINDS}", self.loss)
        _check(
            _int(self.channels) and self.channels >= 16 and self.channels % 16 == 0,
            "adversarial.channels",
            "an int >= 16, a multiple of 16",
            self.channels,
        )
        _check(
            _int(self.layers) and 1 <= self.layers <= 5, "adversarial.layers", "an int in [1, 5]", self.layers
        )
        _check(
            isinstance(self.betas, tuple)
            and len(self.betas) == 2
            and all(_number(b) and 0 <= b < 1 for b in self.betas),
            "adversarial.betas",
            "two numbers in [0, 1)",
            self.betas,
        )

    @property
    def enabled(self) -> bool:
        return self.weight > 0


@dataclasses.dataclass(frozen=True)
class GeneratorLossRecipe(Config):
    """Token cross-entropy + residual diffusion loss, token subsampling, condition dropout."""

    diffusion_weight: float = 1.0
    diffusion_batch_mul: int = 4  # each last-scale row is seen with this many (t, noise) draws
    label_smoothing: float = 0.0  # of the token cross-entropy
    # HART's token subsampling of the last scale: drop a random fraction in [drop_min, drop_max]
    # of its tokens (one fraction per step, positions per image), keeping at least min_keep.
    token_subsampling: bool = False
    subsample_drop_min: float = 0.5
    subsample_drop_max: float = 1.0
    subsample_min_keep: int = 4
    # Classifier-free guidance: each image's prompt is replaced by the unconditional (empty)
    # context with this probability.
    condition_dropout: float = 0.1

    def __post_init__(self) -> None:
        _check(
            _number(self.diffusion_weight) and self.diffusion_weight >= 0,
            "loss.diffusion_weight",
            "a number >= 0",
            self.diffusion_weight,
        )
        _check(
            _int(self.diffusion_batch_mul) and self.diffusion_batch_mul >= 1,
            "loss.diffusion_batch_mul",
            "an int >= 1",
            self.diffusion_batch_mul,
        )
        _check(
            _number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
            "loss.label_smoothing",
            "a number in [0, 1)",
            self.label_smoothing,
        )
        _check(
            isinstance(self.token_subsampling, bool),
            "loss.token_subsampling",
            "true or false",
            self.token_subsampling,
        )
        _check(
            _number(self.subsample_drop_min) and 0 <= self.subsample_drop_min <= 1,
            "loss.subsample_drop_min",
            "a number in [0, 1]",
            self.subsample_drop_min,
        )
        _check(
            _number(self.subsample_drop_max) and self.subsample_drop_min <= self.subsample_drop_max <= 1,
            "loss.subsample_drop_max",
            f"a number in [loss.subsample_drop_min={self.subsample_drop_min}, 1]",
            self.subsample_drop_max,
        )
        _check(
            _int(self.subsample_min_keep) and self.subsample_min_keep >= 1,
            "loss.subsample_min_keep",
            "an int >= 1",
            self.subsample_min_keep,
        )
        _check(
            _number(self.condition_dropout) and 0 <= self.condition_dropout < 1,
            "loss.condition_dropout",
            "a number in [0, 1)",
            self.condition_dropout,
        )


@dataclasses.dataclass(frozen=True)
class SamplingRecipe(Config):
    """The fixed prompts of the generator's sample grids (written every run.sample_every steps)."""

    prompts: tuple[str, ...] = ("a red apple", "a smiling face", "a blue car", "a green tree")
    guidance_scale: float = 4.5
    num_inference_steps: int | None = None  # residual diffusion steps (None: the head's default)
    seed: int = 0  # image i of the grid uses seed + i, the same at every step

    def __post_init__(self) -> None:
        if isinstance(self.prompts, list):
            object.__setattr__(self, "prompts", tuple(self.prompts))
        _check(
            isinstance(self.prompts, tuple) and all(isinstance(p, str) for p in self.prompts),
            "sampling.prompts",
            "a list of strings",
            self.prompts,
        )
        _check(
            _number(self.guidance_scale) and self.guidance_scale >= 0,
            "sampling.guidance_scale",
            "a number >= 0",
            self.guidance_scale,
        )
        _check(
            self.num_inference_steps is None
            or (_int(self.num_inference_steps) and self.num_inference_steps >= 1),
            "sampling.num_inference_steps",
            "an int >= 1 or null",
            self.num_inference_steps,
        )
        _check(_int(self.seed) and self.seed >= 0, "sampling.seed", "an int >= 0", self.seed)


# ---------------------------------------------------------------------- recipes
def _check_common(recipe: Any) -> None:
    _check(recipe.preset in PRESETS, "preset", f"one of {sorted(PRESETS)}", recipe.preset)
    _check(_int(recipe.seed) and recipe.seed >= 0, "seed", "an int >= 0", recipe.seed)


def _check_frozen_sources(recipe: Any, start_from: str, overrides: tuple[str, ...]) -> None:
    """Checks the generator and diffusion recipes share: where the frozen parts come from, the
    override mappings, the caching/EMA flags. ``start_from`` names what ``pipeline`` continues."""
    for name in ("tokenizer_from", "pipeline", "text_features"):
        value = getattr(recipe, name)
        _check(value is None or (isinstance(value, str) and value), name, "a path or null", value)
    if recipe.tokenizer_from is None and recipe.pipeline is None:
        raise RecipeError(
            f"tokenizer_from: a {recipe.kind} recipe needs a trained tokenizer (a tokenizer or pipeline "
            f"folder), or `pipeline` to start from {start_from}"
        )
    for name in overrides:
        _check(
            isinstance(getattr(recipe, name), dict), name, "a mapping of config fields", getattr(recipe, name)
        )
    for name in ("cache_text_features", "cache_latents", "save_ema"):
        _check(isinstance(getattr(recipe, name), bool), name, "true or false", getattr(recipe, name))
    if recipe.save_ema and recipe.optim.ema_decay == 0:
        raise RecipeError("save_ema: true needs optim.ema_decay > 0 (or set save_ema: false)")


@dataclasses.dataclass(frozen=True)
class TokenizerRecipe(Config):
    """``openhart train tokenizer``: the hybrid tokenizer of a preset, trained from scratch or a folder."""

    preset: str  # model sizes come from this preset's tokenizer config ...
    tokenizer: dict = dataclasses.field(default_factory=dict)  # ... with these fields replaced
    init: str | None = None  # optional tokenizer folder (config.json + model.safetensors) to start from
    # Train only post_quant_conv and the decoder; the encoder, quant_conv and quantizer (codebook,
    # Φ) stay those of `init`, so token ids and residuals do not change and a generator trained on
    # `init`'s tokens stays valid with the new decoder (decoder fine-tuning, e.g. adversarial).
    decoder_only: bool = False
    seed: int = 0
    num_sample_images: int = 8  # reconstructions shown in the sample grid (and its PSNR)
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=OptimRecipe)
    loss: TokenizerLossRecipe = dataclasses.field(default_factory=TokenizerLossRecipe)
    adversarial: AdversarialRecipe = dataclasses.field(default_factory=AdversarialRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = "tokenizer"

    def __post_init__(self) -> None:
        _check(self.kind == "tokenizer", "kind", "'tokenizer'", self.kind)
        _check_common(self)
        _check(
            isinstance(self.tokenizer, dict),
            "tokenizer",
            "a mapping of TokenizerConfig fields",
            self.tokenizer,
        )
        _check(self.init is None or isinstance(self.init, str), "init", "a folder path or null", self.init)
        _check(
            _int(self.num_sample_images) and self.num_sample_images >= 1,
            "num_sample_images",
            "an int >= 1",
            self.num_sample_images,
        )
        _check(isinstance(self.decoder_only, bool), "decoder_only", "true or false", self.decoder_only)
        if self.decoder_only and self.init is None:
            raise RecipeError("decoder_only: needs `init` (a trained tokenizer whose encoder stays frozen)")
        if self.decoder_only and self.loss.revive_every:
            raise RecipeError("decoder_only: the codebook is frozen; set loss.revive_every to 0")
        self.tokenizer_config()  # fail now, with the field named, rather than after loading data

    def tokenizer_config(self) -> TokenizerConfig:
        """The preset's tokenizer config with this recipe's ``tokenizer`` overrides."""
        base = preset_configs(self.preset).tokenizer
        try:
            return base.replace(**_tuples(self.tokenizer))
        except (TypeError, ValueError) as error:
            raise RecipeError(f"tokenizer: {error}") from error


@dataclasses.dataclass(frozen=True)
class GeneratorRecipe(Config):
    """``openhart train generator``: transformer + residual head on a frozen trained tokenizer."""

    preset: str  # sizes of the text encoder, transformer and head (each may be overridden below)
    # Where the frozen tokenizer comes from: a tokenizer folder (what `train tokenizer` writes) or
    # a pipeline folder. Required unless `pipeline` is given.
    tokenizer_from: str | None = None
    # Start from a saved pipeline (all four components; e.g. to continue training a model).
    pipeline: str | None = None
    text_encoder: dict = dataclasses.field(default_factory=dict)  # TextEncoderConfig overrides
    transformer: dict = dataclasses.field(default_factory=dict)  # HartTransformerConfig overrides
    diffusion_head: dict = dataclasses.field(default_factory=dict)  # DiffusionHeadConfig overrides
    # Optional file of precomputed text features (`openhart train text-features`): captions found
    # there are never encoded, and a text encoder that cannot be built here (e.g. a GPU machine
    # without its weights) is replaced by the file (sampling prompts are in it too).
    text_features: str | None = None
    cache_text_features: bool = True  # encode each distinct caption once per process
    cache_latents: bool = True  # encode each image (by dataset key) once per process
    save_ema: bool = True  # the saved model is the EMA (needs optim.ema_decay > 0)
    seed: int = 0
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=lambda: OptimRecipe(ema_decay=0.999))
    loss: GeneratorLossRecipe = dataclasses.field(default_factory=GeneratorLossRecipe)
    sampling: SamplingRecipe = dataclasses.field(default_factory=SamplingRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = "generator"

    def __post_init__(self) -> None:
        _check(self.kind == "generator", "kind", "'generator'", self.kind)
        _check_common(self)
        _check_frozen_sources(self, "a saved pipeline", ("text_encoder", "transformer", "diffusion_head"))
        self.component_configs()

    @property
    def var_only(self) -> bool:
        """``loss.diffusion_weight: 0``: the VAR-only baseline (tokens only, no residual head)."""
        return self.loss.diffusion_weight == 0

    def component_configs(self) -> dict[str, Config]:
        """The preset's text encoder / transformer / head configs with this recipe's overrides."""
        preset = preset_configs(self.preset)
        out: dict[str, Config] = {}
        for name in ("text_encoder", "transformer", "diffusion_head"):
            try:
                out[name] = getattr(preset, name).replace(**_tuples(getattr(self, name)))
            except (TypeError, ValueError) as error:
                raise RecipeError(f"{name}: {error}") from error
        return out


@dataclasses.dataclass(frozen=True)
class DiffusionRecipe(Config):
    """``openhart train diffusion``: the latent-diffusion baseline on a frozen trained tokenizer.

    The diffusion transformer (``model``: LatentDiffusionConfig fields over the preset's size in
    ``openhart.evaluation.baselines.DIFFUSION_BASELINE_SIZES``) learns to denoise the tokenizer's
    continuous latents, conditioned on the preset's text encoder: HART's generator recipe with
    the transformer + residual head swapped for a diffusion transformer.
    """

    preset: str  # text encoder config and the baseline's size
    tokenizer_from: str | None = None  # a tokenizer, pipeline or training-run folder
    pipeline: str | None = None  # continue from a saved LatentDiffusionPipeline folder
    text_encoder: dict = dataclasses.field(default_factory=dict)  # TextEncoderConfig overrides
    model: dict = dataclasses.field(default_factory=dict)  # LatentDiffusionConfig overrides
    text_features: str | None = None  # as in the generator recipe
    cache_text_features: bool = True
    cache_latents: bool = True
    latent_statistics_images: int = 1024  # first N training images fit latent_shift / latent_scale
    save_ema: bool = True
    seed: int = 0
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=lambda: OptimRecipe(ema_decay=0.999))
    sampling: SamplingRecipe = dataclasses.field(default_factory=SamplingRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = "diffusion"

    def __post_init__(self) -> None:
        _check(self.kind == "diffusion", "kind", "'diffusion'", self.kind)
        _check_common(self)
        _check_frozen_sources(self, "a saved LatentDiffusionPipeline", ("text_encoder", "model"))
        _check(
            _int(self.latent_statistics_images) and self.latent_statistics_images >= 2,
            "latent_statistics_images",
            "an int >= 2",
            self.latent_statistics_images,
        )
        self.component_configs()

    def component_configs(self) -> dict[str, Config]:
        """{"text_encoder": TextEncoderConfig, "model": LatentDiffusionConfig} with the overrides."""
        # Imported here: the baselines module pulls diffusers lazily, but keep recipes import-light.
        from openhart.evaluation.baselines import diffusion_baseline_config

        try:
            text_encoder = preset_configs(self.preset).text_encoder.replace(**_tuples(self.text_encoder))
        except (TypeError, ValueError) as error:
            raise RecipeError(f"text_encoder: {error}") from error
        try:
            model = diffusion_baseline_config(self.preset).replace(**_tuples(self.model))
        except (TypeError, ValueError) as error:
            raise RecipeError(f"model: {error}") from error
        return {"text_encoder": text_encoder, "model": model}


Recipe = TokenizerRecipe | GeneratorRecipe | DiffusionRecipe


def _tuples(overrides: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


# ---------------------------------------------------------------------- building from mappings
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_class(annotation: Any) -> type | None:
    """The Config dataclass an annotation names (None for plain values)."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        for arg in typing.get_args(annotation):
            if isinstance(arg, type) and dataclasses.is_dataclass(arg):
                return arg
    return None


def build_section(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, recursing into sections; unknown keys are errors."""
    where = path or "recipe"
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        dotted = [f"{path}.{k}" if path else str(k) for k in unknown]
        raise RecipeError(f"unknown field(s) {dotted}; {where} accepts {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        section = _section_class(hints[key])
        dotted = f"{path}.{key}" if path else key
        if section is not None and value is not None:
            kwargs[key] = build_section(section, value, dotted)
        else:
            kwargs[key] = tuple(value) if isinstance(value, list) and section is None else value
    required = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if required:
        raise RecipeError(f"{where}: missing required field(s) {required}")
    try:
        return cls(**kwargs)
    except TypeError as error:  # e.g. a wrong type reaching a comparison in a check
        raise RecipeError(f"{where}: {error}") from error


def recipe_from_dict(data: dict, kind: str | None = None) -> Recipe:
    """A recipe from a parsed mapping; ``kind`` (when given) must match the mapping's ``kind``."""
    if not isinstance(data, dict):
        raise RecipeError(f"recipe: expected a mapping at the top level, got {type(data).__name__}")
    found = data.get("kind")
    if found not in RECIPE_KINDS:
        raise RecipeError(f"kind: expected one of {RECIPE_KINDS}, got {found!r}")
    if kind is not None and found != kind:
        raise RecipeError(f"kind: this command trains a {kind}, but the recipe is a {found} recipe")
    cls = {"tokenizer": TokenizerRecipe, "generator": GeneratorRecipe, "diffusion": DiffusionRecipe}[found]
    return build_section(cls, data)


def _yaml_loader() -> type:
    """PyYAML's safe loader, but reading ``1e-4`` as a float (YAML 1.1 wants ``1.0e-4``)."""
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(
            r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
            |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
            |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
            |[-+]?\.(?:inf|Inf|INF)
            |\.(?:nan|NaN|NAN))$""",
            re.X,
        ),
        list("-+0123456789."),
    )
    return RecipeLoader


def parse_yaml(text: str) -> Any:
    import yaml

    return yaml.load(text, Loader=_yaml_loader())


def apply_overrides(data: dict, overrides: Sequence[str]) -> dict:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested mapping (a copy)."""
    import copy

    import yaml

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise RecipeError(f"override {item!r}: empty key part")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError as error:
            raise RecipeError(f"override {item!r}: value is not valid YAML ({error})") from error
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_recipe(
    path: str | os.PathLike[str], overrides: Sequence[str] = (), kind: str | None = None
) -> Recipe:
    """Read a YAML recipe, apply ``--set`` overrides, validate; RecipeError names the bad field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe file not found: {path}")
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML ({error})") from error
    if data is None:
        raise RecipeError(f"{path}: the recipe is empty")
    return recipe_from_dict(apply_overrides(data, overrides), kind=kind)


def recipe_to_dict(recipe: Recipe) -> dict:
    """A plain (JSON/YAML-ready) mapping of a recipe, tuples as lists."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(recipe)
