"""What every text-to-image pipeline here shares: its components, device and dtype, prompts, its index.

:class:`~openhart.models.hart.HartPipeline` and
:class:`~openhart.models.latent_diffusion.LatentDiffusionPipeline` are peers built on this base:
both hold a text encoder and the hybrid tokenizer beside their own generator, move as one, and
save one sub-folder per component with ``model_index.json`` naming the pipeline class.

Legend: B prompts, T prompt tokens, Dctx text width.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from openhart.text import TextEncoder
from openhart.tokenizer import HybridTokenizer
from openhart.utils.config import read_json, write_json
from openhart.utils.memory import release_freed_memory
from openhart.validation import InvalidTypeError, check_device
from openhart.version import __version__

INDEX_NAME = "model_index.json"


class PipelineBase:
    """Components, device/dtype, ``to``, parameter counts, prompt encoding and the saved index."""

    text_encoder: TextEncoder
    tokenizer: HybridTokenizer

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        """Name → module, in saving order; the text encoder first."""
        raise NotImplementedError

    def _reference_parameter(self) -> torch.Tensor:
        """The parameter whose device and dtype are the pipeline's (one the generator computes in)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        return self._reference_parameter().device

    @property
    def dtype(self) -> torch.dtype:
        return self._reference_parameter().dtype

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    def _movable_components(self) -> dict[str, torch.nn.Module]:
        """The components :meth:`to` moves (a pipeline may hold one elsewhere, e.g. offloaded)."""
        return self.components

    def _after_move(self) -> None:
        """Drop whatever points at the old weights' memory (captured graphs, caches)."""

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        """Move every component (and cast floating weights when ``dtype`` is given); returns self."""
        # Only what is given; nn.Module.to directly, because diffusers' override warns on every
        # dtype cast about fp32 modules that PixArt does not have.
        if device is not None:
            device = check_device(device)  # names the devices this machine has, before torch asserts
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise InvalidTypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        kwargs = {key: value for key, value in (("device", device), ("dtype", dtype)) if value is not None}
        if kwargs:
            for module in self._movable_components().values():
                torch.nn.Module.to(module, **kwargs)
            release_freed_memory()  # the old copies (fp32 before a bf16 cast, host before a GPU) go back to the OS
        self._after_move()
        return self

    def eval(self):
        """Every component in eval mode (what sampling needs); returns self.

        Loaders (``from_pretrained``, :func:`openhart.load`, ``presets.build_pipeline``) return
        pipelines in eval mode. The constructor leaves its modules' modes alone, so a trainer can
        build a pipeline around networks it is training; it samples them in eval mode and trains
        them in train mode itself.
        """
        for module in self.components.values():
            module.eval()
        return self

    def num_parameters(self) -> dict[str, int]:
        return {name: sum(p.numel() for p in module.parameters()) for name, module in self.components.items()}

    # ------------------------------------------------------------------ prompts
    def encode_prompt(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """prompts → context (B, T, Dctx) in the pipeline's dtype and device, mask (B, T) bool."""
        context, mask = self.text_encoder.encode(prompts)
        return context.to(device=self.device, dtype=self.dtype), mask.to(self.device)

    def empty_context(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The released model's unconditional context: all zeros, only the first token valid."""
        tokens, width = self.text_encoder.max_length, self.text_encoder.hidden_size
        context = torch.zeros(batch_size, tokens, width, device=self.device, dtype=self.dtype)
        mask = torch.zeros(batch_size, tokens, dtype=torch.bool, device=self.device)
        mask[:, 0] = True
        return context, mask

    # ------------------------------------------------------------------ the saved index
    def _write_index(self, root: Path) -> None:
        index = {name: type(module).__name__ for name, module in self.components.items()}
        write_json(
            root / INDEX_NAME, {"_class_name": type(self).__name__, "openhart_version": __version__, **index}
        )


def saved_pipeline_class(path: str | os.PathLike[str]) -> str | None:
    """The ``_class_name`` in a folder's ``model_index.json``; None when there is no readable index."""
    index = Path(path) / INDEX_NAME
    if not index.is_file():
        return None
    try:
        data = read_json(index)
    except ValueError:  # not JSON: the loader names the file when it tries to read it
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None
