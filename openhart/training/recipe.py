"""Training recipes: YAML files → typed, validated, frozen dataclasses.

One file on purpose: the recipe schema (every section and the YAML reader that builds them) is one
document a recipe author reads top to bottom.

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
from openhart.utils.config import Config, checked

RECIPE_KINDS = ("tokenizer", "generator", "diffusion")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


class RecipeError(ConfigError):
    """A recipe file or override is malformed; the message names the field."""


# ---------------------------------------------------------------------- sections
class Section(Config):
    """A recipe section: its fields are named ``section.field`` in errors, which are RecipeErrors."""

    error_type = RecipeError


@dataclasses.dataclass(frozen=True)
class DataRecipe(Section):
    """Where the images come from and how they are batched."""

    field_prefix = "data."
    # Handed as is to ``openhart.data.build_dataset(spec, image_size)`` (see the data module for
    # its keys, e.g. ``{kind: imagefolder, path: ...}``).
    train: dict = checked(kind="mapping", default_factory=dict, expect="a mapping (dataset spec)")
    batch_size: int = checked(
        16, kind="int", ge=1
    )  # per process: the global batch is batch_size × world size
    num_workers: int = checked(0, kind="int", ge=0)  # DataLoader worker processes per training process


@dataclasses.dataclass(frozen=True)
class OptimRecipe(Section):
    """AdamW with linear warmup then cosine decay; gradient clipping; optional EMA."""

    field_prefix = "optim."
    lr: float = checked(3e-4, kind="number", gt=0)  # peak learning rate (reached after warmup_steps)
    betas: tuple[float, float] = checked((0.9, 0.95), kind="numbers", length=2, ge=0, lt=1)
    eps: float = checked(1e-8, kind="number", gt=0)
    # Applied to matrices only (not to norms, biases, embeddings' gains).
    weight_decay: float = checked(0.05, kind="number", ge=0)
    warmup_steps: int = checked(100, kind="int", ge=0)  # linear warmup from 0
    max_steps: int = checked(
        1000, kind="int", ge=1
    )  # total optimiser steps; the cosine reaches its floor here
    min_lr_ratio: float = checked(0.1, kind="number", ge=0, le=1)  # the cosine floor, as a fraction of lr
    grad_clip: float = checked(1.0, kind="number", ge=0)  # max global grad norm; 0 disables clipping
    # 0 disables the EMA; e.g. 0.999 for about 1000 steps of memory.
    ema_decay: float = checked(0.0, kind="number", ge=0, lt=1)

    def validate(self) -> None:
        if self.warmup_steps > self.max_steps:
            self.fail("warmup_steps", f"an int in [0, optim.max_steps={self.max_steps}]", self.warmup_steps)


@dataclasses.dataclass(frozen=True)
class RunRecipe(Section):
    """Output folder, device, precision and the cadence of logs, checkpoints and samples."""

    field_prefix = "run."
    # checkpoints/, final/, metrics.csv, samples/ go here.
    out_dir: str = checked("runs/default", kind="str", expect="a non-empty path")
    device: str = checked(
        "auto", kind="choice", choices=DEVICES
    )  # auto: this process's CUDA GPU, else MPS, else CPU
    # auto: bf16 autocast where the hardware has it natively (CUDA, CPUs with AMX or AVX512-BF16), fp32 elsewhere.
    precision: str = checked("auto", kind="choice", choices=PRECISIONS)
    deterministic: bool = checked(
        False, kind="bool"
    )  # torch.use_deterministic_algorithms (exact resume on CPU)
    log_every: int = checked(10, kind="int", ge=1)  # steps between metric rows in metrics.csv (and the log)
    checkpoint_every: int = checked(500, kind="int", ge=0)  # steps between checkpoints; 0: only the final one
    keep_checkpoints: int = checked(2, kind="int", ge=1)  # older step-* checkpoints are deleted
    sample_every: int = checked(500, kind="int", ge=0)  # steps between sample grids; 0: never
    tensorboard: bool = checked(False, kind="bool")  # also write TensorBoard scalars (needs tensorboard)
    progress: bool = checked(True, kind="bool")  # tqdm bar on rank 0
    # Convolution weights and image batches in channels-last memory order (oneDNN's and cuDNN's
    # preferred layout); the numbers are the same, only the speed changes. No effect on linears.
    channels_last: bool = checked(False, kind="bool")


@dataclasses.dataclass(frozen=True)
class TokenizerLossRecipe(Section):
    """Reconstruction + VQ loss weights, HART's alternating hybrid training, dead-code revival."""

    field_prefix = "loss."
    l1_weight: float = checked(1.0, kind="number", ge=0)
    l2_weight: float = checked(1.0, kind="number", ge=0)
    # × the mean squared high band of the error (above half the band, utils/frequency_bands.py),
    # added to l2's: with l2_weight 1, fine error costs about (1 + this) times smooth error of the same
    # energy. rFID at 64 px punishes fine, structured error most. 0: off.
    high_band_weight: float = checked(0.0, kind="number", ge=0)
    # × (codebook term + commitment_beta · commitment term), see the quantizer.
    vq_weight: float = checked(1.0, kind="number", ge=0)
    # HART's alternating training: each step the decoder sees the discrete-only latent with this
    # probability and the full (discrete + residual) latent otherwise.
    discrete_probability: float = checked(0.5, kind="number", ge=0, le=1)
    # Every revive_every steps, codes no rank used since the last check are re-initialised from
    # this step's encoder outputs (the per-scale residuals the codes are matched against). 0: off.
    revive_every: int = checked(50, kind="int", ge=0)
    # Relative noise added to revived codes so duplicates can diverge.
    revive_noise: float = checked(0.01, kind="number", ge=0)

    def validate(self) -> None:
        if self.l1_weight == 0 and self.l2_weight == 0:
            raise RecipeError(
                "loss.l1_weight, loss.l2_weight: at least one reconstruction weight must be > 0"
            )


@dataclasses.dataclass(frozen=True)
class AdversarialRecipe(Section):
    """VQGAN-style PatchGAN loss for the tokenizer (``training/adversarial.py``); off when both
    ``weight`` and ``feature_matching_weight`` are 0.

    The reconstruction losses train alone for the first ``start_step`` steps (a discriminator
    facing blurry early reconstructions wins at once and teaches nothing); from then on the decoder
    also minimises ``weight · adaptive · adversarial`` and the discriminator trains every step.
    With ``discriminator_warmup_steps``, the discriminator starts that many steps earlier, alone:
    a new discriminator gives the decoder no signal, only noise, and a trained decoder fine-tuned
    against one loses PSNR before the discriminator learns anything (the emoji-64 logs in
    docs/results/emoji64-latent16/README.md).
    """

    field_prefix = "adversarial."
    # 0: no discriminator; VQGAN uses 0.8, VAR/HART 0.2 (with a perceptual loss).
    weight: float = checked(0.0, kind="number", ge=0)
    start_step: int = checked(0, kind="int", ge=0)  # optimiser step at which the adversarial phase begins
    # Steps before start_step in which the discriminator trains alone (at most start_step).
    discriminator_warmup_steps: int = checked(0, kind="int", ge=0)
    loss: str = checked("hinge", kind="choice", choices=LOSS_KINDS)  # "hinge" or "non-saturating"
    channels: int = checked(64, kind="int", ge=16, multiple_of=16)  # width of the discriminator's first conv
    # Stride-2 convs; the patch each logit sees grows with them (70 px at 3).
    layers: int = checked(3, kind="int", ge=1, le=5)
    lr: float = checked(1.0e-4, kind="number", gt=0)  # the discriminator's AdamW learning rate (constant)
    # GAN-usual: a short first-moment memory.
    betas: tuple[float, float] = checked((0.5, 0.9), kind="numbers", length=2, ge=0, lt=1)
    # Clamp of ‖∇ reconstruction‖ / ‖∇ adversarial‖.
    max_adaptive_weight: float = checked(1.0e4, kind="number", ge=0)
    # Feature matching (L1 between the discriminator's activations on x̂ and on x), balanced like
    # the adversarial term: 0.5 makes its gradient at the decoder's last layer half the
    # reconstruction loss's. Works with weight 0 too (the discriminator still trains).
    feature_matching_weight: float = checked(0.0, kind="number", ge=0)

    @property
    def enabled(self) -> bool:
        """Whether a discriminator exists: either of its terms is on."""
        return self.weight > 0 or self.feature_matching_weight > 0

    @property
    def discriminator_start_step(self) -> int:
        """The first optimiser step at which the discriminator trains."""
        return self.start_step - self.discriminator_warmup_steps

    def validate(self) -> None:
        if self.discriminator_warmup_steps > self.start_step:
            self.fail(
                "discriminator_warmup_steps",
                f"an int in [0, adversarial.start_step={self.start_step}]",
                self.discriminator_warmup_steps,
            )


@dataclasses.dataclass(frozen=True)
class GeneratorLossRecipe(Section):
    """Token cross-entropy + residual diffusion loss, token subsampling, condition dropout."""

    field_prefix = "loss."
    diffusion_weight: float = checked(1.0, kind="number", ge=0)
    # Each last-scale row is seen with this many (t, noise) draws.
    diffusion_batch_mul: int = checked(4, kind="int", ge=1)
    label_smoothing: float = checked(0.0, kind="number", ge=0, lt=1)  # of the token cross-entropy
    # HART's token subsampling of the last scale: drop a random fraction in [drop_min, drop_max]
    # of its tokens (one fraction per step, positions per image), keeping at least min_keep.
    token_subsampling: bool = checked(False, kind="bool")
    subsample_drop_min: float = checked(0.5, kind="number", ge=0, le=1)
    subsample_drop_max: float = checked(1.0, kind="number", ge=0, le=1)
    subsample_min_keep: int = checked(4, kind="int", ge=1)
    # Classifier-free guidance: each image's prompt is replaced by the unconditional (empty)
    # context with this probability.
    condition_dropout: float = checked(0.1, kind="number", ge=0, lt=1)
    # Self-correcting teacher forcing (openhart/training/self_correction.py): each image replaces
    # a fraction, uniform in [0, self_correction], of every earlier scale's tokens by one of the
    # self_correction_neighbours − 1 other codes nearest to them; later targets fix the history.
    self_correction: float = checked(0.0, kind="number", ge=0, le=1)
    self_correction_neighbours: int = checked(8, kind="int", ge=2)
    # Where the replacements come from: "neighbours" (the near codes above) or "model", the live
    # transformer's own draws at self_correction_temperature on a teacher-forced pass over the same
    # batch: the mistakes it makes at sampling, for one more forward pass per step.
    self_correction_source: str = checked("neighbours", kind="choice", choices=("neighbours", "model"))
    self_correction_temperature: float = checked(1.0, kind="number", gt=0)

    def validate(self) -> None:
        if self.subsample_drop_max < self.subsample_drop_min:
            self.fail(
                "subsample_drop_max",
                f"a number in [loss.subsample_drop_min={self.subsample_drop_min}, 1]",
                self.subsample_drop_max,
            )


@dataclasses.dataclass(frozen=True)
class SamplingRecipe(Section):
    """The fixed prompts of the generator's sample grids (written every run.sample_every steps)."""

    field_prefix = "sampling."
    prompts: tuple[str, ...] = checked(
        ("a red apple", "a smiling face", "a blue car", "a green tree"), kind="strings"
    )
    guidance_scale: float = checked(4.5, kind="number", ge=0)
    # Residual diffusion steps (None: the head's default).
    num_inference_steps: int | None = checked(None, kind="int", ge=1, optional=True)
    seed: int = checked(0, kind="int", ge=0)  # image i of the grid uses seed + i, the same at every step


# ---------------------------------------------------------------------- recipes
PRESET_NAMES = tuple(sorted(PRESETS))
PATH = {"kind": "str", "optional": True, "expect": "a path"}
OVERRIDES = {"kind": "mapping", "default_factory": dict, "expect": "a mapping of config fields"}


def _check_frozen_sources(recipe: Any, start_from: str) -> None:
    """What the generator and diffusion recipes share: where the frozen parts come from, and the
    EMA they save. ``start_from`` names what ``pipeline`` continues."""
    if recipe.tokenizer_from is None and recipe.pipeline is None:
        raise RecipeError(
            f"tokenizer_from: a {recipe.kind} recipe needs a trained tokenizer (a tokenizer or pipeline "
            f"folder), or `pipeline` to start from {start_from}"
        )
    if recipe.save_ema and recipe.optim.ema_decay == 0:
        raise RecipeError("save_ema: true needs optim.ema_decay > 0 (or set save_ema: false)")


# TokenizerConfig fields that shape the decoder alone: the ones a recipe with `init` may change.
DECODER_FIELDS = ("decoder_ch", "decoder_num_res_blocks")


@dataclasses.dataclass(frozen=True)
class TokenizerRecipe(Section):
    """``openhart train tokenizer``: the hybrid tokenizer of a preset, trained from scratch or a folder."""

    # Model sizes come from this preset's tokenizer config ...
    preset: str = checked(kind="choice", choices=PRESET_NAMES)
    # ... with these fields replaced. With `init`, sizes are init's, and only the decoder's
    # (DECODER_FIELDS) may be given: a new, freshly initialised decoder of that shape.
    tokenizer: dict = checked(
        kind="mapping", default_factory=dict, expect="a mapping of TokenizerConfig fields"
    )
    # Optional tokenizer folder (config.json + model.safetensors) to start from.
    init: str | None = checked(None, kind="str", optional=True, expect="a folder path")
    # Train only post_quant_conv and the decoder; the encoder, quant_conv and quantizer (codebook,
    # Φ) stay those of `init`, so token ids and residuals do not change and a generator trained on
    # `init`'s tokens stays valid with the new decoder (decoder fine-tuning, e.g. adversarial).
    decoder_only: bool = checked(False, kind="bool")
    # How a new decoder (decoder_ch / decoder_num_res_blocks with `init`) starts: "fresh", a seeded
    # initialisation; "widened", init's decoder widened to decoder_ch (openhart.tokenizer.widen;
    # a multiple of init's width); or "deepened", init's decoder with identity blocks appended up to
    # decoder_num_res_blocks (openhart.tokenizer.deepen). Both draw init's images on the first step.
    new_decoder: str = checked("fresh", kind="choice", choices=("fresh", "widened", "deepened"))
    # With `deepened`: the appended blocks' learning rate as a multiple of optim.lr. They start at
    # zero, and the rate that keeps a converged decoder stable barely moves them.
    new_decoder_lr_scale: float = checked(1.0, kind="number", gt=0)
    seed: int = checked(0, kind="int", ge=0)
    # Reconstructions shown in the sample grid (and its PSNR).
    num_sample_images: int = checked(8, kind="int", ge=1)
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=OptimRecipe)
    loss: TokenizerLossRecipe = dataclasses.field(default_factory=TokenizerLossRecipe)
    adversarial: AdversarialRecipe = dataclasses.field(default_factory=AdversarialRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = checked("tokenizer", kind="choice", choices=("tokenizer",), expect="'tokenizer'")

    def validate(self) -> None:
        fixed_by_init = sorted(set(self.tokenizer) - set(DECODER_FIELDS))
        if self.init is not None and fixed_by_init:
            raise RecipeError(
                f"tokenizer: {fixed_by_init} come from `init` ({self.init}); with `init` only "
                f"{list(DECODER_FIELDS)} may be set (a new decoder on init's encoder and codebook)"
            )
        if self.decoder_only and self.init is None:
            raise RecipeError("decoder_only: needs `init` (a trained tokenizer whose encoder stays frozen)")
        # A decoder grown from init's changes one field: its width or its depth.
        grown_field = {"widened": "decoder_ch", "deepened": "decoder_num_res_blocks"}.get(self.new_decoder)
        if grown_field is not None and (self.init is None or set(self.tokenizer) != {grown_field}):
            raise RecipeError(
                f"new_decoder: '{self.new_decoder}' needs `init` and tokenizer.{grown_field} alone "
                f"(init's decoder, {self.new_decoder}; its other sizes stay init's)"
            )
        if self.new_decoder_lr_scale != 1.0 and self.new_decoder != "deepened":
            raise RecipeError(
                "new_decoder_lr_scale: scales the blocks a deepened decoder appends; it needs "
                "new_decoder: 'deepened'"
            )
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
class GeneratorRecipe(Section):
    """``openhart train generator``: transformer + residual head on a frozen trained tokenizer."""

    # Sizes of the text encoder, transformer and head (each may be overridden below).
    preset: str = checked(kind="choice", choices=PRESET_NAMES)
    # Where the frozen tokenizer comes from: a tokenizer folder (what `train tokenizer` writes) or
    # a pipeline folder. Required unless `pipeline` is given.
    tokenizer_from: str | None = checked(None, **PATH)
    # Start from a saved pipeline (all four components; e.g. to continue training a model): a
    # folder or any name `openhart.load` takes.
    pipeline: str | None = checked(None, **PATH)
    text_encoder: dict = checked(**OVERRIDES)  # TextEncoderConfig overrides
    transformer: dict = checked(**OVERRIDES)  # HartTransformerConfig overrides
    diffusion_head: dict = checked(**OVERRIDES)  # DiffusionHeadConfig overrides
    # Optional file of precomputed text features (`openhart train text-features`): captions found
    # there are never encoded, and a text encoder that cannot be built here (e.g. a GPU machine
    # without its weights) is replaced by the file (sampling prompts are in it too).
    text_features: str | None = checked(None, **PATH)
    cache_text_features: bool = checked(True, kind="bool")  # encode each distinct caption once per process
    cache_latents: bool = checked(True, kind="bool")  # encode each image (by dataset key) once per process
    save_ema: bool = checked(True, kind="bool")  # the saved model is the EMA (needs optim.ema_decay > 0)
    seed: int = checked(0, kind="int", ge=0)
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=lambda: OptimRecipe(ema_decay=0.999))
    loss: GeneratorLossRecipe = dataclasses.field(default_factory=GeneratorLossRecipe)
    sampling: SamplingRecipe = dataclasses.field(default_factory=SamplingRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = checked("generator", kind="choice", choices=("generator",), expect="'generator'")

    def validate(self) -> None:
        _check_frozen_sources(self, "a saved pipeline")
        self.component_configs()  # fail now, with the field named, rather than after loading data

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
class DiffusionRecipe(Section):
    """``openhart train diffusion``: the latent-diffusion baseline on a frozen trained tokenizer.

    The diffusion transformer (``model``: LatentDiffusionConfig fields over the preset's size in
    ``openhart.models.DIFFUSION_BASELINE_SIZES``) learns to denoise the tokenizer's
    continuous latents, conditioned on the preset's text encoder: HART's generator recipe with
    the transformer + residual head swapped for a diffusion transformer.
    """

    preset: str = checked(kind="choice", choices=PRESET_NAMES)  # text encoder config and the baseline's size
    tokenizer_from: str | None = checked(None, **PATH)  # a tokenizer, pipeline or training-run folder
    pipeline: str | None = checked(None, **PATH)  # continue from a saved LatentDiffusionPipeline folder
    text_encoder: dict = checked(**OVERRIDES)  # TextEncoderConfig overrides
    model: dict = checked(**OVERRIDES)  # LatentDiffusionConfig overrides
    text_features: str | None = checked(None, **PATH)  # as in the generator recipe
    cache_text_features: bool = checked(True, kind="bool")
    cache_latents: bool = checked(True, kind="bool")
    # The first N training images fit latent_shift / latent_scale.
    latent_statistics_images: int = checked(1024, kind="int", ge=2)
    save_ema: bool = checked(True, kind="bool")
    seed: int = checked(0, kind="int", ge=0)
    data: DataRecipe = dataclasses.field(default_factory=DataRecipe)
    optim: OptimRecipe = dataclasses.field(default_factory=lambda: OptimRecipe(ema_decay=0.999))
    sampling: SamplingRecipe = dataclasses.field(default_factory=SamplingRecipe)
    run: RunRecipe = dataclasses.field(default_factory=RunRecipe)
    kind: str = checked("diffusion", kind="choice", choices=("diffusion",), expect="'diffusion'")

    def validate(self) -> None:
        _check_frozen_sources(self, "a saved LatentDiffusionPipeline")
        self.component_configs()

    def component_configs(self) -> dict[str, Config]:
        """{"text_encoder": TextEncoderConfig, "model": LatentDiffusionConfig} with the overrides."""
        # Imported here: the baselines module pulls diffusers lazily, but keep recipes import-light.
        from openhart.models import diffusion_baseline_config

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
