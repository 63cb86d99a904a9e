"""The optimiser's side of training: AdamW parameter groups, warmup + cosine schedule, autocast dtype."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from openhart.utils.hardware import cpu_has_native_bf16


class WarmupCosine:
    """LR factor of step n (1-based): n/warmup during warmup, then cosine from 1 to min_lr_ratio."""

    def __init__(self, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.max_steps = max_steps
        self.min_lr_ratio = min_lr_ratio

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step <= self.warmup_steps:
            return step / self.warmup_steps
        span = max(1, self.max_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def state_dict(self) -> dict[str, Any]:
        return {
            "warmup_steps": self.warmup_steps,
            "max_steps": self.max_steps,
            "min_lr_ratio": self.min_lr_ratio,
        }


def parameter_groups(
    module: nn.Module, weight_decay: float, lr_scales: Mapping[str, float] | None = None
) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices/kernels; none on biases, norms, embeddings, codebooks.

    ``lr_scales`` maps parameter names (``module.named_parameters()``) to a multiplier of the
    scheduled learning rate; each group carries its ``lr_scale`` (1.0 for every other parameter).
    The two plain groups always come first; scaled groups follow only where they hold parameters.
    """
    lr_scales = dict(lr_scales or {})
    unknown = sorted(set(lr_scales) - {name for name, _ in module.named_parameters()})
    if unknown:
        raise ValueError(f"lr_scales: no such parameters: {unknown[:5]}")
    no_decay_ids: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, (nn.Embedding, nn.LayerNorm, nn.GroupNorm)) or "Norm" in type(sub).__name__:
            no_decay_ids.update(id(p) for p in sub.parameters(recurse=False))
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = parameter.ndim >= 2 and id(parameter) not in no_decay_ids
        groups.setdefault((decays, float(lr_scales.get(name, 1.0))), []).append(parameter)
    # The plain groups first and always present, as before scaled groups existed (checkpoints
    # record the groups in order).
    groups.setdefault((True, 1.0), [])
    groups.setdefault((False, 1.0), [])
    order = sorted(groups, key=lambda key: (key[1] != 1.0, key[1], not key[0]))
    return [
        {"params": groups[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]}
        for key in order
        if groups[key] or key[1] == 1.0
    ]


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a recipe's ``run.precision`` on ``device`` (None: plain fp32).

    ``auto`` is bf16 where the hardware computes it natively: CUDA GPUs that support it, and CPUs
    with AMX-BF16 or AVX512-BF16 (1.3-1.6x the fp32 images/s there); fp32 on every other device,
    where bf16 is emulated (40x slower per tokenizer step on an AVX2-only CPU). An explicit
    ``bf16`` on such a CPU is obeyed, with a warning.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            warnings.warn(
                "run.precision=bf16 on a CPU without AMX-BF16 or AVX512-BF16: torch emulates bf16 "
                "here, many times slower than fp32; run.precision=auto picks fp32 on this CPU",
                stacklevel=2,
            )
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None
