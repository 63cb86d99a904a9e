"""HartPipeline: prompt → images with a text encoder, the hybrid tokenizer, the transformer and the head.

Legend: B images, T prompt tokens, S scales, P side of the last scale (latent side), Cz latent
channels, H×W image size.

A saved pipeline is a folder with one sub-folder per component, each ``config.json`` +
``model.safetensors`` (a text encoder whose weights come from an installed package or a local
model folder stores only its config), and ``model_index.json`` naming the components::

    model_index.json
    text_encoder/  tokenizer/  transformer/  diffusion_head/
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from openhart.diffusion import DiffusionHeadConfig, ResidualDiffusionHead
from openhart.errors import ConfigError, InvalidInputError
from openhart.models.base import INDEX_NAME, PipelineBase
from openhart.models.fast_path import SPEED_OPTIONS_NAME, HartFastPath, SpeedOptions
from openhart.models.pipeline_io import (
    OUTPUT_TYPES,
    check_generator,
    check_positive_int,
    check_prompt_list,
    to_output_type,
)
from openhart.sampling import (
    SAMPLER_SETTINGS_NAME,
    ForcedTokens,
    SamplerSettings,
    residual_rows_to_latent,
    sample_token_pyramid,
)
from openhart.text import TextEncoder, load_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.transformer import HartTransformer, HartTransformerConfig
from openhart.utils.config import read_json, write_json
from openhart.utils.memory import release_freed_memory
from openhart.utils.parked_weights import ParkedWeights
from openhart.utils.random import GeneratorSpec
from openhart.utils.weights import ModelFilesMissingError, load_component, save_component
from openhart.validation import InvalidTypeError, check_bool

if TYPE_CHECKING:
    from openhart.models.lora import PipelineAdapters

logger = logging.getLogger(__name__)


@dataclass
class HartPipelineOutput:
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], or a (B, 3, H, W) tensor."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


class HartPipeline(HartFastPath, PipelineBase):
    """Text-to-image with HART. Build from components, :meth:`from_pretrained`, or ``presets.build_pipeline``.

    The loaders return it in eval mode; built from components, call :meth:`eval` before sampling
    networks that are in train mode.
    """

    def __init__(
        self,
        text_encoder: TextEncoder,
        tokenizer: HybridTokenizer,
        transformer: HartTransformer,
        diffusion_head: ResidualDiffusionHead,
    ) -> None:
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.diffusion_head = diffusion_head
        _check_components_fit(text_encoder, tokenizer, transformer, diffusion_head)
        # Modes stay as given: loaders call .eval(), trainers keep training theirs (PipelineBase.eval).
        # Speed options (pipe.speed) and the CUDA graphs captured for them: models/fast_path.py.
        self._init_fast_path()
        # How calls sample unless told otherwise: the model's own defaults (sampler.json when saved).
        self.sampler_settings = SamplerSettings()
        # enable_text_encoder_offload(): the encoder's weights live only while prompts are encoded.
        self._offload_text_encoder = False
        self._text_encoder_quantized = False
        # An offloaded int8 encoder waits in a file (written once), not re-quantized at each call.
        self._parked_text_encoder: ParkedWeights | None = None
        # LoRA adapters on the transformer and head (openhart/models/lora.py), created by load_lora.
        self._lora: PipelineAdapters | None = None

    # ------------------------------------------------------------------ components, devices
    @property
    def default_guidance_scale(self) -> float:
        """The guidance a call uses when it names none: the model's sampler settings'."""
        return float(self.sampler_settings.guidance_scale)

    @property
    def default_num_inference_steps(self) -> int:
        """Residual-head steps of a call that names none: the sampler settings', else the head's config."""
        steps = self.sampler_settings.num_inference_steps
        return int(steps if steps is not None else self.diffusion_head.config.num_inference_steps)

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {
            "text_encoder": self.text_encoder,
            "tokenizer": self.tokenizer,
            "transformer": self.transformer,
            "diffusion_head": self.diffusion_head,
        }

    def _reference_parameter(self) -> torch.Tensor:
        # The output head: never quantised, so its dtype is the one the transformer computes in.
        return self.transformer.head.weight

    def _movable_components(self) -> dict[str, torch.nn.Module]:
        # An offloaded text encoder is rebuilt on the pipeline's device and dtype at the next call.
        skip = "text_encoder" if self._text_encoder_is_offloaded() else None
        return {name: module for name, module in self.components.items() if name != skip}

    def _after_move(self) -> None:
        self._drop_captured_graphs()

    def quantize(self, mode: str = "int8") -> HartPipeline:
        """Weight-only int8 for the transformer's and the text encoder's linears (torchao); returns self.

        Call after :meth:`to`. Memory and speed per dtype: docs/performance.md. Raises
        :class:`openhart.quantization.QuantizationUnavailableError` without torchao.
        """
        from openhart.quantization import quantize_pipeline

        self._reload_offloaded_text_encoder()
        quantize_pipeline(self, mode)
        self._text_encoder_quantized = True
        if self._parked_text_encoder is not None:  # holds the weights from before this call
            self._parked_text_encoder.discard()
        self._drop_captured_graphs()
        return self

    def enable_text_encoder_offload(self) -> None:
        """Free the text encoder's weights after each prompt encoding; reload them from their files next call.

        For a text encoder that is large beside the rest (the released Qwen2-1.5B: 1.5 B parameters
        beside the transformer's 0.7 B), so it does not sit in memory during sampling. Only for
        encoders whose weights live in files (``transformers``/``minilm`` kinds); ValueError otherwise.
        An int8 encoder (:meth:`quantize`) is parked in a temporary file of its int8 weights at the
        first call and mapped back from it (:mod:`openhart.utils.parked_weights`).
        """
        if self.text_encoder.saves_weights:
            raise ValueError(
                f"text encoder kind {self.text_encoder.config.kind!r} keeps its weights in memory only; "
                "offloading needs one read from files (a transformers model folder)"
            )
        self._offload_text_encoder = True

    def _text_encoder_is_offloaded(self) -> bool:
        return any(p.is_meta for p in self.text_encoder.parameters())

    def _reload_offloaded_text_encoder(self) -> None:
        if not self._text_encoder_is_offloaded():
            return
        if self._parked_text_encoder is not None:
            # The previous call's activations (decoder, KV cache) sit freed in the allocator's lists:
            # hand them back first, or the mapped encoder comes on top of them (laptop table, 512 px
            # int8: the next call's encoding peaked at 3.97 GiB without this, 3.21 GiB with it).
            release_freed_memory()
            self._parked_text_encoder.restore(self.device)
            return
        from openhart.text import build_text_encoder

        self.text_encoder = build_text_encoder(self.text_encoder.config, dtype=self.dtype).to(
            device=self.device
        )

    def _free_text_encoder(self) -> None:
        """Drop the encoder's weights until the next call: int8 ones to their parking file, others to
        nothing (they are rebuilt from the encoder's files)."""
        if self._text_encoder_quantized:
            if self._parked_text_encoder is None:
                self._parked_text_encoder = ParkedWeights()
            try:
                self._parked_text_encoder.park(self.text_encoder)
            except OSError as error:  # e.g. a full temporary folder: keep the encoder, lose nothing
                logger.warning("text encoder offload switched off: %s; the encoder stays in memory", error)
                self._offload_text_encoder = False
        else:
            self.text_encoder.to("meta")
            release_freed_memory()  # hands the weights back to the OS, not to the allocator's free lists

    # ------------------------------------------------------------------ LoRA adapters
    def load_lora(
        self,
        path: str | os.PathLike[str],
        scale: float = 1.0,
        *,
        check_base: bool = True,
        base_name: str | None = None,
    ) -> str:
        """Add the LoRA adapter at ``path`` (PEFT's format) with ``scale``; returns its adapter name.

        Several adapters can be loaded; all are active, each with its own scale (0: no effect).
        The adapter's recorded base model must be this one (ModelLoadError naming both otherwise;
        ``base_name`` is this model's name for that message). See :mod:`openhart.models.lora`.
        """
        from openhart.models.lora import PipelineAdapters

        if self._lora is None:
            self._lora = PipelineAdapters(self)
        name = self._lora.load(path, scale, check_base=check_base, base_name=base_name)
        self._drop_captured_graphs()  # they replay the layers as they were
        return name

    def set_lora_scale(self, adapter_name: str, scale: float) -> None:
        """Change the scale of a loaded adapter."""
        self._adapters().set_scale(adapter_name, scale)
        self._drop_captured_graphs()

    def fuse_lora(self) -> None:
        """Add the adapters' scaled updates into the weights: base-model speed, same images up to rounding."""
        self._adapters().fuse()
        self._drop_captured_graphs()

    def unfuse_lora(self) -> None:
        """Take fused updates out of the weights again (up to float rounding)."""
        self._adapters().unfuse()
        self._drop_captured_graphs()

    def unload_lora(self) -> None:
        """Remove every adapter's layers; after :meth:`fuse_lora` the fused weights stay (a merged model)."""
        if self._lora is not None:
            self._lora.unload()
            self._lora = None
        self._drop_captured_graphs()

    def _adapters(self) -> PipelineAdapters:
        if self._lora is None:
            from openhart.errors import InvalidInputError

            raise InvalidInputError("no LoRA adapter is loaded (pipe.load_lora(path) first)")
        return self._lora

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write one sub-folder per component (config.json + model.safetensors) and model_index.json."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.text_encoder.save_pretrained(root / "text_encoder")
        for name in ("tokenizer", "transformer", "diffusion_head"):
            save_component(self.components[name], root / name)
        write_json(root / SAMPLER_SETTINGS_NAME, self.sampler_settings.to_dict())
        write_json(root / SPEED_OPTIONS_NAME, self.speed.result_fields())
        self._write_index(root)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_directory: str | os.PathLike[str],
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        text_encoder: TextEncoder | None = None,
    ) -> HartPipeline:
        """Load a folder written by :meth:`save_pretrained`; a ready ``text_encoder`` replaces the saved one.

        This reads our own layout only. :func:`openhart.load` takes any name: a folder of this
        layout or the released one, a preset, a shipped model or a Hugging Face repo id.

        Raises FileNotFoundError naming the missing folder/file and
        :class:`~openhart.utils.weights.WeightsMismatchError` naming any missing or mis-shaped tensor.
        """
        root = Path(pretrained_directory)
        if not root.is_dir():
            raise ModelFilesMissingError(f"pretrained_directory: no such model folder: {root}")
        if not (root / INDEX_NAME).is_file():
            raise ModelFilesMissingError(
                f"pretrained_directory: {root} has no {INDEX_NAME} (not a saved HartPipeline; "
                "openhart.load() also reads the released layout and repo ids)"
            )
        if not isinstance(text_encoder, TextEncoder):
            text_encoder = load_text_encoder(root / "text_encoder")
        pipeline = cls(
            text_encoder,
            load_component(HybridTokenizer, TokenizerConfig, root / "tokenizer"),
            load_component(HartTransformer, HartTransformerConfig, root / "transformer"),
            load_component(ResidualDiffusionHead, DiffusionHeadConfig, root / "diffusion_head"),
        )
        if (root / SAMPLER_SETTINGS_NAME).is_file():  # folders saved before it existed have none
            pipeline.sampler_settings = SamplerSettings.from_dict(read_json(root / SAMPLER_SETTINGS_NAME))
        if (root / SPEED_OPTIONS_NAME).is_file():  # likewise
            pipeline.speed = SpeedOptions.from_dict(read_json(root / SPEED_OPTIONS_NAME))
        return pipeline.eval().to(device=device, dtype=dtype)

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
        sampler: SamplerSettings | None = None,
        sample_residual: bool = True,
        progress: bool = False,
        stage_callback: Callable[[str], None] | None = None,
        use_cuda_graphs: bool | None = None,
        unguided_last_scales: int | None = None,
        forced_tokens: ForcedTokens | None = None,
        **sampler_options: Any,
    ) -> HartPipelineOutput | Any:
        """Generate images for ``prompt``.

        Args:
            prompt: one prompt or a list of prompts.
            negative_prompt: prompt(s) for the unconditional branch of CFG; by default that branch
                sees an empty (all-zero, one-token) context, as in the released HART.
            guidance_scale: CFG strength g ≥ 0 in HART's convention (0 = conditional only); the
                scales get a ramp of it and the residual head the last value (default: the
                sampler settings', 4.5 unless the model ships others).
            num_inference_steps: denoising steps of the residual head (default: the sampler
                settings', else the head's config, 8).
            num_images_per_prompt: images per prompt (consecutive in the output).
            generator: a ``torch.Generator`` for the whole batch, or a list with one per image
                (then image i is exactly what a single call with generator i gives).
            output_type: "pil" (list of images), "np" ((B, H, W, 3) in [0, 1]) or "pt" ((B, 3, H, W)).
            return_dict: return :class:`HartPipelineOutput` (else the bare images).
            sampler: how tokens and the residual are drawn (:class:`~openhart.sampling.SamplerSettings`;
                default: :attr:`sampler_settings`, the model's own). ``sampler_options`` are
                fields of it that override the ones given (``top_k``, ``top_p``,
                ``temperature``, ``guidance_ramp``, ``smooth_inputs``, ``residual_temperature``).
            sample_residual: False decodes the discrete-only latent (a VAR-style baseline).
            progress: show a progress bar over scales.
            stage_callback: called with a stage name when it finishes: "text_encoder",
                "scale_0".."scale_{S-1}", "residual", "decode" (benchmarks time stages with it).
            use_cuda_graphs: this call's ``speed.cuda_graphs`` (None: :attr:`speed`'s): replay one
                captured CUDA graph per scale instead of launching every kernel (by default on
                CUDA devices). The first call of a batch size captures them.
            unguided_last_scales: this call's ``speed.unguided_last_scales`` (None: :attr:`speed`'s,
                0 unless set): the last n scales (and the residual head) run without CFG, halving
                their work; a speed/quality trade measured in docs/performance.md. Runs those
                calls without CUDA graphs.
            forced_tokens: editing's teacher-forced ids and residual (one row per image); built by
                :meth:`edit`, which is the way to use it.
        """
        # 1. Check inputs; the sampler settings are one value, checked when made.
        settings = self._sampler_settings(sampler, guidance_scale, num_inference_steps, sampler_options)
        prompts = check_prompt_list(prompt, "prompt")
        check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        negatives = None
        if negative_prompt is not None:
            negatives = check_prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * len(prompts)
            if len(negatives) != len(prompts):
                raise InvalidInputError(
                    f"negative_prompt: got {len(negatives)} negative prompts for {len(prompts)} prompts"
                )
        if output_type not in OUTPUT_TYPES:
            raise InvalidInputError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        # A string such as "no" is truthy: flags must be real bools, not whatever converts to one.
        for flag_name, flag in (
            ("return_dict", return_dict),
            ("sample_residual", sample_residual),
            ("progress", progress),
        ):
            check_bool(flag, flag_name)
        if use_cuda_graphs is not None:
            check_bool(use_cuda_graphs, "use_cuda_graphs")
        speed = self._call_speed(use_cuda_graphs, unguided_last_scales)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if negatives is not None:
            negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        batch_size = len(prompts)
        check_generator(generator, batch_size)

        # 2. Encode the prompt (and the unconditional context).
        self._reload_offloaded_text_encoder()
        context, context_mask = self.encode_prompt(prompts)
        if negatives is not None:
            uncond_context, uncond_mask = self.encode_prompt(negatives)
        else:
            uncond_context, uncond_mask = self.empty_context(batch_size)
        if self._offload_text_encoder:
            self._free_text_encoder()  # for the sampling below
        notify = stage_callback or (lambda stage: None)
        notify("text_encoder")

        # 3. Sample the discrete token pyramid, scale by scale.
        num_scales = self.transformer.config.num_scales
        bar = tqdm(total=num_scales, desc="scales", disable=not progress, leave=False)
        graphs = self._graph_generator(batch_size, settings, speed.cuda_graphs, speed.unguided_last_scales)
        with graphs.lock if graphs is not None else contextlib.nullcontext():
            pyramid = sample_token_pyramid(
                self.transformer,
                self.tokenizer.quantize,
                context,
                context_mask,
                uncond_context,
                uncond_mask,
                guidance_scale=float(settings.guidance_scale),
                guidance_ramp=settings.guidance_ramp,
                top_k=settings.top_k,
                top_p=settings.top_p,
                temperature=float(settings.temperature),
                smooth_inputs=settings.smooth_inputs,
                generator=generator,
                on_scale=lambda k, _logits: (bar.update(1), notify(f"scale_{k}")),
                graphs=graphs,
                unguided_last_scales=speed.unguided_last_scales,
                forced_tokens=forced_tokens,
            )
        bar.close()

        # 4. Sample the continuous residual of the last scale with the diffusion head.
        latent = pyramid.discrete_latent
        if sample_residual:
            residual_graph = None
            if graphs is not None:  # CUDA graphs on: the residual loop is replayed too
                residual_graph = self._residual_graph(
                    pyramid.condition,
                    pyramid.uncond_condition,
                    pyramid.residual_guidance,
                    settings.num_inference_steps,
                    float(settings.residual_temperature),
                )
            if residual_graph is not None:
                residual_rows = residual_graph.sample(pyramid.condition, pyramid.uncond_condition, generator)
            else:  # eager: CUDA graphs off, or this configuration could not be captured
                residual_rows = self.diffusion_head.sample(
                    pyramid.condition,
                    uncond_condition=pyramid.uncond_condition,
                    guidance_scale=pyramid.residual_guidance,
                    num_inference_steps=settings.num_inference_steps,
                    generator=generator,
                    temperature=float(settings.residual_temperature),
                )  # (B·P², Cz)
            side = self.transformer.config.patch_nums[-1]
            residual = residual_rows_to_latent(residual_rows, batch_size, side).to(latent.dtype)
            if forced_tokens is not None:
                residual = forced_tokens.mix_residual(residual)
            latent = latent + residual
            notify("residual")

        # 5. Decode to pixels and post-process.
        images = (self.decode_latent(latent).float() + 1) / 2  # (B, 3, H, W) in [0, 1]
        notify("decode")
        output = to_output_type(images.clamp(0, 1), output_type)
        return HartPipelineOutput(images=output) if return_dict else output

    def _sampler_settings(
        self,
        sampler: SamplerSettings | None,
        guidance_scale: float | None,
        num_inference_steps: int | None,
        options: dict[str, Any],
    ) -> SamplerSettings:
        """The call's settings: ``sampler`` (or the model's), with the call's keyword overrides."""
        if sampler is not None and not isinstance(sampler, SamplerSettings):
            raise InvalidTypeError(f"sampler must be a SamplerSettings, got {type(sampler).__name__}")
        fields = {field.name for field in dataclasses.fields(SamplerSettings)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise InvalidTypeError(
                f"unexpected keyword argument(s) {unknown}; sampler settings: {sorted(fields)}"
            )
        overrides = dict(options)
        if guidance_scale is not None:
            overrides["guidance_scale"] = guidance_scale
        if num_inference_steps is not None:
            overrides["num_inference_steps"] = num_inference_steps
        settings = sampler or self.sampler_settings
        try:
            settings = settings.replace(**overrides) if overrides else settings
            settings.check_scales(self.transformer.config.num_scales)
        except ConfigError as error:
            # A call's argument, not a config file: an input error (a TypeError and a ValueError
            # both, as the separate checks before SamplerSettings raised one or the other).
            raise InvalidTypeError(str(error)) from error
        return settings

    def edit(self, prompt: str | Sequence[str], image: Any, mask_image: Any = None, **kwargs: Any) -> Any:
        """Inpainting, outpainting and variations of ``image``: see :class:`openhart.models.editing.HartEditPipeline`."""
        from openhart.models.editing import HartEditPipeline  # editing imports the sampler, not this module

        return HartEditPipeline(self)(prompt, image, mask_image, **kwargs)


# ---------------------------------------------------------------------- checks and helpers
def _check_components_fit(
    text_encoder: TextEncoder,
    tokenizer: HybridTokenizer,
    transformer: HartTransformer,
    head: ResidualDiffusionHead,
) -> None:
    t, z, h = transformer.config, tokenizer.config, head.config
    pairs = {
        "text_encoder.hidden_size vs transformer.context_dim": (text_encoder.hidden_size, t.context_dim),
        "text_encoder.max_length vs transformer.context_tokens": (text_encoder.max_length, t.context_tokens),
        "tokenizer.codebook_size vs transformer.codebook_size": (z.codebook_size, t.codebook_size),
        "tokenizer.latent_channels vs transformer.latent_channels": (z.latent_channels, t.latent_channels),
        "tokenizer.patch_nums vs transformer.patch_nums": (tuple(z.patch_nums), tuple(t.patch_nums)),
        "diffusion_head.latent_channels vs tokenizer.latent_channels": (h.latent_channels, z.latent_channels),
        "diffusion_head.condition_dim vs transformer.width": (h.condition_dim, t.width),
    }
    for what, (a, b) in pairs.items():
        if a != b:
            raise ValueError(f"components do not fit: {what}: {a} != {b}")
