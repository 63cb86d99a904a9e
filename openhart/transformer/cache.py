"""A preallocated key/value cache for scale-by-scale sampling.

Legend: B batch, H heads, d head dim, Lmax = T context tokens + all image tokens.

Each scale appends its pn^2 keys/values; attention then reads the filled prefix. Preallocating the
sequence once avoids a ``torch.cat`` (and a copy of everything so far) per scale and layer.

The room ends where the last pass begins: that pass (the largest scale, 42% of the positions at
1024 px) attends over everything cached plus its own keys, and nothing reads its keys afterwards,
so they are concatenated for the pass instead of stored. That is a copy of the cached prefix per
layer in one pass, for a cache (which CUDA graphs keep allocated between calls) 42% smaller.
``HartTransformer.store_last_scale_keys`` sizes the room for every pass instead: at batch 8 on an
H200 the saved copies are ~2% of a call, for 0.75 GiB more per image at 1024 px.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for one generation call."""

    def __init__(
        self,
        depth: int,
        batch_size: int,
        num_heads: int,
        max_length: int,
        head_dim: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        shape = (batch_size, num_heads, max_length, head_dim)
        self.keys = [torch.empty(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.values = [torch.empty(shape, device=device, dtype=dtype) for _ in range(depth)]
        self.length = 0  # positions filled, shared by every layer once a pass has finished
        self.max_length = max_length

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, H, l, d) new keys/values of ``layer``; return all keys/values so far.

        Views of the cache, except in the pass that begins where the room ends (the last one):
        then new tensors, the cached prefix followed by ``key``/``value``, and nothing is stored.
        """
        start, end = self.length, self.length + key.shape[2]
        if start == self.max_length and end > start:  # the last pass (see the module docstring)
            keys, values = self.keys[layer][:, :, :start], self.values[layer][:, :, :start]
            return torch.cat((keys, key), dim=2), torch.cat((values, value), dim=2)
        if end > self.max_length:
            raise ValueError(f"KVCache: {end} positions exceed the preallocated {self.max_length}")
        self.keys[layer][:, :, start:end] = key
        self.values[layer][:, :, start:end] = value
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, num_positions: int) -> None:
        """Mark ``num_positions`` more positions as filled (called once per pass, after every layer)."""
        self.length += num_positions

    def rows(self, count: int) -> KVCache:
        """A cache over the first ``count`` batch rows, sharing this one's memory and fill level.

        Lets a call drop rows mid-way (e.g. the unconditional half of CFG for the last scales)
        without copying what is already cached.
        """
        narrowed = KVCache.__new__(KVCache)
        narrowed.keys = [k[:count] for k in self.keys]
        narrowed.values = [v[:count] for v in self.values]
        narrowed.length = self.length
        narrowed.max_length = self.max_length
        return narrowed
