"""Image-generation metrics on feature sets and image batches: FID, KID, precision/recall,
prompt adherence, and the tokenizer's reconstruction quality.

Every distribution metric takes features (N, D), usually Inception pool features from
:class:`~openhart.evaluation.inception.InceptionFeatureExtractor`, so real-image features can be
computed once and cached. FID and KID use torchmetrics' maths: FID through its
``FrechetInceptionDistance`` with :class:`FeaturePassthrough` as the custom ``feature`` module (the
features are already extracted), KID through its polynomial-kernel MMD (``poly_mmd``) with the
subsets drawn from an explicit generator.

* **FID** (Heusel et al. 2017): Fréchet distance of Gaussians fitted to the two feature sets.
  Biased for small N (use ≥ 5k images to compare with papers; below that compare only runs of
  the same N).
* **KID** (Bińkowski et al. 2018): unbiased MMD² with the kernel (x·y/D + 1)³, mean ± std over
  random subsets; can be slightly negative when the sets match.
* **Precision / recall** (Kynkäänniemi et al. 2019): the k-NN manifold of a set is the union of
  balls around its points with radius the distance to the k-th nearest neighbour (k = 3);
  precision = share of generated samples inside the real manifold (fidelity), recall = share of
  real samples inside the generated manifold (coverage).
* **Prompt adherence** without CLIP (no CLIP weights install offline): images generated for
  held-out concepts are classified by their nearest real images in feature space among the real
  images of *all* concepts; top-k accuracy = the prompt's concept is among the k concepts whose
  closest real image is nearest. Reported with its chance level k / #concepts.
* **Reconstruction**: PSNR and SSIM (torchmetrics) of ``tokenizer.reconstruct`` against the input,
  and rFID (FID of reconstructions vs originals), discrete-only and hybrid.

Dimension legend: N real samples, M generated samples, D feature width, K concepts,
B images (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn

from openhart.utils.random import GeneratorSpec, rand_tensor

logger = logging.getLogger(__name__)

PRECISION_RECALL_K = 3
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


# ---------------------------------------------------------------------- helpers
def _check_features(features: object, name: str, min_rows: int = 1) -> torch.Tensor:
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name}: expected features of shape (N, D), got {tuple(features.shape)}")
    if features.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} rows, got {features.shape[0]}")
    if not features.is_floating_point():
        raise TypeError(f"{name}: expected floating-point features, got {features.dtype}")
    if not torch.isfinite(features).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return features.detach()


def _check_same_width(real: torch.Tensor, fake: torch.Tensor) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real and fake features differ in width: {real.shape[1]} vs {fake.shape[1]}")


class FeaturePassthrough(nn.Module):
    """A torchmetrics ``feature`` module for features that are already extracted: (N, D) → (N, D)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)  # torchmetrics sizes its statistics from this

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features: expected (N, {self.num_features}), got {tuple(features.shape)}")
        return features


# ---------------------------------------------------------------------- FID / KID
def fid_from_features(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between feature sets (N, D) and (M, D), N, M ≥ 2, with torchmetrics' FID (float64 statistics)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real = _check_features(real, "real", min_rows=2)
    fake = _check_features(fake, "fake", min_rows=2)
    _check_same_width(real, fake)
    metric = FrechetInceptionDistance(feature=FeaturePassthrough(real.shape[1]))
    metric.update(real.double().cpu(), real=True)
    metric.update(fake.double().cpu(), real=False)
    # Eigenvalues of Σ_r·Σ_f can come out slightly negative/complex for near-identical sets;
    # the distance itself is ≥ 0, so clamp the rounding error.
    return max(float(metric.compute()), 0.0)


def kid_from_features(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = KID_SUBSETS,
    subset_size: int = KID_SUBSET_SIZE,
    generator: GeneratorSpec = None,
) -> tuple[float, float]:
    """KID (mean, std over ``subsets`` random subsets of min(subset_size, N, M) rows each).

    The subsets come from ``generator`` (a torch.Generator; None uses torch's global stream).
    """
    from torchmetrics.image.kid import poly_mmd

    real = _check_features(real, "real", min_rows=2)
    fake = _check_features(fake, "fake", min_rows=2)
    _check_same_width(real, fake)
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be an int ≥ 1, got {subsets!r}")
    if not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an int ≥ 2, got {subset_size!r}")
    size = min(subset_size, real.shape[0], fake.shape[0])
    real, fake = real.double().cpu(), fake.double().cpu()
    scores = []
    for _ in range(subsets):
        # A random permutation per subset: argsort of uniforms from the caller's generator.
        real_rows = torch.argsort(rand_tensor((real.shape[0],), generator))[:size]
        fake_rows = torch.argsort(rand_tensor((fake.shape[0],), generator))[:size]
        scores.append(poly_mmd(real[real_rows], fake[fake_rows]))
    values = torch.stack(scores)
    return float(values.mean()), float(values.std(unbiased=False))


# ---------------------------------------------------------------------- precision / recall
def _pairwise_distances(
    queries: torch.Tensor, points: torch.Tensor, batch_size: int
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (row slice, distances (b, N)) in float64, ``batch_size`` query rows at a time."""
    for start in range(0, queries.shape[0], batch_size):
        block = queries[start : start + batch_size]
        yield slice(start, start + block.shape[0]), torch.cdist(block, points)


def knn_radii(features: torch.Tensor, k: int = PRECISION_RECALL_K, batch_size: int = 1024) -> torch.Tensor:
    """(N,) distance of every row to its k-th nearest other row (the radius of its k-NN ball)."""
    features = _check_features(features, "features", min_rows=k + 1).double()
    radii = torch.empty(features.shape[0], dtype=torch.float64, device=features.device)
    for rows, distances in _pairwise_distances(features, features, batch_size):
        # The k+1 smallest include the row itself (distance 0); the largest of them is the k-th other.
        radii[rows] = distances.topk(k + 1, dim=1, largest=False).values[:, -1]
    return radii


def _inside_manifold(
    queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """(Q,) bool: query q lies in at least one ball (points[i], radii[i])."""
    inside = torch.empty(queries.shape[0], dtype=torch.bool, device=queries.device)
    for rows, distances in _pairwise_distances(queries, points, batch_size):
        inside[rows] = (distances <= radii.unsqueeze(0)).any(dim=1)
    return inside


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = PRECISION_RECALL_K, batch_size: int = 1024
) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with k-NN manifolds.

    Returns ``{"precision", "recall"}`` in [0, 1]. Identical sets give 1 and 1; well separated
    sets give 0 and 0. Needs more than k rows in each set.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int ≥ 1, got {k!r}")
    real = _check_features(real, "real", min_rows=k + 1).double()
    fake = _check_features(fake, "fake", min_rows=k + 1).double()
    _check_same_width(real, fake)
    fake = fake.to(real.device)
    real_radii = knn_radii(real, k, batch_size)
    fake_radii = knn_radii(fake, k, batch_size)
    precision = _inside_manifold(fake, real, real_radii, batch_size).double().mean()
    recall = _inside_manifold(real, fake, fake_radii, batch_size).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


# ---------------------------------------------------------------------- prompt adherence
def concept_accuracy(
    queries: torch.Tensor,
    query_concepts: Sequence[str],
    references: torch.Tensor,
    reference_concepts: Sequence[str],
    top_k: Sequence[int] = (1, 5),
    exclude: Sequence[int] | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """Nearest-neighbour concept accuracy of ``queries`` (M, D) against labelled ``references`` (N, D).

    Each concept's distance to a query is the distance to its closest reference image; the
    query counts as correct at k when its own concept is among the k closest concepts (ties
    broken by concept order). ``exclude[i]``: a reference row hidden from query i (leave-one-out
    when the queries are themselves references), −1 for none.

    Returns ``{"top1": ..., "top5": ..., "chance_top1": k/K, ..., "num_concepts": K, "num_queries": M}``.
    A query whose concept has no reference image counts as wrong (it cannot be found).
    """
    queries = _check_features(queries, "queries")
    references = _check_features(references, "references")
    _check_same_width(references, queries)
    if len(query_concepts) != queries.shape[0]:
        raise ValueError(f"query_concepts: {len(query_concepts)} labels for {queries.shape[0]} queries")
    if len(reference_concepts) != references.shape[0]:
        raise ValueError(
            f"reference_concepts: {len(reference_concepts)} labels for {references.shape[0]} references"
        )
    if exclude is not None and len(exclude) != queries.shape[0]:
        raise ValueError(f"exclude: {len(exclude)} entries for {queries.shape[0]} queries")
    for k in top_k:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"top_k: expected ints ≥ 1, got {list(top_k)}")
    names = sorted(set(reference_concepts))
    index = {name: i for i, name in enumerate(names)}
    reference_ids = torch.tensor([index[c] for c in reference_concepts], device=references.device)
    targets = torch.tensor([index.get(c, -1) for c in query_concepts], device=references.device)
    queries = queries.to(device=references.device, dtype=torch.float64)
    references = references.double()
    max_k = min(max(top_k), len(names))
    hits = {k: 0 for k in top_k}
    for rows, distances in _pairwise_distances(queries, references, batch_size):
        if exclude is not None:
            for local, hidden in enumerate(exclude[rows]):
                if hidden >= 0:
                    distances[local, hidden] = math.inf
        # (b, K): per concept, the distance to its nearest reference image.
        per_concept = torch.full((distances.shape[0], len(names)), math.inf, dtype=torch.float64)
        per_concept = per_concept.to(distances.device).scatter_reduce(
            1, reference_ids.expand_as(distances), distances, reduce="amin"
        )
        ranked = per_concept.topk(max_k, dim=1, largest=False).indices  # (b, max_k) nearest concepts
        for k in top_k:
            hits[k] += int((ranked[:, :k] == targets[rows].unsqueeze(1)).any(dim=1).sum())
    result: dict[str, float] = {}
    for k in top_k:
        result[f"top{k}"] = hits[k] / queries.shape[0]
        result[f"chance_top{k}"] = min(k, len(names)) / len(names)
    result["num_concepts"] = len(names)
    result["num_queries"] = queries.shape[0]
    return result


# ---------------------------------------------------------------------- reconstruction
def _check_image_pair(prediction: torch.Tensor, target: torch.Tensor) -> None:
    for name, images in (("prediction", prediction), ("target", target)):
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.dim() != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{name}: expected a float tensor (B, C, H, W) in [0, 1], got {shape}")
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target shapes differ: {tuple(prediction.shape)} vs {tuple(target.shape)}"
        )


def psnr(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) PSNR in dB of images in [0, 1] (data range 1); inf where an image is reproduced exactly."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_image_pair(prediction, target)
    return peak_signal_noise_ratio(
        prediction.double(), target.double(), data_range=1.0, reduction="none", dim=(1, 2, 3)
    ).float()


def ssim(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM of images in [0, 1] (torchmetrics: 11×11 Gaussian window, σ = 1.5)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_image_pair(prediction, target)
    # The standard 11 px window needs images of at least 11 px; smaller ones get the largest odd
    # window that fits, with σ scaled alike.
    side = min(prediction.shape[-2:])
    kernel = min(11, side if side % 2 else side - 1)
    sigma = 1.5 * kernel / 11
    return structural_similarity_index_measure(
        prediction.double(),
        target.double(),
        data_range=1.0,
        reduction="none",
        kernel_size=kernel,
        sigma=sigma,
    ).float()


def _mean(values: torch.Tensor) -> float:
    return float(values.mean()) if values.numel() else math.nan


@torch.no_grad()
def reconstruction_metrics(
    tokenizer: nn.Module,
    images: torch.Tensor,
    batch_size: int = 32,
    extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
    real_features: torch.Tensor | None = None,
    modes: Sequence[str] = ("discrete", "hybrid"),
) -> dict[str, dict[str, float]]:
    """PSNR / SSIM (and rFID with ``extractor``) of the tokenizer's round trip, per mode.

    ``images``: (B, 3, H, W) in [−1, 1] (the tokenizer's range). ``modes``: "discrete" decodes the
    discrete-only latent, "hybrid" adds the continuous residual (HART). ``extractor`` maps
    images in [0, 1] to features; ``real_features`` are the originals' features (computed when
    not given). Returns ``{"discrete": {"psnr", "ssim", "rfid"?}, "hybrid": {...}}``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError("images: expected a (B, 3, H, W) tensor in [-1, 1]")
    for mode in modes:
        if mode not in ("discrete", "hybrid"):
            raise ValueError(f"modes: expected 'discrete' and/or 'hybrid', got {mode!r}")
    parameter = next(tokenizer.parameters())
    originals = ((images.float() + 1) / 2).clamp(0, 1)  # (B, 3, H, W) in [0, 1]
    if extractor is not None and real_features is None:
        real_features = torch.cat(
            [extractor(originals[i : i + batch_size]).cpu() for i in range(0, len(images), batch_size)]
        )
    results: dict[str, dict[str, float]] = {}
    for mode in modes:
        psnrs, ssims, features = [], [], []
        for start in range(0, images.shape[0], batch_size):
            batch = images[start : start + batch_size].to(device=parameter.device, dtype=parameter.dtype)
            reconstruction = tokenizer.reconstruct(batch, hybrid=mode == "hybrid")
            reconstruction = ((reconstruction.float().cpu() + 1) / 2).clamp(0, 1)
            target = originals[start : start + batch_size]
            psnrs.append(psnr(reconstruction, target))
            ssims.append(ssim(reconstruction, target))
            if extractor is not None:
                features.append(extractor(reconstruction).cpu())
        results[mode] = {"psnr": _mean(torch.cat(psnrs)), "ssim": _mean(torch.cat(ssims))}
        if extractor is not None:
            results[mode]["rfid"] = fid_from_features(real_features, torch.cat(features))
    return results
