"""Exponential moving average of a module's weights (what the generator checkpoints ship).

The shadow is a full copy of the module (frozen, float32), so it can be dropped straight into a
:class:`~openhart.models.hart.HartPipeline` for sample grids and ``save_pretrained``. After each
optimizer step: shadow ← d·shadow + (1 − d)·weights, with the decay warmed up as
d = min(decay, (1 + n)/(10 + n)) over the first updates n (a young average would otherwise be
dominated by the random initialisation). Buffers are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of ``module`` averaged after every :meth:`update`."""

    def __init__(self, module: nn.Module, decay: float, warmup: bool = True) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: expected a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.module = copy.deepcopy(module).float().eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Fold the current weights of ``module`` (same architecture) into the average."""
        decay = self.current_decay()
        shadow = dict(self.module.named_parameters())
        for name, parameter in module.named_parameters():
            target = shadow[name]
            target.lerp_(parameter.detach().to(target.dtype), 1.0 - decay)  # d·shadow + (1 − d)·weights
        shadow_buffers = dict(self.module.named_buffers())
        for name, buffer in module.named_buffers():
            shadow_buffers[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state, strict=True)
        self.num_updates = int(num_updates)

    def to(self, device: torch.device | str) -> EMA:
        self.module.to(device)
        return self
