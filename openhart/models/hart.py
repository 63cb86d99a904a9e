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
import math
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
from openhart.diffusion.graphs import CUDAGraphResidualSampler
from openhart.errors import ConfigError, InvalidInputError
from openhart.models.base import INDEX_NAME, PipelineBase
from openhart.sampling import (
    SAMPLER_SETTINGS_NAME,
    ForcedTokens,
    SamplerSettings,
    check_unguided_last_scales,
    residual_rows_to_latent,
    sample_token_pyramid,
    sampler_batch_rows,
)
from openhart.text import TextEncoder, load_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.transformer import HartTransformer, HartTransformerConfig
from openhart.transformer.graphs import CUDAGraphGenerator
from openhart.utils.config import read_json, write_json
from openhart.utils.random import GeneratorSpec
from openhart.utils.weights import ModelFilesMissingError, load_component, save_component
from openhart.validation import InvalidTypeError, check_bool, check_encodable

if TYPE_CHECKING:
    from openhart.models.lora import PipelineAdapters

OUTPUT_TYPES = ("pil", "np", "pt")


@dataclass
class HartPipelineOutput:
    """``images``: a list of PIL images, a (B, H, W, 3) float array in [0, 1], or a (B, 3, H, W) tensor."""

    images: list[Image.Image] | np.ndarray | torch.Tensor


class HartPipeline(PipelineBase):
    """Text-to-image with HART. Build from components, :meth:`from_pretrained`, or ``presets.build_pipeline``."""

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
        for module in self.components.values():
            module.eval()
        # Captured CUDA graphs per (CFG batch rows, dtype) for the scales, and per (rows, dtype,
        # steps, guidance, temperature, CFG) for the residual loop; they point at the weights'
        # memory, so any .to() drops them.
        self._graph_generators: dict[tuple[int, torch.dtype], CUDAGraphGenerator] = {}
        self._residual_graphs: dict[tuple, CUDAGraphResidualSampler] = {}
        # Memory format of the decoder's weights and input. None, the default, converts no weights
        # and picks the input's layout per device. Measured (docs/performance.md): on an H200 eager
        # channels-last is 1.6x slower at 1024 px (GroupNorm copies NHWC inputs back to NCHW), so
        # contiguous there; compiled (see :meth:`compile`) channels-last is fastest; on a CPU a
        # channels-last input alone makes the eager 512 px decoder 2.3x faster in bfloat16 and
        # 1.3x in float32 (the weights are reordered inside the convolution, same numbers as
        # converted ones), so channels-last there.
        self.decoder_memory_format: torch.memory_format | None = None
        # How calls sample unless told otherwise: the model's own defaults (sampler.json when saved).
        self.sampler_settings = SamplerSettings()
        # enable_text_encoder_offload(): the encoder's weights live only while prompts are encoded.
        self._offload_text_encoder = False
        self._text_encoder_quantized = False
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
        self._graph_generators.clear()
        self._residual_graphs.clear()

    def quantize(self, mode: str = "int8") -> HartPipeline:
        """Weight-only int8 for the transformer's and the text encoder's linears (torchao); returns self.

        Call after :meth:`to`. Memory and speed per dtype: docs/performance.md. Raises
        :class:`openhart.quantization.QuantizationUnavailableError` without torchao.
        """
        from openhart.quantization import quantize_pipeline

        self._reload_offloaded_text_encoder()
        quantize_pipeline(self, mode)
        self._text_encoder_quantized = True
        self._graph_generators.clear()
        self._residual_graphs.clear()
        return self

    def enable_text_encoder_offload(self) -> None:
        """Free the text encoder's weights after each prompt encoding; reload them from their files next call.

        For a text encoder that is large beside the rest (the released Qwen2-1.5B: 1.5 B parameters
        beside the transformer's 0.7 B), so it does not sit in memory during sampling. Only for
        encoders whose weights live in files (``transformers``/``minilm`` kinds); ValueError otherwise.
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
        from openhart.text import build_text_encoder

        encoder = build_text_encoder(self.text_encoder.config, dtype=self.dtype).to(device=self.device)
        if self._text_encoder_quantized:
            from openhart.quantization import quantize_linears_int8

            quantize_linears_int8(encoder)
        self.text_encoder = encoder

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

    def _drop_captured_graphs(self) -> None:
        self._graph_generators.clear()
        self._residual_graphs.clear()

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write one sub-folder per component (config.json + model.safetensors) and model_index.json."""
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.text_encoder.save_pretrained(root / "text_encoder")
        for name in ("tokenizer", "transformer", "diffusion_head"):
            save_component(self.components[name], root / name)
        write_json(root / SAMPLER_SETTINGS_NAME, self.sampler_settings.to_dict())
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
        return pipeline.to(device=device, dtype=dtype)

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
        unguided_last_scales: int = 0,
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
            use_cuda_graphs: replay one captured CUDA graph per scale instead of launching every
                kernel (None: on CUDA devices). The first call of a batch size captures them.
            unguided_last_scales: speed/quality knob, off (0) by default: the last n scales (and
                the residual head) run without CFG, halving their work; quality measured in
                docs/performance.md. Runs those calls without CUDA graphs.
            forced_tokens: editing's teacher-forced ids and residual (one row per image); built by
                :meth:`edit`, which is the way to use it.
        """
        # 1. Check inputs; the sampler settings are one value, checked when made.
        settings = self._sampler_settings(sampler, guidance_scale, num_inference_steps, sampler_options)
        prompts = _check_prompt_list(prompt, "prompt")
        _check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        negatives = None
        if negative_prompt is not None:
            negatives = _check_prompt_list(negative_prompt, "negative_prompt")
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
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        if negatives is not None:
            negatives = [p for p in negatives for _ in range(num_images_per_prompt)]
        batch_size = len(prompts)
        _check_generator(generator, batch_size)

        # 2. Encode the prompt (and the unconditional context).
        self._reload_offloaded_text_encoder()
        context, context_mask = self.encode_prompt(prompts)
        if negatives is not None:
            uncond_context, uncond_mask = self.encode_prompt(negatives)
        else:
            uncond_context, uncond_mask = self.empty_context(batch_size)
        if self._offload_text_encoder:
            self.text_encoder.to("meta")  # frees its weights for the sampling below
        notify = stage_callback or (lambda stage: None)
        notify("text_encoder")

        # 3. Sample the discrete token pyramid, scale by scale.
        num_scales = self.transformer.config.num_scales
        bar = tqdm(total=num_scales, desc="scales", disable=not progress, leave=False)
        check_unguided_last_scales(unguided_last_scales, num_scales)
        graphs = self._graph_generator(batch_size, settings, use_cuda_graphs, unguided_last_scales)
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
                unguided_last_scales=unguided_last_scales,
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
        output = _to_output_type(images.clamp(0, 1), output_type)
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

    def compile(
        self,
        *,
        transformer: bool = True,
        decoder: bool | None = None,
        diffusion_head: bool = True,
        mode: str | None = None,
        decoder_memory_format: torch.memory_format = torch.channels_last,
    ) -> HartPipeline:
        """Opt in to ``torch.compile`` for the transformer blocks, the decoder and the residual head; returns self.

        Worth it on a CUDA GPU (docs/performance.md): the blocks' elementwise work fuses into a
        few kernels per layer; the decoder runs channels-last with its GroupNorm statistics from
        per-channel sums (``Decoder.use_channel_sum_statistics``), fused with SiLU, ~3x faster
        than eager at 1024 px; the first call of each shape compiles (tens of seconds).
        ``decoder=None`` compiles the decoder on CUDA devices only: on a 2-core CPU the eager
        decoder with a channels-last input (the default there) is faster than the compiled one
        (512 px, bf16: 1.15–1.25 s vs 1.47 s, docs/performance.md).
        Modules are compiled in place, so weights, ``save_pretrained`` and ``.to`` are unchanged;
        CUDA graphs captured before are dropped and recaptured around the compiled code on the
        next call. Images then differ from the eager path by bf16 rounding.
        ``decoder_memory_format``: the compiled decoder's layout (channels-last measured fastest
        once GroupNorm is fused).
        """
        if decoder is None:
            decoder = self.device.type == "cuda"
        if transformer:
            self.transformer.compile_blocks()
        if decoder:
            self.tokenizer.decoder.compile(mode=mode)
            self.tokenizer.decoder.pad_output_filters(32)
            self.tokenizer.decoder.use_channel_sum_statistics(True)
            self.decoder_memory_format = decoder_memory_format
        if diffusion_head:
            self.diffusion_head.compile(mode=mode)
        self._graph_generators.clear()
        self._residual_graphs.clear()
        return self

    @torch.no_grad()
    def decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, Cz, h, w) → images (B, 3, H, W) in [−1, 1], computed in :attr:`decoder_memory_format`."""
        memory_format = self.decoder_memory_format
        if memory_format is None:
            # The weights, which other pipelines may share (the diffusion baseline), stay as they are.
            if latent.device.type == "cpu":
                latent = latent.contiguous(memory_format=torch.channels_last)
            return self.tokenizer.decode(latent).contiguous()
        decoder = self.tokenizer.decoder
        # The weights keep the format once converted: one weight tells (``.to`` costs ~1 ms a call).
        if not decoder.conv_in.weight.is_contiguous(memory_format=memory_format):
            decoder.to(memory_format=memory_format)
        latent = latent.contiguous(memory_format=memory_format)
        return self.tokenizer.decode(latent).contiguous()

    def _residual_graph(
        self,
        condition: torch.Tensor,
        uncond_condition: torch.Tensor | None,
        guidance_scale: float,
        num_inference_steps: int | None,
        temperature: float,
    ) -> CUDAGraphResidualSampler | None:
        use_uncond = uncond_condition is not None and guidance_scale > 0
        key = (
            condition.shape[0],
            condition.dtype,
            num_inference_steps,
            guidance_scale,
            temperature,
            use_uncond,
        )
        if key in self._residual_graphs and self._residual_graphs[key].failed:
            return None
        if key not in self._residual_graphs:
            if len(self._residual_graphs) >= 8:  # each holds its own memory pool: keep a few settings
                self._residual_graphs.pop(next(iter(self._residual_graphs)))
            self._residual_graphs[key] = CUDAGraphResidualSampler(
                self.diffusion_head,
                condition.shape[0],
                condition.dtype,
                condition.device,
                guidance_scale=guidance_scale,
                num_inference_steps=num_inference_steps,
                temperature=temperature,
                use_uncond=use_uncond,
            )
        return self._residual_graphs[key]

    def _graph_generator(
        self,
        batch_size: int,
        settings: SamplerSettings,
        use_cuda_graphs: bool | None,
        unguided_last_scales: int = 0,
    ) -> CUDAGraphGenerator | None:
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        if not use_cuda_graphs:
            return None
        rows = sampler_batch_rows(
            batch_size,
            settings.guidance_scale,
            settings.guidance_ramp,
            self.transformer.config.num_scales,
            unguided_last_scales,
        )
        key = (rows, self.dtype)
        generator = self._graph_generators.get(key)
        # Rebuilt when the cache's size changed since the capture (transformer.store_last_scale_keys).
        if generator is None or generator.state.cache.max_length != self.transformer.cache_room():
            generator = CUDAGraphGenerator(self.transformer, rows, self.device, self.dtype)
            self._graph_generators[key] = generator
        return generator


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


def _check_prompt_list(value: object, name: str) -> list[str]:
    if isinstance(value, str):
        return [check_encodable(value, name)]
    if not isinstance(value, (list, tuple)):
        raise InvalidTypeError(f"{name} must be a str or a list of str, got {type(value).__name__}")
    if not value:
        raise InvalidInputError(f"{name} must not be an empty list")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise InvalidTypeError(f"{name}[{i}] must be a str, got {type(item).__name__}")
        check_encodable(item, f"{name}[{i}]")
    return list(value)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_positive_int(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise InvalidInputError(f"{name} must be ≥ 1, got {value}")


def _check_guidance(value: object) -> None:
    if not _is_number(value):
        raise InvalidTypeError(f"guidance_scale must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise InvalidInputError(f"guidance_scale must be finite and ≥ 0 (0 = conditional only), got {value}")


def _check_generator(generator: GeneratorSpec, batch_size: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)) or not all(isinstance(g, torch.Generator) for g in generator):
        raise InvalidTypeError("generator must be a torch.Generator, a list of them, or None")
    if len(generator) != batch_size:
        raise InvalidInputError(f"generator: got {len(generator)} generators for {batch_size} images")


def _to_output_type(images: torch.Tensor, output_type: str) -> list[Image.Image] | np.ndarray | torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] on the pipeline's device → the output type, on the CPU."""
    if output_type == "pt":
        return _to_host(images)
    images = images.permute(0, 2, 3, 1)  # (B, H, W, 3)
    if output_type == "pil" and images.is_cuda:
        # Quantised before the copy: a quarter of the bytes cross to the host. The same float32
        # product and round-half-to-even as numpy's below, so the same pixels.
        pixels = _to_host((images * 255).round().to(torch.uint8)).numpy()
        return [Image.fromarray(image) for image in pixels]
    array = _to_host(images).numpy()
    if output_type == "np":
        return array
    return [Image.fromarray((image * 255).round().astype(np.uint8)) for image in array]


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``tensor`` (contiguous when it comes from a CUDA device, through page-locked memory).

    A batch of eight 1024 px float images (100 MB) took 6.8 ms pageable and 1.9 ms through a
    page-locked buffer on an H200 machine (docs/performance.md); PyTorch's caching host allocator
    recycles the buffer once the returned tensor is freed.
    """
    if tensor.device.type != "cuda":
        return tensor.cpu()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor.contiguous(), non_blocking=True)
    torch.cuda.current_stream(tensor.device).synchronize()
    return host
