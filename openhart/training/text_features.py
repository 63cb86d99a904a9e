"""The frozen text encoder of a generator run: caption features computed once, cached, or read from a file.

``openhart train text-features`` writes a file of every caption's context
(:func:`precompute_text_features`); a recipe's ``text_features`` then answers those captions
without encoding them, and stands in for an encoder that cannot be built on the training machine.
Legend: B captions, T prompt tokens, D (Dctx) text width.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from openhart.text import TextEncoder, TextEncoderConfig, build_text_encoder

logger = logging.getLogger(__name__)


TEXT_FEATURES_FORMAT = "openhart-text-features-1"


def collect_captions(dataset: Any) -> list[str]:
    """Every distinct caption of a dataset, sorted (read from its records when it has them)."""
    records = getattr(dataset, "records", None)
    if records is not None and all(hasattr(r, "caption") for r in records):
        captions = {str(r.caption) for r in records}
    else:  # a stream or an unknown dataset: read the samples
        captions = {str(sample["caption"]) for sample in dataset}
    return sorted(captions)


@torch.no_grad()
def precompute_text_features(
    encoder: TextEncoder, captions: list[str], path: str | Path, batch_size: int = 256
) -> Path:
    """Encode ``captions`` once and write them to a safetensors file for ``text_features``.

    Compact: only the valid (unmasked) context vectors are stored, in float16, with the masks and
    the encoder's config (so a mismatched recipe is refused). Padded positions come back as zeros,
    which is what the transformer sees anyway when it masks the prompt's padding.
    """
    from safetensors.torch import save

    from openhart.utils.config import atomic_write_bytes

    captions = sorted(set(captions))
    if not captions:
        raise ValueError("captions: nothing to encode")
    tokens, masks = [], []
    for start in range(0, len(captions), batch_size):
        context, mask = encoder.encode(captions[start : start + batch_size])  # (b, T, D), (b, T)
        tokens.append(context[mask].to(torch.float16).cpu())  # (valid, D)
        masks.append(mask.cpu())
    metadata = {
        "format": TEXT_FEATURES_FORMAT,
        "captions": json.dumps(captions),
        "text_encoder": json.dumps(encoder.config.to_dict(), sort_keys=True),
    }
    tensors = {
        "tokens": torch.cat(tokens).contiguous(),
        "mask": torch.cat(masks).to(torch.uint8).contiguous(),
    }
    path = Path(path)
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    logger.info("wrote text features of %d captions to %s", len(captions), path)
    return path


def load_text_features(
    path: str | Path, encoder_config: TextEncoderConfig
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """caption → (context (T, D) float32, mask (T,) bool) from :func:`precompute_text_features`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text_features: no such file {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != TEXT_FEATURES_FORMAT:
            raise ValueError(f"text_features: {path} is not an OpenHART text-feature file")
        tokens, mask = handle.get_tensor("tokens"), handle.get_tensor("mask").bool()
    made_with = json.loads(metadata["text_encoder"])
    if made_with != json.loads(json.dumps(encoder_config.to_dict(), sort_keys=True)):
        raise ValueError(
            f"text_features: {path} was made with text encoder {made_with}, but the recipe's is "
            f"{encoder_config.to_dict()}"
        )
    captions = json.loads(metadata["captions"])
    context = torch.zeros(*mask.shape, tokens.shape[-1])  # (N, T, D)
    context[mask] = tokens.float()
    return {caption: (context[i], mask[i]) for i, caption in enumerate(captions)}


class PrecomputedTextEncoder(TextEncoder):
    """Stands in for a text encoder that cannot be built here (e.g. no weights on this machine).

    It answers prompts from precomputed features only, and saves the real encoder's config, so
    the saved pipeline loads with the real encoder wherever that exists.
    """

    saves_weights = False

    def __init__(
        self, config: TextEncoderConfig, table: dict[str, tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__(config)
        self.table = table
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # gives .device / .dtype

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [p for p in prompts if p not in self.table]
        if missing:
            raise ValueError(
                f"prompts: no precomputed text features for {missing[:3]} and the text encoder "
                f"({self.config.kind}) is not available here"
            )
        contexts, masks = zip(*(self.table[p] for p in prompts), strict=True)
        return torch.stack(contexts).to(self._anchor.device), torch.stack(masks).to(self._anchor.device)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def dtype(self) -> torch.dtype:
        return self._anchor.dtype


class TextContexts:
    """Frozen text encoder with an optional per-process cache of each distinct caption's context.

    The cache lives in CPU memory (about 37 KB per caption for emoji-64's 24 × 384 context), so
    a GPU keeps its memory for training; a batch's rows are stacked and moved each step.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        device: torch.device,
        cache: bool,
        precomputed: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.encoder = encoder
        self.device = device
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = {} if cache or precomputed else None
        if precomputed and self.cache is not None:
            self.cache.update(precomputed)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """context (B, T, Dctx) float32 and mask (B, T) bool on ``device``."""
        if self.cache is None:
            context, mask = self.encoder.encode(captions)
            return context.float().to(self.device), mask.to(self.device)
        missing = sorted({c for c in captions if c not in self.cache})
        if missing:
            context, mask = self.encoder.encode(missing)
            for caption, c, m in zip(missing, context.float().cpu(), mask.cpu(), strict=True):
                self.cache[caption] = (c, m)
        contexts, masks = zip(*(self.cache[c] for c in captions), strict=True)
        return torch.stack(contexts).to(self.device), torch.stack(masks).to(self.device)


class TextEncoderFromRecipe:
    """The recipe's frozen text encoder, or precomputed features standing in for it.

    For trainers whose recipe has ``text_features`` (a file of precomputed caption features):
    captions found there are never encoded, and an encoder that cannot be built here (e.g. a GPU
    machine without its weights) is replaced by the file.
    """

    recipe: Any

    def _precomputed_features(
        self, config: TextEncoderConfig
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor]] | None:
        if self.recipe.text_features is None:
            return None
        if not hasattr(self, "_feature_table"):
            self._feature_table = load_text_features(self.recipe.text_features, config)
        return self._feature_table

    def _text_encoder(self, config: TextEncoderConfig) -> TextEncoder:
        """The recipe's text encoder; with ``text_features``, a stand-in when it cannot be built here."""
        try:
            return build_text_encoder(config)
        except (ImportError, OSError, FileNotFoundError) as error:
            if self.recipe.text_features is None:
                raise
            logger.warning(
                "text encoder %s unavailable (%s): using the precomputed features of %s only",
                config.kind,
                error,
                self.recipe.text_features,
            )
            return PrecomputedTextEncoder(config, self._precomputed_features(config))
