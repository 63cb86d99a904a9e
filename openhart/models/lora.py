"""LoRA adapters on a HartPipeline: load, scale, fuse, unload, save (PEFT's format and layers).

An adapter folder is what PEFT writes, plus one file of ours::

    adapter_config.json         PEFT's LoraConfig (rank, alpha, target module patterns)
    adapter_model.safetensors   the low-rank matrices, PEFT's key names
    openhart_base.json          the base model's name and a fingerprint of its weights

The adapters live on the transformer and, optionally, the residual diffusion head. PEFT sees
both through :class:`LoraTargets`, a module whose two children are the pipeline's own, so its
module paths (``transformer.blocks.0.attn.qkv_proj``, ``diffusion_head.res_blocks.0.mlp.0``)
are the same in training (where the container is the generator's loss module) and here.
PEFT replaces the targeted linears in place: the pipeline keeps its components and calls them
as before, now with ``W x + scale · (alpha / r) · B A x`` in every targeted layer.

The fingerprint (:func:`weights_fingerprint`) hashes the tokenizer, transformer and head in
bfloat16, so a base loaded in float32 or bfloat16 matches the same record; an adapter trained on
one base is refused on another (its low-rank update means nothing on other weights).

PEFT is an optional dependency (``pip install openhart[lora]``), imported on first use only:
its import pulls in much of ``transformers`` (seconds).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from openhart.errors import ConfigError, DependencyError, InvalidInputError, ModelLoadError
from openhart.utils.config import read_json, write_json

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

    from openhart.models.hart import HartPipeline

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_RECORD = "openhart_base.json"
BASE_RECORD_FORMAT = "openhart-lora-base-1"
# Components whose weights an adapter depends on: the ones it changes and the tokenizer whose
# tokens it was trained on. The text encoder is left out: it can be large (Qwen2: 1.5 B) and its
# config may hold machine-specific paths.
FINGERPRINTED = ("tokenizer", "transformer", "diffusion_head")

# Named groups of target modules (full-match regular expressions over LoraTargets' module paths).
TARGET_GROUPS: dict[str, str] = {
    "attention": r"transformer\.blocks\.\d+\.attn\.(qkv_proj|proj)",
    "mlp": r"transformer\.blocks\.\d+\.ffn\.(gate_proj|up_proj|down_proj)",
    "adaln": r"transformer\.blocks\.\d+\.ada_lin\.1",
    "diffusion_head": r"diffusion_head\.res_blocks\.\d+\.(mlp\.(0|2)|adaLN_modulation\.1)",
}
DEFAULT_TARGETS = ("attention", "mlp")


def import_peft() -> Any:
    """The ``peft`` module, or a DependencyError that says how to install it."""
    try:
        import peft
    except ImportError as error:
        raise DependencyError(
            f"LoRA needs the peft package: pip install 'openhart[lora]' ({error})"
        ) from error
    return peft


class LoraTargets(nn.Module):
    """The two networks adapters may touch, under the names PEFT's module paths start with."""

    def __init__(self, transformer: nn.Module, diffusion_head: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer
        self.diffusion_head = diffusion_head


def target_pattern(targets: list[str] | tuple[str, ...]) -> str:
    """One full-match regex for PEFT's ``target_modules`` from group names or regexes.

    A target is a group name of :data:`TARGET_GROUPS` or a regular expression over module paths
    such as ``transformer\\.head``; ConfigError names one that is neither.
    """
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"lora.targets: expected a non-empty list, got {targets!r}")
    parts = []
    for target in targets:
        if not isinstance(target, str) or not target:
            raise ConfigError(f"lora.targets: expected group names or regexes, got {target!r}")
        if target in TARGET_GROUPS:
            parts.append(TARGET_GROUPS[target])
            continue
        try:
            re.compile(target)
        except re.error as error:
            raise ConfigError(
                f"lora.targets: {target!r} is neither a group {sorted(TARGET_GROUPS)} nor a valid "
                f"regular expression ({error})"
            ) from error
        parts.append(target)
    return "(" + "|".join(f"(?:{p})" for p in parts) + ")"


def check_targets_match(container: nn.Module, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Module paths of ``container``'s linears that ``targets`` select; ConfigError for a target matching none."""
    linears = [name for name, module in container.named_modules() if isinstance(module, nn.Linear)]
    selected: set[str] = set()
    for target in targets:
        pattern = re.compile(TARGET_GROUPS.get(target, target))
        hits = [name for name in linears if pattern.fullmatch(name)]
        if not hits:
            examples = ", ".join(linears[:6])
            raise ConfigError(
                f"lora.targets: {target!r} matches no linear layer of the model (paths look like {examples}, ...)"
            )
        selected.update(hits)
    return sorted(selected)


def lora_config(
    rank: int,
    alpha: float,
    dropout: float,
    targets: list[str] | tuple[str, ...],
    base_model: str | None = None,
) -> LoraConfig:
    """PEFT's LoraConfig for the given rank, alpha (scale alpha / rank), dropout and targets."""
    peft = import_peft()
    return peft.LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_pattern(targets),
        base_model_name_or_path=base_model,
    )


# ---------------------------------------------------------------------- the base-model record
def weights_fingerprint(pipeline: HartPipeline) -> str:
    """SHA-256 of the tokenizer's, transformer's and head's weights (names, shapes, bf16 values).

    Values are hashed in bfloat16 so the same model loaded in float32 or bfloat16 gives the same
    fingerprint. The pipeline must not carry adapters (their layers rename the weights).
    """
    digest = hashlib.sha256()
    for component in FINGERPRINTED:
        module = pipeline.components[component]
        for name, tensor in sorted(module.state_dict().items()):
            if "lora_" in name or ".base_layer." in name:
                raise InvalidInputError(
                    f"{component}.{name}: cannot fingerprint a model with LoRA layers; unload them first"
                )
            value = tensor.detach()
            if value.is_floating_point():
                value = value.to(torch.bfloat16)
            value = value.cpu().contiguous()
            digest.update(f"{component}.{name}:{value.dtype}:{tuple(value.shape)}\n".encode())
            digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class BaseRecord:
    """What an adapter was trained on: the base model as named to ``--model``, and its fingerprint."""

    base_model: str
    weights_sha256: str
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. trigger word, steps, rank

    def write(self, folder: Path) -> None:
        write_json(
            folder / BASE_RECORD,
            {
                "format": BASE_RECORD_FORMAT,
                "base_model": self.base_model,
                "weights_sha256": self.weights_sha256,
                "fingerprinted": list(FINGERPRINTED),
                **self.extra,
            },
        )

    @classmethod
    def read(cls, folder: Path) -> BaseRecord:
        path = folder / BASE_RECORD
        if not path.is_file():
            raise ModelLoadError(
                f"{folder}: no {BASE_RECORD} (the base model this adapter was trained on is unknown); "
                "pass check_base=False to load a bare PEFT adapter anyway"
            )
        data = read_json(path)
        if data.get("format") != BASE_RECORD_FORMAT or not isinstance(data.get("weights_sha256"), str):
            raise ModelLoadError(f"{path}: not an OpenHART LoRA base record")
        extra = {
            k: v
            for k, v in data.items()
            if k not in ("format", "base_model", "weights_sha256", "fingerprinted")
        }
        return cls(str(data.get("base_model")), data["weights_sha256"], extra)

    def check(self, fingerprint: str, folder: Path, base_name: str | None) -> None:
        """ModelLoadError naming both models unless ``fingerprint`` is the recorded one."""
        if fingerprint == self.weights_sha256:
            return
        this = f"this model {base_name!r}" if base_name else "this model"
        raise ModelLoadError(
            f"LoRA {folder} was trained on base model {self.base_model!r} (weights "
            f"{self.weights_sha256[:12]}), but {this} has other weights ({fingerprint[:12]}); "
            f"load it on {self.base_model!r}"
        )


# ---------------------------------------------------------------------- folders and specs
def adapter_folder(path: str | os.PathLike[str]) -> Path:
    """The adapter folder at ``path``: the folder itself, or a training run's ``final/``."""
    folder = Path(path)
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    if (folder / "final" / ADAPTER_CONFIG).is_file():
        return folder / "final"
    if not folder.exists():
        raise ModelLoadError(f"LoRA {folder}: no such folder")
    raise ModelLoadError(f"LoRA {folder}: no {ADAPTER_CONFIG} (not a LoRA adapter folder or training run)")


def parse_lora_spec(spec: str) -> tuple[str, float]:
    """``DIR`` or ``DIR:SCALE`` → (DIR, SCALE); the scale defaults to 1."""
    path, sep, tail = spec.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass  # a ':' inside the path (a drive letter, a URL-like name): no scale given
    if not spec:
        raise InvalidInputError("--lora: expected DIR or DIR:SCALE, got an empty value")
    return spec, 1.0


# ---------------------------------------------------------------------- adapters on a pipeline
class PipelineAdapters:
    """The adapters a pipeline carries (``pipeline.load_lora`` and friends keep one of these)."""

    def __init__(self, pipeline: HartPipeline) -> None:
        self.pipeline = pipeline
        self.targets = LoraTargets(pipeline.transformer, pipeline.diffusion_head)
        self.peft_model: PeftModel | None = None
        self.scales: dict[str, float] = {}  # adapter name → scale, in load order
        self.folders: dict[str, Path] = {}
        self.fused = False
        self._base_fingerprint: str | None = None
        # PEFT freezes every base weight it wraps; unload gives each its own flag back.
        self._requires_grad = {name: p.requires_grad for name, p in self.targets.named_parameters()}

    def base_fingerprint(self) -> str:
        """The fingerprint of the weights the first adapter was loaded on (computed once)."""
        if self._base_fingerprint is None:
            self._base_fingerprint = weights_fingerprint(self.pipeline)
        return self._base_fingerprint

    def load(
        self,
        path: str | os.PathLike[str],
        scale: float = 1.0,
        *,
        check_base: bool = True,
        base_name: str | None = None,
    ) -> str:
        """Add the adapter at ``path`` with ``scale`` (0: no effect); returns its adapter name."""
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or scale != scale:
            raise InvalidInputError(f"scale: expected a number, got {scale!r}")
        folder = adapter_folder(path)
        if check_base:
            BaseRecord.read(folder).check(self.base_fingerprint(), folder, base_name)
        peft = import_peft()
        was_fused = self.fused
        if was_fused:
            self.unfuse()  # PEFT adds adapters to unmerged layers only
        name = f"adapter_{len(self.folders)}"
        try:
            if self.peft_model is None:
                self.peft_model = peft.PeftModel.from_pretrained(
                    self.targets, str(folder), adapter_name=name, is_trainable=False
                )
            else:
                self.peft_model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        except (ValueError, KeyError, OSError, RuntimeError) as error:
            raise ModelLoadError(f"LoRA {folder}: {error}") from error
        self.scales[name] = float(scale)
        self.folders[name] = folder
        self._activate()
        if was_fused:
            self.fuse()
        logger.info("loaded LoRA %s as %s, scale %g", folder, name, scale)
        return name

    def _lora_layers(self) -> list[Any]:
        peft = import_peft()
        return [m for m in self.targets.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]

    def _activate(self) -> None:
        """Every loaded adapter active at once, each with its own scale."""
        assert self.peft_model is not None
        self.peft_model.base_model.set_adapter(list(self.scales), inference_mode=True)
        for layer in self._lora_layers():
            for name, scale in self.scales.items():
                layer.set_scale(name, scale)
        device, dtype = self.pipeline.device, self.pipeline.dtype
        self.targets.to(device=device, dtype=dtype)  # new low-rank weights follow the pipeline
        self.targets.eval()

    def set_scale(self, name: str, scale: float) -> None:
        if name not in self.scales:
            raise InvalidInputError(f"adapter {name!r} is not loaded (loaded: {list(self.scales)})")
        self.scales[name] = float(scale)
        was_fused = self.fused
        if was_fused:
            self.unfuse()
        self._activate()
        if was_fused:
            self.fuse()

    def fuse(self) -> None:
        """Add every active adapter's scaled update into the base weights (sampling at base speed)."""
        if self.peft_model is None:
            raise InvalidInputError("fuse_lora: no LoRA adapter is loaded")
        if not self.fused:
            self.peft_model.base_model.merge_adapter()
            self.fused = True

    def unfuse(self) -> None:
        """Subtract the fused updates again (equal to the base weights up to float rounding)."""
        if self.peft_model is not None and self.fused:
            self.peft_model.base_model.unmerge_adapter()
            self.fused = False

    def unload(self) -> None:
        """Remove the LoRA layers; fused updates stay in the weights (as diffusers' ``unload_lora_weights``)."""
        if self.peft_model is not None:
            self.peft_model.base_model.unload()
            for name, parameter in self.targets.named_parameters():
                parameter.requires_grad_(self._requires_grad.get(name, parameter.requires_grad))
        self.peft_model = None
        self.scales.clear()
        self.folders.clear()
        if self.fused:
            self._base_fingerprint = None  # the weights are base + adapters now
        self.fused = False


def save_adapter(peft_model: PeftModel, folder: str | os.PathLike[str], record: BaseRecord) -> Path:
    """Write ``peft_model``'s adapter in PEFT's format plus the base record; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # No embedding layers are adapted: skip PEFT's look-up of a transformers config for them.
    peft_model.save_pretrained(str(folder), safe_serialization=True, save_embedding_layers=False)
    record.write(folder)
    return folder
