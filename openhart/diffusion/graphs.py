"""A CUDA graph of the residual head's whole sampling loop (all steps, CFG included).

Each of the ~8 steps runs a small MLP over every last-scale token plus a dozen elementwise
sampler ops: on a GPU at batch 1 that is launch-bound (hundreds of tiny kernels). The loop has a
fixed shape for a given (rows, steps, guidance, temperature), so it is captured once and replayed
as one launch.

Randomness stays exactly the eager sampler's: the noise is drawn *before* the replay, from the
same generators, in the same order as :meth:`ResidualDiffusionHead.sample` draws it (the initial
noise, then one (N, Cz) draw for every step but the last), and copied into the graph's static
buffers. A replay therefore returns what the eager loop returns for the same generators.

Legend: N rows (tokens × images), C condition width, Cz latent channels, S sampling steps.
"""

from __future__ import annotations

import logging
import threading

import torch

from openhart.diffusion.head import ResidualDiffusionHead
from openhart.utils.random import GeneratorSpec, randn_tensor

logger = logging.getLogger(__name__)


def draw_residual_noise(
    rows: int,
    channels: int,
    num_steps: int,
    generator: GeneratorSpec,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The draws the eager sampler would make: initial (N, Cz) and S per-step (N, Cz) tensors.

    The last step adds no noise and draws nothing; its entry is zeros so the list has S tensors.
    """
    initial = randn_tensor((rows, channels), generator, device=device, dtype=dtype)
    steps = [
        randn_tensor((rows, channels), generator, device=device, dtype=dtype) for _ in range(num_steps - 1)
    ]
    steps.append(torch.zeros(rows, channels, device=device, dtype=dtype))
    return initial, steps


class CUDAGraphResidualSampler:
    """Replays a captured :meth:`ResidualDiffusionHead.sample` for fixed rows and settings.

    ``sample(condition, uncond_condition, generator)`` returns a fresh (N, Cz) tensor equal to the
    eager ``head.sample(condition, uncond_condition=..., guidance_scale=..., ...)``.
    """

    def __init__(
        self,
        head: ResidualDiffusionHead,
        rows: int,
        condition_dtype: torch.dtype,
        device: torch.device,
        *,
        guidance_scale: float,
        num_inference_steps: int | None,
        temperature: float,
        use_uncond: bool,
    ) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError("CUDAGraphResidualSampler needs a CUDA device")
        self.head = head
        self.rows = rows
        self.device = torch.device(device)
        self.guidance_scale = float(guidance_scale)
        self.temperature = float(temperature)
        self.num_steps = head.schedule(num_inference_steps).num_steps
        self.num_inference_steps = num_inference_steps
        config = head.config
        # The sampler's arithmetic dtype (what it draws noise in): the condition's, at least float32.
        self.noise_dtype = torch.promote_types(condition_dtype, torch.float32)
        self.condition = torch.zeros(rows, config.condition_dim, device=device, dtype=condition_dtype)
        self.uncond = torch.zeros_like(self.condition) if use_uncond else None
        shape = (rows, config.latent_channels)
        self.initial = torch.zeros(shape, device=device, dtype=self.noise_dtype)  # static noise buffers
        self.step_noises = [
            torch.zeros(shape, device=device, dtype=self.noise_dtype) for _ in range(self.num_steps)
        ]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None
        self.failed = False  # the capture failed: callers sample eagerly instead
        self.lock = threading.Lock()

    def _run(self) -> torch.Tensor:
        return self.head.sample(
            self.condition,
            uncond_condition=self.uncond,
            guidance_scale=self.guidance_scale,
            num_inference_steps=self.num_inference_steps,
            temperature=self.temperature,
            noise=(self.initial, self.step_noises),
        )

    @torch.no_grad()
    def _capture(self) -> None:
        # Warm up on a side stream (as CUDA graphs require; it also fills the schedule's device tables).
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._run()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.output = self._run()
        self.graph = graph

    @torch.no_grad()
    def sample(
        self, condition: torch.Tensor, uncond_condition: torch.Tensor | None, generator: GeneratorSpec
    ) -> torch.Tensor:
        """The residual rows (N, Cz) for these conditions, drawing the noise from ``generator``.

        If the first call's capture fails (an op that needs the host), the loop runs eagerly on
        the same draws, :attr:`failed` is set, and the pipeline stops using this sampler.
        """
        if condition.shape != self.condition.shape or (uncond_condition is None) != (self.uncond is None):
            raise ValueError(
                f"condition: this graph was captured for {tuple(self.condition.shape)} "
                f"{'with' if self.uncond is not None else 'without'} an unconditional branch"
            )
        initial, steps = draw_residual_noise(
            self.rows,
            self.head.config.latent_channels,
            self.num_steps,
            generator,
            self.device,
            self.noise_dtype,
        )
        with self.lock:
            self.condition.copy_(condition)
            if self.uncond is not None:
                self.uncond.copy_(uncond_condition)
            self.initial.copy_(initial)
            for buffer, noise in zip(self.step_noises, steps, strict=True):
                buffer.copy_(noise)
            if self.graph is None:
                try:
                    self._capture()
                except RuntimeError as error:
                    logger.warning(
                        "the residual loop could not be captured in a CUDA graph (%s); it runs eagerly", error
                    )
                    self.failed = True
                    return self._run()  # the static buffers hold this call's conditions and draws
            self.graph.replay()
            return self.output.clone()
