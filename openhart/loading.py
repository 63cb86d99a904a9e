"""One loader for every way of naming a model: ``openhart.load(name_or_path)``.

Every command (``generate``, ``edit``, ``eval``, ``compare``, ``serve``, ``bench``, ``synthesize``)
and the trainers' ``pipeline:`` start go through :func:`load`, so one name means one model
everywhere. A name is tried as, in order:

1. a local folder: a saved :class:`~openhart.models.HartPipeline`, a saved
   :class:`~openhart.models.LatentDiffusionPipeline`, or the released checkpoint layout
   (``llm/`` + ``tokenizer/``, converted on load by :mod:`openhart.compat`);
2. a preset name: its weights shipped inside the package (``emoji-64``), else its released
   weights on the Hugging Face Hub (``hart-0.7b-1024``), else an error; random weights of the
   preset's architecture only when ``random_weights=True``, with a warning;
3. a Hugging Face repo id ``ORG/NAME`` of either layout (:mod:`openhart.hub`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from openhart.errors import ModelLoadError
from openhart.models import HartPipeline, LatentDiffusionPipeline
from openhart.models.base import saved_pipeline_class
from openhart.presets import PRESETS, build_diffusion_baseline, build_pipeline
from openhart.text import TextEncoder

logger = logging.getLogger(__name__)

# Where trained weights of a preset ship inside the package (the embedded default model lives here).
PACKAGED_WEIGHTS = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "emoji-64"
KINDS = ("auto", "hart", "diffusion")

Pipeline = HartPipeline | LatentDiffusionPipeline


def load(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    kind: str = "auto",
    random_weights: bool = False,
    seed: int = 0,
    revision: str | None = None,
    text_encoder: TextEncoder | str | os.PathLike[str] | None = None,
    prefer_ema: bool = True,
) -> Pipeline:
    """The pipeline a name stands for (see the module docstring); None is the embedded default model.

    Args:
        kind: "hart", "diffusion" (the latent-diffusion baseline) or "auto" (what the folder
            holds; a preset means HART). A folder of the other kind is an error.
        random_weights: a preset's architecture with freshly initialised weights (seeded by
            ``seed``), even when trained weights exist. Never chosen silently.
        revision: the Hub revision of a repo id.
        text_encoder: a ready :class:`TextEncoder` replaces the saved one; for the released
            layout, also the Qwen2 folder or repo id (default: the release's own).
        prefer_ema: the released layout's EMA weights when present.

    Raises :class:`~openhart.errors.ModelLoadError` for a name that is none of these, and the
    loaders' own errors (missing or mis-shaped tensors, Hub failures) for one that does not load.
    """
    if kind not in KINDS:
        raise ModelLoadError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(random_weights, bool):
        raise ModelLoadError(f"random_weights must be a bool, got {random_weights!r}")
    name = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    path = Path(name)
    if name and path.is_dir():
        return _load_folder(path, device, dtype, kind, text_encoder, prefer_ema)
    if name in PRESETS:
        return _load_preset(
            name, device, dtype, kind, random_weights, seed, revision, text_encoder, prefer_ema
        )
    from openhart.hub import load_from_hub, looks_like_repo_id

    if looks_like_repo_id(name):
        _require_kind(kind, "hart", name)
        return load_from_hub(
            name,
            revision=revision,
            text_encoder=text_encoder,
            prefer_ema=prefer_ema,
            device=device,
            dtype=dtype,
        )
    raise ModelLoadError(
        f"{name!r} is neither a model folder nor a preset ({', '.join(sorted(PRESETS))}) "
        "nor a Hugging Face repo id (ORG/NAME)"
    )


def local_model_folder(name_or_path: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder on this machine that :func:`load` reads ``name_or_path`` from, in its order: the
    folder itself, else the weights shipped for a preset; None for a repo id or a preset without
    shipped weights. None is the embedded default model."""
    name = os.fspath(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    if name and Path(name).is_dir():
        return Path(name)
    if name in PRESETS and (PACKAGED_WEIGHTS / name).is_dir():
        return PACKAGED_WEIGHTS / name
    return None


def _load_folder(
    path: Path,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    kind: str,
    text_encoder: TextEncoder | str | os.PathLike[str] | None,
    prefer_ema: bool,
) -> Pipeline:
    from openhart.compat import is_official_layout, load_official_pipeline

    if saved_pipeline_class(path) == "LatentDiffusionPipeline":
        _require_kind(kind, "diffusion", path)
        return LatentDiffusionPipeline.from_pretrained(path, device=device, dtype=dtype)
    _require_kind(kind, "hart", path)
    if is_official_layout(path):
        if not isinstance(text_encoder, TextEncoder) and not (
            text_encoder is not None and Path(text_encoder).is_dir()
        ):
            from openhart.hub import DEFAULT_TEXT_ENCODER_REPO, text_model_folder

            # The released layout has no text encoder: its Qwen2 repo by default, or a repo id.
            text_encoder = text_model_folder(text_encoder or DEFAULT_TEXT_ENCODER_REPO)
        return load_official_pipeline(path, text_encoder, prefer_ema=prefer_ema, device=device, dtype=dtype)
    encoder = text_encoder if isinstance(text_encoder, TextEncoder) else None
    return HartPipeline.from_pretrained(path, device=device, dtype=dtype, text_encoder=encoder)


def _load_preset(
    name: str,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
    kind: str,
    random_weights: bool,
    seed: int,
    revision: str | None,
    text_encoder: TextEncoder | str | os.PathLike[str] | None,
    prefer_ema: bool,
) -> Pipeline:
    from openhart.hub import RELEASED_REPOS, load_from_hub

    if random_weights:
        what = "the latent-diffusion baseline sized for" if kind == "diffusion" else "preset"
        logger.warning("%s %r: RANDOM weights (seed %d), not a trained model", what, name, seed)
        if kind == "diffusion":
            return build_diffusion_baseline(name, seed=seed, device=device, dtype=dtype)
        return build_pipeline(name, seed=seed, device=device, dtype=dtype)
    if kind == "diffusion":
        raise ModelLoadError(
            f"no trained latent-diffusion baseline ships for preset {name!r}: pass its folder, "
            "or random_weights=True (--random-weights) for random weights of matched size"
        )
    shipped = PACKAGED_WEIGHTS / name
    if shipped.is_dir():
        return HartPipeline.from_pretrained(shipped, device=device, dtype=dtype)
    if name in RELEASED_REPOS:
        return load_from_hub(
            RELEASED_REPOS[name],
            revision=revision,
            text_encoder=text_encoder,
            prefer_ema=prefer_ema,
            device=device,
            dtype=dtype,
        )
    raise ModelLoadError(
        f"preset {name!r} has no trained weights (none ship with the package, none are released): "
        "pass a trained model folder, or random_weights=True (--random-weights) for random weights "
        "of its architecture"
    )


def _require_kind(kind: str, found: str, name: str | Path) -> None:
    if kind not in ("auto", found):
        raise ModelLoadError(f"{name}: asked for a {kind!r} model, but it holds a {found!r} one")
