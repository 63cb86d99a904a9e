"""CUDA graphs for the scale-by-scale passes: one captured graph per scale (and one for the prompt
pass), replayed every call.

At batch 1 the coarse scales do almost no arithmetic (1 to 100 tokens) but still launch every
kernel of every layer, so their time is launch and Python overhead. A CUDA graph records a
scale's whole pass once and replays it as one launch. Everything a pass reads lives in buffers
with fixed addresses: the preallocated :class:`GenerationState` (KV cache, AdaLN parameters, rope
offset), refilled by ``prefill`` for each call, and one static input buffer per scale. The prompt
pass (``prefill``: context embedding, AdaLN parameters, the prompt's keys and values) is captured
too, reading the prompt from static context and mask buffers; if it cannot be captured (an op that
needs the host), it stays eager and the scales are still replayed.

Legend: B rows (the CFG batch), l tokens of a scale, Cz latent channels, V codebook size, C width.
"""

from __future__ import annotations

import logging
import threading

import torch

from openhart.transformer.model import GenerationState, HartTransformer, check_context_mask

logger = logging.getLogger(__name__)


class CUDAGraphGenerator:
    """Replays captured ``generation_step`` passes for one transformer, batch size and dtype.

    Use like the eager API: ``logits0 = g.prefill(context, mask)``, then
    ``logits, hidden = g.step(k, inputs)`` for k = 1..S−1. Returned tensors are the graphs' static
    outputs, valid until the next :meth:`step`: use (or copy) them before that.
    """

    def __init__(
        self, transformer: HartTransformer, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        if torch.device(device).type != "cuda":
            raise ValueError("CUDAGraphGenerator needs a CUDA device")
        self.transformer = transformer
        self.batch_size = batch_size
        config = transformer.config
        self.state: GenerationState = transformer.new_generation_state(batch_size, device, dtype)
        self.inputs = [
            torch.zeros(batch_size, pn * pn, config.latent_channels, device=device, dtype=dtype)
            for pn in config.patch_nums
        ]
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cache_end: dict[int, int] = {}
        self._captured = False
        self.prefill_graph: torch.cuda.CUDAGraph | None = None
        self.prompt_length = 0
        # One sampling call at a time: the buffers are shared by every call (e.g. server workers).
        self.lock = threading.Lock()

    def prefill(self, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        if self.prefill_graph is not None and context.shape == self.context.shape:
            check_context_mask(context_mask)
            self.context.copy_(context)
            self.context_mask.copy_(context_mask)
            self.prefill_graph.replay()
            self.state.cache.length = self.prompt_length
            return self.prefill_logits
        logits = self.transformer.prefill(self.state, context, context_mask)
        if not self._captured:
            self._capture()  # writes only past the prompt in the cache: the prefill above stays valid
            self._capture_prefill(context, context_mask)
        return logits

    @torch.no_grad()
    def _capture_prefill(self, context: torch.Tensor, context_mask: torch.Tensor) -> None:
        """Capture the prompt pass on static buffers holding this call's prompt (state stays valid)."""
        self.context = context.clone()
        self.context_mask = context_mask.clone()
        transformer, state = self.transformer, self.state
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                transformer.prefill(state, self.context, self.context_mask)  # refills the same values
            torch.cuda.current_stream().wait_stream(stream)
            self.prompt_length = state.cache.length
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.prefill_logits = transformer.prefill(state, self.context, self.context_mask)
            self.prefill_graph = graph
        except RuntimeError as error:  # e.g. an op that syncs with the host: keep the eager prompt pass
            logger.warning(
                "the prompt pass could not be captured in a CUDA graph (%s); it stays eager", error
            )
            self.prefill_graph = None
            transformer.prefill(
                state, self.context, self.context_mask
            )  # refill the state a failed capture may have left

    def step(self, scale_index: int, scale_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.inputs[scale_index].copy_(scale_inputs)
        self.graphs[scale_index].replay()
        self.state.cache.length = self.cache_end[scale_index]  # the Python-side length a pass advances
        return self.outputs[scale_index]

    @torch.no_grad()
    def _capture(self) -> None:
        """Warm up on a side stream (as CUDA graphs require), then capture every scale in order."""
        transformer, state = self.transformer, self.state
        after_prompt = state.cache.length
        num_scales = transformer.config.num_scales
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for k in range(1, num_scales):
                transformer.generation_step(state, k, self.inputs[k])
        torch.cuda.current_stream().wait_stream(stream)
        state.cache.length = after_prompt
        # One memory pool for all scales: they always replay in capture order and each scale's
        # outputs are consumed before the next scale runs, so their activations can share memory.
        pool = torch.cuda.graph_pool_handle()
        for k in range(1, num_scales):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[k] = transformer.generation_step(state, k, self.inputs[k])
            self.graphs[k] = graph
            self.cache_end[k] = state.cache.length
        self._captured = True
