"""Weight-only int8 quantization of the parts whose weights dominate memory: the transformer's and
the text encoder's linear layers.

At batch 1 on a CPU the transformer's small scales read every weight once per pass, so int8
weights (one byte instead of two or four, with one scale per output row) cut both the resident
memory and the bytes read. Activations stay in the pipeline's dtype (weight-only), so the
sampler's maths are unchanged apart from the weights' rounding. The decoder (convolutions) and the
residual head (37 M parameters, run 8 times on few tokens) stay as they are.

Built on torchao (``pip install 'openhart[quantize]'``), the PyTorch project's maintained
quantization library: ``quantize_`` swaps each ``nn.Linear`` weight for an int8 tensor subclass
in place. Quantizing is one-way; reload the pipeline for full precision.
"""

from __future__ import annotations

import gc
import logging
from typing import TYPE_CHECKING

import torch
from torch import nn

from openhart.errors import DependencyError
from openhart.utils.memory import release_freed_memory

if TYPE_CHECKING:
    from openhart.models.hart import HartPipeline

logger = logging.getLogger("openhart")

QUANTIZE_MODES = ("int8",)


class QuantizationUnavailableError(DependencyError):
    """torchao is not installed or does not import beside this torch."""


def _int8_weight_only_config():
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise QuantizationUnavailableError(
            "int8 weights need torchao: pip install 'openhart[quantize]' (or pip install torchao)"
        ) from error
    return quantize_, Int8WeightOnlyConfig()


def quantize_linears_int8(module: nn.Module) -> int:
    """Replace every ``nn.Linear`` weight of ``module`` by int8 (per-row scales); returns how many."""
    quantize_, config = _int8_weight_only_config()
    count = sum(isinstance(m, nn.Linear) for m in module.modules())
    quantize_(module, config, filter_fn=lambda m, _name: isinstance(m, nn.Linear))
    _copy_unquantized_tensors(module)
    gc.collect()
    # The bf16/fp32 weights just replaced sit in the allocator's free lists: give them back, so the
    # resident set shows the int8 model (measured in docs/performance.md's laptop table).
    release_freed_memory()
    return count


def quantize_pipeline(pipeline: HartPipeline, mode: str = "int8") -> dict[str, int]:
    """Quantize the transformer's and the text encoder's linears in place; returns layers per part.

    Call it after ``pipeline.to(device, dtype)``: the int8 weights keep the dtype they were cast
    from as their compute dtype, and a later ``.to(dtype=...)`` does not re-quantize.
    """
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"mode must be one of {QUANTIZE_MODES}, got {mode!r}")
    counts = {
        "transformer": quantize_linears_int8(pipeline.transformer),
        # A hash encoder has no linears; a transformers encoder (Qwen2) is mostly linears.
        "text_encoder": quantize_linears_int8(pipeline.text_encoder),
    }
    logger.info("int8 weight-only: %s linear layers", counts)
    return counts


def _copy_unquantized_tensors(module: nn.Module) -> None:
    """Give the tensors that stay unquantized (embeddings, norms, biases) memory of their own.

    Weights loaded from safetensors can be views of the memory-mapped file (transformers loads
    that way when the dtype matches). Quantizing replaces the linears, but one view left on the
    mapping (the bf16 embedding) keeps the whole file mapped, and every page the quantizer read
    stays resident: 2.5 GiB of a 3 GiB Qwen2 file for a 0.43 GiB embedding. Copies free it.
    """
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            if getattr(tensor, "__tensor_flatten__", None) is None:  # plain tensors, not int8 subclasses
                tensor.data = tensor.data.clone()


def weight_bytes(module: nn.Module) -> int:
    """Bytes held by a module's parameters and buffers, int8 tensor subclasses counted by their parts."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None:  # a tensor subclass: count its inner tensors (int8 data + scales)
        names, _ = flatten()
        return sum(_tensor_bytes(getattr(tensor, name)) for name in names)
    return tensor.numel() * tensor.element_size()
