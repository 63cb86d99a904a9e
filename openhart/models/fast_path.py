"""HART's inference fast path: the speed options, captured CUDA graphs, compiled modules, decoder layout.

Legend: B images, P side of the last scale, Cz latent channels, H×W image size.

Everything here makes :class:`~openhart.models.hart.HartPipeline` faster and nothing here changes
what it computes, except ``unguided_last_scales``, a speed/quality trade the caller opts in to, and
``cpu_dtype``, which commands read before they load a model.
The options are one value, :class:`SpeedOptions`, checked once and set on a pipeline with
``pipe.speed = SpeedOptions(...)`` or ``pipe.set_speed_options(field=value)``; the fields that
change images are saved with the model (``speed.json``). Compiling is an action on the modules
(``pipe.compile()``), not a per-call choice, so it stays a method; what it changes for later
calls (the decoder's memory format) it writes into the options.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from openhart.diffusion.graphs import CUDAGraphResidualSampler
from openhart.sampling import SamplerSettings, check_unguided_last_scales, sampler_batch_rows
from openhart.transformer.graphs import CUDAGraphGenerator
from openhart.utils.config import Config, checked
from openhart.validation import InvalidTypeError

if TYPE_CHECKING:
    from openhart.diffusion import ResidualDiffusionHead
    from openhart.tokenizer import HybridTokenizer
    from openhart.transformer import HartTransformer

SPEED_OPTIONS_NAME = "speed.json"

# Layouts the decoder can compute in, by the name a saved or typed option uses.
MEMORY_FORMATS: dict[str, torch.memory_format] = {
    "channels_last": torch.channels_last,
    "contiguous_format": torch.contiguous_format,
}

# Each residual graph holds its own memory pool: keep the graphs of a few settings only.
MAX_RESIDUAL_GRAPHS = 8


@dataclass(frozen=True)
class SpeedOptions(Config):
    """How a :class:`HartPipeline` runs fast: one value, checked once (docs/performance.md measures each).

    Only ``unguided_last_scales`` changes the images; it is saved with the model. The others give
    the same images (CUDA graphs, the cache's room and the decoder's layout change which kernels
    run, not what they compute beyond float rounding).
    """

    field_prefix = "speed."
    # The fields that change images: what ``save_pretrained`` writes beside the sampler settings.
    RESULT_FIELDS: ClassVar[tuple[str, ...]] = ("unguided_last_scales", "cpu_dtype")

    # Replay one captured CUDA graph per scale and for the residual loop (None: on CUDA devices).
    cuda_graphs: bool | None = checked(None, kind="bool", optional=True)
    # Speed/quality trade, off (0) by default: the last n scales and the residual head run without
    # CFG, halving their work; those calls run without CUDA graphs.
    unguided_last_scales: int = checked(0, kind="int", ge=0)
    # Room in the KV cache for the last scale's keys too: same images, more memory, faster at batch 8.
    store_last_scale_keys: bool = checked(False, kind="bool")
    # The decoder's weights' and input's layout; None converts no weights and picks the input's
    # layout per device. Measured: on an H200 eager channels-last is 1.6x slower at 1024 px
    # (GroupNorm copies NHWC inputs back to NCHW), so contiguous there; compiled, channels-last is
    # fastest; on a CPU a channels-last input alone makes the eager 512 px decoder 2.3x faster in
    # bfloat16 and 1.3x in float32 (the weights are reordered inside the convolution, same numbers
    # as converted ones), so channels-last there.
    decoder_memory_format: str | None = checked(
        None, kind="choice", choices=tuple(MEMORY_FORMATS), optional=True
    )

    # The dtype ``--dtype auto`` loads the model in on a CPU that computes bfloat16 natively (None: by
    # the size of its weights, see ``openhart.command_setup.resolve_dtype``). A model's trainers set
    # it to the dtype they measured it in when that is the faster one: the pipeline itself runs in
    # whatever dtype it was loaded in and does not read it.
    cpu_dtype: str | None = checked(None, kind="choice", choices=("float32", "bfloat16"), optional=True)

    def check_scales(self, num_scales: int) -> None:
        """``unguided_last_scales`` may not exceed the scales of the model it runs."""
        if self.unguided_last_scales > num_scales:
            self.fail("unguided_last_scales", f"an int in [0, {num_scales}]", self.unguided_last_scales)

    def memory_format(self) -> torch.memory_format | None:
        return None if self.decoder_memory_format is None else MEMORY_FORMATS[self.decoder_memory_format]

    def result_fields(self) -> dict[str, Any]:
        """The fields that change images (:attr:`RESULT_FIELDS`), as saved with a model."""
        return {name: getattr(self, name) for name in self.RESULT_FIELDS}


def memory_format_name(memory_format: torch.memory_format | None) -> str | None:
    """``torch.channels_last`` → ``"channels_last"``; InvalidTypeError for a layout the decoder has no use for."""
    if memory_format is None:
        return None
    for name, value in MEMORY_FORMATS.items():
        if memory_format == value:
            return name
    raise InvalidTypeError(
        f"decoder_memory_format must be one of torch.{', torch.'.join(MEMORY_FORMATS)} or None, "
        f"got {memory_format!r}"
    )


class HartFastPath:
    """The fast-path half of :class:`HartPipeline`: its speed options and what it captures for them.

    A mixin: it reads the pipeline's ``transformer``, ``tokenizer``, ``diffusion_head``,
    ``device`` and ``dtype``.
    """

    transformer: HartTransformer
    tokenizer: HybridTokenizer
    diffusion_head: ResidualDiffusionHead
    device: torch.device
    dtype: torch.dtype

    def _init_fast_path(self) -> None:
        self._speed = SpeedOptions()
        # Captured CUDA graphs per (CFG batch rows, dtype) for the scales, and per (rows, dtype,
        # steps, guidance, temperature, CFG) for the residual loop; they point at the weights'
        # memory, so any .to() drops them.
        self._graph_generators: dict[tuple[int, torch.dtype], CUDAGraphGenerator] = {}
        self._residual_graphs: dict[tuple, CUDAGraphResidualSampler] = {}

    # ------------------------------------------------------------------ the options
    @property
    def speed(self) -> SpeedOptions:
        """The pipeline's :class:`SpeedOptions` (a call's ``use_cuda_graphs=`` and
        ``unguided_last_scales=`` override theirs for that call)."""
        # The transformer owns its cache's room; the options report it as it is.
        stored = self.transformer.store_last_scale_keys
        if stored != self._speed.store_last_scale_keys:
            self._speed = self._speed.replace(store_last_scale_keys=stored)
        return self._speed

    @speed.setter
    def speed(self, options: SpeedOptions) -> None:
        if not isinstance(options, SpeedOptions):
            raise InvalidTypeError(f"speed must be a SpeedOptions, got {type(options).__name__}")
        options.check_scales(self.transformer.config.num_scales)
        self._speed = options
        # A bigger or smaller cache: graphs captured for the other size are rebuilt on next use.
        self.transformer.store_last_scale_keys = options.store_last_scale_keys

    def set_speed_options(self, **changes: Any) -> HartFastPath:
        """``pipe.speed = pipe.speed.replace(**changes)``; returns self."""
        self.speed = self.speed.replace(**changes)
        return self

    @property
    def decoder_memory_format(self) -> torch.memory_format | None:
        """``speed.decoder_memory_format`` as a ``torch.memory_format`` (None: chosen per device)."""
        return self._speed.memory_format()

    @decoder_memory_format.setter
    def decoder_memory_format(self, memory_format: torch.memory_format | None) -> None:
        self.set_speed_options(decoder_memory_format=memory_format_name(memory_format))

    def _call_speed(self, use_cuda_graphs: bool | None, unguided_last_scales: int | None) -> SpeedOptions:
        """The options of one call: :attr:`speed` with the call's overrides (checked as before)."""
        speed = self.speed
        num_scales = self.transformer.config.num_scales
        if unguided_last_scales is not None:
            check_unguided_last_scales(unguided_last_scales, num_scales)
            speed = speed.replace(unguided_last_scales=unguided_last_scales)
        if use_cuda_graphs is not None:
            speed = speed.replace(cuda_graphs=use_cuda_graphs)
        return speed

    # ------------------------------------------------------------------ compiled modules
    def compile(
        self,
        *,
        transformer: bool = True,
        decoder: bool | None = None,
        diffusion_head: bool = True,
        mode: str | None = None,
        decoder_memory_format: torch.memory_format = torch.channels_last,
    ) -> HartFastPath:
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
        once GroupNorm is fused), written into :attr:`speed`.
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
        self._drop_captured_graphs()
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

    # ------------------------------------------------------------------ captured CUDA graphs
    def _drop_captured_graphs(self) -> None:
        self._graph_generators.clear()
        self._residual_graphs.clear()

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
            if len(self._residual_graphs) >= MAX_RESIDUAL_GRAPHS:
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
        # Rebuilt when the cache's size changed since the capture (speed.store_last_scale_keys).
        if generator is None or generator.state.cache.max_length != self.transformer.cache_room():
            generator = CUDAGraphGenerator(self.transformer, rows, self.device, self.dtype)
            self._graph_generators[key] = generator
        return generator
