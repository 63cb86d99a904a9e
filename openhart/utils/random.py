"""Explicit randomness: every draw in the library comes from a caller's ``torch.Generator``.

A *generator spec* is ``None`` (torch's global stream), one ``torch.Generator`` (used for the
whole batch), or a list of generators, one per image. With a list, the leading dimension of every
draw is split into ``len(generators)`` equal chunks and chunk ``i`` comes from generator ``i`` alone,
so image ``i`` of a batch gets exactly the numbers it would get in a call of its own.

Draws are made on the generator's device and then moved (a CPU generator can drive a CUDA model
and gives the same numbers on every device).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

GeneratorSpec = torch.Generator | Sequence[torch.Generator] | None


def _chunks(
    shape: Sequence[int], generator: GeneratorSpec
) -> list[tuple[torch.Generator | None, tuple[int, ...]]]:
    shape = tuple(int(s) for s in shape)
    if generator is None or isinstance(generator, torch.Generator):
        return [(generator, shape)]
    generators = list(generator)
    if not generators or shape[0] % len(generators) != 0:
        raise ValueError(
            f"generator: a list of {len(generators)} generators cannot split a leading dimension of {shape[0]}"
        )
    per = shape[0] // len(generators)
    return [(g, (per, *shape[1:])) for g in generators]


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _draw(
    sampler, shape: Sequence[int], generator: GeneratorSpec, device, dtype: torch.dtype
) -> torch.Tensor:
    """Draw float32 numbers chunk by chunk on each generator's device, then move and cast once."""
    parts = [
        sampler(part_shape, generator=g, device=_generator_device(g), dtype=torch.float32)
        for g, part_shape in _chunks(shape, generator)
    ]
    return _to_device(torch.cat(parts), device, dtype)


def _to_device(draws: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """Move host draws to ``device`` without stalling the host on a CUDA device.

    A copy from pageable host memory waits for all queued GPU work first; at batch 1 the
    sampler draws at every scale, so each draw would drain the GPU queue and expose the launch
    latency of the next scale. From pinned memory the copy is queued like a kernel (PyTorch keeps
    the pinned block alive until the copy has run).
    """
    target = torch.device(device) if device is not None else draws.device
    if target.type == "cuda" and draws.device.type == "cpu":
        return draws.pin_memory().to(device=target, dtype=dtype, non_blocking=True)
    return draws.to(device=target, dtype=dtype)


def randn_tensor(
    shape: Sequence[int],
    generator: GeneratorSpec = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of ``shape``, drawn per the generator spec, returned on ``device``."""
    return _draw(torch.randn, shape, generator, device, dtype)


def rand_tensor(
    shape: Sequence[int],
    generator: GeneratorSpec = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) numbers of ``shape``, drawn per the generator spec, returned on ``device``."""
    return _draw(torch.rand, shape, generator, device, dtype)


def exponential_tensor(
    shape: Sequence[int],
    generator: GeneratorSpec = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Exponential(1) draws (for Gumbel-softmax: gumbel = -log E), float32 on ``device``."""
    parts = []
    for g, part_shape in _chunks(shape, generator):
        draw = torch.empty(part_shape, device=_generator_device(g), dtype=torch.float32)
        parts.append(draw.exponential_(generator=g))
    return _to_device(torch.cat(parts), device, torch.float32)


def sample_categorical(probs: torch.Tensor, generator: GeneratorSpec = None) -> torch.Tensor:
    """One index per row of ``probs`` (..., V) by inverse-CDF sampling with uniforms from ``generator``.

    Inverse-CDF (rather than ``torch.multinomial``) keeps the generator on its own device: only one
    uniform number per row is drawn there and moved, whatever device the probabilities live on.
    The leading dimension of ``probs`` is the one split across a list of generators.
    """
    flat = probs.reshape(probs.shape[0], -1, probs.shape[-1]).float()  # (B, rows, V)
    cdf = flat.cumsum(dim=-1)
    uniforms = rand_tensor(flat.shape[:2], generator, device=probs.device)  # (B, rows)
    targets = (uniforms * cdf[..., -1]).unsqueeze(-1)  # scale by the total so rows need not sum to 1
    index = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    index = index.clamp_(max=probs.shape[-1] - 1)  # guards u*total == total in float rounding
    return index.reshape(probs.shape[:-1])
