"""The latent-diffusion baseline HART is measured against (the other, VAR-only, is :mod:`.var_only`).

One file on purpose: the baseline's config, pipeline and training loss are one model, the peer of
:mod:`.hart`; its call checks and outputs are shared through :mod:`.pipeline_io`.

:class:`LatentDiffusionPipeline` is a PixArt-α style diffusion transformer
(diffusers' ``PixArtTransformer2DModel``: patchified latent, AdaLN-single timestep modulation,
cross-attention on the text context) trained on the *same* hybrid tokenizer's continuous latents
(``tokenizer.encode``, no quantisation) and conditioned on the *same* text encoder's context
tokens, with a diffusers noise schedule (DDPM training, DPM-Solver++ sampling in 20 steps by
default) and classifier-free guidance. The latent is decoded by the same tokenizer decoder
(trained to decode continuous latents by HART's alternating tokenizer training). Sizes per HART
preset in :data:`DIFFUSION_BASELINE_SIZES` match the HART transformer + residual head's parameter
count within a few percent.

Guidance uses HART's convention here too, ``(1 + g)·cond − g·uncond`` (0 = conditional only;
diffusers' ``guidance_scale`` = g + 1), so the same ``guidance_scale`` means the same mix for both
models; the unconditional context is HART's empty one (zeros, first token valid).

Saved layout (diffusers' vocabulary)::

    model_index.json             {"_class_name": "LatentDiffusionPipeline", ...}
    latent_diffusion.json        LatentDiffusionConfig (schedule, sampler, latent statistics)
    text_encoder/  tokenizer/    as in a HartPipeline folder
    transformer/                 diffusers format (config.json + diffusion_pytorch_model.safetensors)

Dimension legend: B images, T prompt tokens, Dctx text width, Cz latent channels, P latent side,
N = (P / patch)² transformer tokens, H×W image size.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from openhart.models.base import INDEX_NAME, PipelineBase, saved_pipeline_class
from openhart.models.hart import HartPipelineOutput
from openhart.models.pipeline_io import (
    OUTPUT_TYPES,
    check_generator,
    check_guidance,
    check_positive_int,
    check_prompt_list,
    to_output_type,
)
from openhart.text import TextEncoder, load_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.utils.config import Config, checked, read_json, write_json
from openhart.utils.random import GeneratorSpec, rand_tensor, randn_tensor
from openhart.utils.weights import load_component, save_component

logger = logging.getLogger(__name__)

CONFIG_NAME = "latent_diffusion.json"
PIPELINE_CLASS = "LatentDiffusionPipeline"
SAMPLERS = ("dpmsolver++", "ddim", "ddpm", "euler")
PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear", "scaled_linear")


@dataclasses.dataclass(frozen=True)
class LatentDiffusionConfig(Config):
    """The diffusion transformer's sizes, its noise schedule and sampler, and the latent statistics.

    The transformer's input/output channels, latent side and caption width come from the
    tokenizer and text encoder it is built on, so they are not repeated here.
    """

    field_prefix = "LatentDiffusionConfig."

    num_layers: int = checked(4, kind="int", ge=1)  # PixArt blocks (self-attention, cross-attention, MLP ×4)
    num_attention_heads: int = checked(4, kind="int", ge=1)
    attention_head_dim: int = checked(16, kind="int", ge=1)  # width = heads × head_dim
    # Latent pixels per token side; 1 on an 8×8 latent gives HART's 64 last-scale tokens.
    patch_size: int = checked(1, kind="int", ge=1)
    dropout: float = checked(0.0, kind="number", ge=0, lt=1)
    num_train_timesteps: int = checked(1000, kind="int", ge=2)
    beta_schedule: str = checked(
        "squaredcos_cap_v2", kind="choice", choices=BETA_SCHEDULES
    )  # cosine, as HART's head
    # What the network predicts: the noise, or v (Salimans & Ho).
    prediction_type: str = checked("epsilon", kind="choice", choices=PREDICTION_TYPES)
    # Default sampler; any of SAMPLERS can be picked per call.
    sampler: str = checked("dpmsolver++", kind="choice", choices=SAMPLERS)
    num_inference_steps: int = checked(20, kind="int", ge=1)  # the usual 20–50 of latent diffusion
    # Training: share of prompts replaced by the empty context (CFG).
    condition_dropout: float = checked(0.1, kind="number", ge=0, lt=1)
    # The tokenizer's latent is normalised to z = (latent − shift) / scale before diffusion, so the
    # noise schedule sees unit variance (Stable Diffusion's scaling_factor); fit_latent_statistics sets them.
    latent_shift: float = checked(0.0, kind="number")
    latent_scale: float = checked(1.0, kind="number", gt=0)

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim


# Per HART preset: a diffusion transformer with about the parameters of HART's transformer +
# residual head (PixArt-style counts from diffusers 0.42; HART's in parentheses).
DIFFUSION_BASELINE_SIZES: dict[str, LatentDiffusionConfig] = {
    # 0.32 M (HART 0.30 M)
    "tiny": LatentDiffusionConfig(num_layers=4, num_attention_heads=4, attention_head_dim=16),
    # 9.13 M (HART 9.45 M)
    "emoji-64": LatentDiffusionConfig(num_layers=8, num_attention_heads=4, attention_head_dim=64),
    # 740 M at 1024 px, 64×64×32 latent in 2×2 patches = 1024 tokens (HART 733 M)
    "hart-0.7b-1024": LatentDiffusionConfig(
        num_layers=19, num_attention_heads=24, attention_head_dim=64, patch_size=2
    ),
    "hart-0.7b-512": LatentDiffusionConfig(
        num_layers=19, num_attention_heads=24, attention_head_dim=64, patch_size=2
    ),
}


def diffusion_baseline_config(preset: str) -> LatentDiffusionConfig:
    """The baseline's config matched to HART preset ``preset`` (ValueError listing the known ones)."""
    if preset not in DIFFUSION_BASELINE_SIZES:
        raise ValueError(
            f"preset: no diffusion baseline size for {preset!r}; known: {sorted(DIFFUSION_BASELINE_SIZES)}"
        )
    return DIFFUSION_BASELINE_SIZES[preset]


def _scheduler_class(name: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    return {
        "dpmsolver++": DPMSolverMultistepScheduler,
        "ddim": DDIMScheduler,
        "ddpm": DDPMScheduler,
        "euler": EulerDiscreteScheduler,
    }[name]


@dataclass
class LatentDiffusionPipelineOutput(HartPipelineOutput):
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], or a (B, 3, H, W) tensor."""


class LatentDiffusionPipeline(PipelineBase):
    """Text-to-image by latent diffusion on HART's tokenizer latents (the diffusion baseline).

    Build with :meth:`from_components` (fresh transformer on a trained tokenizer + text encoder),
    :func:`build_diffusion_baseline` (a preset, random weights) or :meth:`from_pretrained`.
    Train ``pipeline.transformer`` with :meth:`training_loss`; the tokenizer and text encoder stay
    frozen.
    """

    # CFG of a call that names none: the value the HART pipeline uses unless its model ships
    # another, so that comparisons at the defaults mix the branches alike.
    default_guidance_scale: float = 4.5

    def __init__(
        self,
        text_encoder: TextEncoder,
        tokenizer: HybridTokenizer,
        transformer: torch.nn.Module,
        config: LatentDiffusionConfig,
    ) -> None:
        if not isinstance(config, LatentDiffusionConfig):
            raise TypeError(f"config: expected a LatentDiffusionConfig, got {type(config).__name__}")
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.config = config
        _check_components_fit(text_encoder, tokenizer, transformer, config)
        # The tokenizer and text encoder stay frozen (training_loss runs them without gradients);
        # they may be shared with a HartPipeline, so their flags are left alone. Modes too: loaders
        # call .eval(), a trainer keeps training its transformer (PipelineBase.eval).

    # ------------------------------------------------------------------ construction
    @staticmethod
    def build_transformer(
        config: LatentDiffusionConfig, tokenizer_config: TokenizerConfig, context_dim: int
    ) -> torch.nn.Module:
        """A freshly initialised ``PixArtTransformer2DModel`` for this tokenizer and text width."""
        from diffusers import PixArtTransformer2DModel

        latent_side = tokenizer_config.latent_size
        if latent_side % config.patch_size:
            raise ValueError(f"patch_size: {config.patch_size} does not divide the latent side {latent_side}")
        return PixArtTransformer2DModel(**_transformer_kwargs(config, tokenizer_config, context_dim))

    @classmethod
    def from_components(
        cls,
        text_encoder: TextEncoder,
        tokenizer: HybridTokenizer,
        config: LatentDiffusionConfig | None = None,
        seed: int | None = None,
    ) -> LatentDiffusionPipeline:
        """A new (untrained) diffusion transformer on a given tokenizer and text encoder.

        ``seed`` makes the initialisation reproducible without touching the caller's RNG state.
        """
        config = config or LatentDiffusionConfig()
        scope = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with scope:
            if seed is not None:
                torch.manual_seed(seed)
            transformer = cls.build_transformer(config, tokenizer.config, text_encoder.hidden_size)
        parameter = next(tokenizer.parameters())
        torch.nn.Module.to(transformer, device=parameter.device, dtype=parameter.dtype)
        return cls(text_encoder, tokenizer, transformer, config).eval()

    # ------------------------------------------------------------------ components
    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "transformer": self.transformer,
        }

    def _reference_parameter(self) -> torch.Tensor:
        return next(self.transformer.parameters())

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write text_encoder/, tokenizer/, transformer/ (diffusers format), the config and the index."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.text_encoder.save_pretrained(root / "text_encoder")
        save_component(self.tokenizer, root / "tokenizer")
        self.transformer.save_pretrained(root / "transformer", safe_serialization=True)
        write_json(root / CONFIG_NAME, self.config.to_dict())
        self._write_index(root)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_directory: str | os.PathLike[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> LatentDiffusionPipeline:
        """Load a folder written by :meth:`save_pretrained` (FileNotFoundError / ValueError naming what is wrong)."""
        from diffusers import PixArtTransformer2DModel

        root = Path(pretrained_directory)
        if not root.is_dir():
            raise FileNotFoundError(f"pretrained_directory: no such model folder: {root}")
        if not is_latent_diffusion_folder(root):
            raise FileNotFoundError(
                f"pretrained_directory: {root} is not a saved {PIPELINE_CLASS} (no {INDEX_NAME} naming it)"
            )
        config = LatentDiffusionConfig.from_dict(read_json(root / CONFIG_NAME))
        text_encoder = load_text_encoder(root / "text_encoder")
        tokenizer = load_component(HybridTokenizer, TokenizerConfig, root / "tokenizer")
        tokenizer_config = tokenizer.config
        # low_cpu_mem_usage needs `accelerate`; without it diffusers warns and falls back anyway.
        transformer = PixArtTransformer2DModel.from_pretrained(root / "transformer", low_cpu_mem_usage=False)
        expected = _transformer_kwargs(config, tokenizer_config, text_encoder.hidden_size)
        for key, value in expected.items():
            if transformer.config.get(key) != value:
                raise ValueError(
                    f"transformer/config.json: {key}={transformer.config.get(key)!r} does not match "
                    f"{CONFIG_NAME} and the tokenizer/text encoder ({value!r})"
                )
        return cls(text_encoder, tokenizer, transformer, config).eval().to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [−1, 1] → normalised latent z (B, Cz, P, P) in float32."""
        parameter = next(self.tokenizer.parameters())
        latent = self.tokenizer.encode(images.to(device=parameter.device, dtype=parameter.dtype)).float()
        return (latent - self.config.latent_shift) / self.config.latent_scale

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Normalised latent z (B, Cz, P, P) → images (B, 3, H, W) in [0, 1]."""
        latent = z.float() * self.config.latent_scale + self.config.latent_shift
        return ((self.tokenizer.decode(latent).float() + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def fit_latent_statistics(self, images: torch.Tensor) -> LatentDiffusionConfig:
        """Set ``latent_shift`` / ``latent_scale`` to the mean / std of the tokenizer's latents of
        ``images`` (B, 3, H, W) in [−1, 1], so diffusion starts from unit-variance latents. Call it
        once before training (a few hundred images suffice); returns the new config."""
        parameter = next(self.tokenizer.parameters())
        latent = self.tokenizer.encode(images.to(device=parameter.device, dtype=parameter.dtype)).float()
        std = float(latent.std())
        if not std > 0:
            raise ValueError("images: their latents have zero variance; cannot normalise")
        self.config = self.config.replace(latent_shift=float(latent.mean()), latent_scale=std)
        return self.config

    # ------------------------------------------------------------------ training
    def training_scheduler(self):
        """The diffusers DDPM scheduler that defines the forward (noising) process."""
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.config.num_train_timesteps,
            beta_schedule=self.config.beta_schedule,
            prediction_type=self.config.prediction_type,
            clip_sample=False,
        )

    def predict(
        self,
        z: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """The transformer's prediction (noise or v) for latents z (B, Cz, P, P) at ``timesteps`` (B,).

        ``model``: run this module instead of ``self.transformer`` (e.g. its DDP wrapper or EMA copy).
        """
        out = (model or self.transformer)(
            z.to(self.dtype),
            encoder_hidden_states=context,
            encoder_attention_mask=mask,
            timestep=timesteps,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None},
            return_dict=False,
        )[0]
        return out.float()

    def training_loss(
        self,
        images: torch.Tensor,
        captions: Sequence[str],
        generator: GeneratorSpec = None,
        condition_dropout: float | None = None,
        *,
        latents: torch.Tensor | None = None,
        text_features: tuple[torch.Tensor, torch.Tensor] | None = None,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Mean-squared diffusion loss of one batch (a scalar with gradients into the transformer).

        ``images``: (B, 3, H, W) in [−1, 1]; ``captions``: B strings; ``generator`` drives the
        timesteps, the noise and the condition dropout (one generator, or one per image);
        ``condition_dropout``: override of the config's. Hooks for a trainer: ``latents``,
        precomputed normalised latents (B, Cz, P, P) (:meth:`encode_images`; ``images`` is then
        ignored); ``text_features``, the captions' (context (B, T, Dctx), mask (B, T)), precomputed;
        ``model``, the module to run instead of ``self.transformer`` (its DDP wrapper).
        """
        captions = check_prompt_list(list(captions) if isinstance(captions, tuple) else captions, "captions")
        if latents is None:
            if not isinstance(images, torch.Tensor) or images.dim() != 4:
                raise ValueError("images: expected a (B, 3, H, W) tensor in [-1, 1]")
            z0 = self.encode_images(images)
        else:
            z0 = latents.float().to(self.device)
        batch = z0.shape[0]
        if len(captions) != batch:
            raise ValueError(f"captions: {len(captions)} captions for {batch} images")
        dropout = self.config.condition_dropout if condition_dropout is None else condition_dropout
        if not 0 <= dropout < 1:
            raise ValueError(f"condition_dropout must be in [0, 1), got {dropout}")
        with torch.no_grad():
            if text_features is None:
                context, mask = self.encode_prompt(captions)
            else:
                context = text_features[0].to(device=self.device, dtype=self.dtype)
                mask = text_features[1].to(self.device)
            if dropout > 0:
                drop = rand_tensor((batch,), generator, device=self.device) < dropout  # (B,)
                empty, empty_mask = self.empty_context(batch)
                context = torch.where(drop[:, None, None], empty, context)
                mask = torch.where(drop[:, None], empty_mask, mask)
        scheduler = self.training_scheduler()
        steps = self.config.num_train_timesteps
        timesteps = (rand_tensor((batch,), generator, device=self.device) * steps).long().clamp(max=steps - 1)
        noise = randn_tensor(z0.shape, generator, device=self.device)
        noisy = scheduler.add_noise(z0, noise, timesteps)
        target = (
            noise
            if self.config.prediction_type == "epsilon"
            else scheduler.get_velocity(z0, noise, timesteps)
        )
        prediction = self.predict(noisy, timesteps, context, mask, model=model)
        return F.mse_loss(prediction, target)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        *,
        guidance_scale: float | None = None,
        num_inference_steps: int | None = None,
        num_images_per_prompt: int = 1,
        generator: GeneratorSpec = None,
        output_type: str = "pil",
        return_dict: bool = True,
        sampler: str | None = None,
        progress: bool = False,
        stage_callback: Callable[[str], None] | None = None,
        use_cuda_graphs: bool | None = None,
    ) -> LatentDiffusionPipelineOutput | Any:
        """Generate images for ``prompt``.

        Args:
            prompt / negative_prompt: as :class:`~openhart.models.hart.HartPipeline`.
            guidance_scale: CFG strength g ≥ 0 in HART's convention, ``(1 + g)·cond − g·uncond``
                (0 = conditional only, the unconditional half is then skipped; default
                :attr:`default_guidance_scale`, 4.5).
            num_inference_steps: sampler steps (default: the config's, 20).
            num_images_per_prompt, generator, output_type, return_dict: as HartPipeline; the
                initial noise comes from ``generator`` (one per image: image i equals a single call).
            sampler: "dpmsolver++" (deterministic, default), "ddim", "ddpm" or "euler".
            progress: a progress bar over steps.
            stage_callback: called with "text_encoder", "denoise" and "decode" as each finishes
                (what ``benchmark_pipeline`` times).
            use_cuda_graphs: accepted for interface parity with HartPipeline; not used.
        """
        del use_cuda_graphs
        # 1. Check inputs.
        prompts = check_prompt_list(prompt, "prompt")
        check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        guidance_scale = self.default_guidance_scale if guidance_scale is None else guidance_scale
        check_guidance(guidance_scale)
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        check_positive_int(steps, "num_inference_steps")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        sampler = sampler or self.config.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        negatives = None
        if negative_prompt is not None:
            negatives = check_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise ValueError(
                    f"negative_prompt: got {len(negatives)} negative prompts for {len(prompts)} prompts"
                )
            negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        batch_size = len(prompts)
        check_generator(generator, batch_size)
        notify = stage_callback or (lambda stage: None)

        # 2. Encode the prompt; CFG runs cond and uncond as one doubled batch.
        guided = guidance_scale > 0
        context, mask = self.encode_prompt(prompts)
        if guided:
            uncond, uncond_mask = (
                self.encode_prompt(negatives) if negatives is not None else self.empty_context(batch_size)
            )
            context, mask = torch.cat([context, uncond]), torch.cat([mask, uncond_mask])  # (2B, T, Dctx)
        notify("text_encoder")

        # 3. Denoise from pure noise with the diffusers sampler.
        scheduler = _scheduler_class(sampler).from_config(self.training_scheduler().config)
        scheduler.set_timesteps(steps, device=self.device)
        cz, side = self.tokenizer.config.latent_channels, self.tokenizer.config.latent_size
        z = (
            randn_tensor((batch_size, cz, side, side), generator, device=self.device)
            * scheduler.init_noise_sigma
        )
        step_kwargs = (
            {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
        )
        for t in tqdm(scheduler.timesteps, desc="steps", disable=not progress, leave=False):
            model_input = scheduler.scale_model_input(torch.cat([z, z]) if guided else z, t)
            timesteps = t.expand(model_input.shape[0]).to(self.device)
            prediction = self.predict(model_input, timesteps, context, mask)
            if guided:
                cond, uncond_prediction = prediction.chunk(2)
                prediction = (1 + guidance_scale) * cond - guidance_scale * uncond_prediction
            z = scheduler.step(prediction, t, z, **step_kwargs).prev_sample.float()
        notify("denoise")

        # 4. Decode with the tokenizer's decoder.
        images = self.decode_latents(z)
        notify("decode")
        output = to_output_type(images, output_type)
        return LatentDiffusionPipelineOutput(images=output) if return_dict else output


def _transformer_kwargs(
    config: LatentDiffusionConfig, tokenizer_config: TokenizerConfig, context_dim: int
) -> dict:
    """PixArtTransformer2DModel arguments: PixArt-α blocks, no learned variance, no resolution embedding."""
    channels = tokenizer_config.latent_channels
    return {
        "num_attention_heads": config.num_attention_heads,
        "attention_head_dim": config.attention_head_dim,
        "in_channels": channels,
        "out_channels": channels,  # the prediction only (PixArt's released models also learn a variance)
        "num_layers": config.num_layers,
        "dropout": float(config.dropout),
        "cross_attention_dim": config.width,
        "sample_size": tokenizer_config.latent_size,
        "patch_size": config.patch_size,
        "caption_channels": context_dim,  # the text context is projected to the width by PixArt's caption MLP
        "use_additional_conditions": False,  # no resolution / aspect-ratio embedding: one image size
        "norm_type": "ada_norm_single",
    }


def _check_components_fit(
    text_encoder: TextEncoder,
    tokenizer: HybridTokenizer,
    transformer: torch.nn.Module,
    config: LatentDiffusionConfig,
) -> None:
    expected = _transformer_kwargs(config, tokenizer.config, text_encoder.hidden_size)
    transformer_config = getattr(transformer, "config", {})
    for key in ("in_channels", "out_channels", "sample_size", "patch_size", "caption_channels"):
        if transformer_config.get(key) != expected[key]:
            raise ValueError(
                f"components do not fit: transformer.config.{key}={transformer_config.get(key)!r}, "
                f"expected {expected[key]!r} from the tokenizer / text encoder"
            )


def is_latent_diffusion_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a saved :class:`LatentDiffusionPipeline`."""
    return saved_pipeline_class(path) == PIPELINE_CLASS
