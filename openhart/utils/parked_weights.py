"""A module's weights parked in a file while they are not needed, and mapped back when they are.

The text encoder is needed for a moment per call (encoding the prompts) and then sits idle while
the transformer samples. Offloading frees it in between. A plain encoder can be rebuilt from its
own model files, but an int8 one would have to be quantized again at every call (measured: 3x the
encoder time and a higher peak than keeping it, docs/performance.md). Parking writes the weights as
they are, int8 included, to a safetensors file once; every later restore maps that file, which
costs no quantization and, while the file sits in the OS page cache, no disk read either.

torchao's int8 weights are tensor subclasses: they are stored as their inner tensors (int8 data,
scales) and rebuilt with the subclass's own ``__tensor_unflatten__``, so the module comes back
exactly as it was.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from openhart.utils.memory import release_freed_memory

logger = logging.getLogger("openhart")


@dataclass(frozen=True)
class _Slot:
    """Where one tensor lives: ``getattr(module, store)[name]`` (a parameter or buffer dict)."""

    module: nn.Module
    store: str  # "_parameters" or "_buffers"
    name: str
    key: str  # the tensor's key in the file (shared tensors share a key)


@dataclass(frozen=True)
class _Layout:
    """How to rebuild one tensor from the file: a plain tensor, or a subclass from its parts."""

    is_parameter: bool
    subclass: type | None = None
    inner_names: tuple[str, ...] = ()
    context: Any = None
    size: torch.Size | None = None
    stride: tuple[int, ...] | None = None


class ParkedWeights:
    """Park a module's parameters and buffers in a temporary safetensors file, and restore them.

    The file is written at the first :meth:`park` and reused by later ones (weights do not change
    while parked; call :meth:`discard` after changing them). It is deleted with this object or at
    interpreter exit. ``directory`` defaults to the system's temporary folder.
    """

    def __init__(self, directory: str | Path | None = None) -> None:
        self._directory = Path(tempfile.mkdtemp(prefix="openhart-parked-", dir=directory))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self._directory, True)
        self._path = self._directory / "weights.safetensors"
        self._slots: list[_Slot] = []
        self._layouts: dict[str, _Layout] = {}

    @property
    def path(self) -> Path:
        return self._path

    @property
    def written(self) -> bool:
        return self._path.is_file()

    def park(self, module: nn.Module) -> None:
        """Write ``module``'s tensors (first time only) and replace them by meta tensors.

        OSError (e.g. a full disk) leaves the module untouched and no partial file behind.
        """
        if not self.written:
            self._write(module)
        for slot in self._slots:
            tensor = getattr(slot.module, slot.store)[slot.name]
            meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
            getattr(slot.module, slot.store)[slot.name] = (
                nn.Parameter(meta, requires_grad=False) if slot.store == "_parameters" else meta
            )
        release_freed_memory()  # the freed weights go back to the OS, not to the allocator's lists

    def restore(self, device: torch.device | str = "cpu") -> None:
        """Put the parked tensors back (memory-mapped from the file, then moved to ``device``)."""
        if not self.written:
            raise RuntimeError("nothing is parked: park() a module first")
        stored = load_file(self._path)
        rebuilt: dict[str, torch.Tensor] = {}
        for key, layout in self._layouts.items():
            if layout.subclass is None:
                tensor = stored[key]
            else:
                inner = {name: stored[f"{key}::{name}"] for name in layout.inner_names}
                tensor = layout.subclass.__tensor_unflatten__(
                    inner, layout.context, layout.size, layout.stride
                )
            tensor = tensor.to(device)
            rebuilt[key] = nn.Parameter(tensor, requires_grad=False) if layout.is_parameter else tensor
        for slot in self._slots:
            getattr(slot.module, slot.store)[slot.name] = rebuilt[slot.key]

    def discard(self) -> None:
        """Delete the file, so the next :meth:`park` writes the module's current weights."""
        self._path.unlink(missing_ok=True)
        self._slots, self._layouts = [], {}

    def _write(self, module: nn.Module) -> None:
        slots: list[_Slot] = []
        layouts: dict[str, _Layout] = {}
        flat: dict[str, torch.Tensor] = {}
        keys_by_id: dict[int, str] = {}
        storages: set[int] = set()
        for module_name, submodule in module.named_modules():
            for store in ("_parameters", "_buffers"):
                for name, tensor in getattr(submodule, store).items():
                    if tensor is None:
                        continue
                    key = keys_by_id.get(id(tensor))
                    if key is None:  # tied weights are written once and restored as one tensor
                        key = f"{module_name}.{name}" if module_name else name
                        keys_by_id[id(tensor)] = key
                        layouts[key] = _describe(tensor, key, flat, storages, store == "_parameters")
                    slots.append(_Slot(submodule, store, name, key))
        partial = self._path.with_suffix(".partial")
        try:
            save_file(flat, partial)
            partial.replace(self._path)
        except (OSError, SafetensorError) as error:  # safetensors reports I/O errors as its own type
            partial.unlink(missing_ok=True)
            raise OSError(f"could not park weights in {self._path}: {error}") from error
        self._slots, self._layouts = slots, layouts
        logger.info("parked %d tensors in %s", len(layouts), self._path)


def _describe(
    tensor: torch.Tensor, key: str, flat: dict[str, torch.Tensor], storages: set[int], is_parameter: bool
) -> _Layout:
    """Add ``tensor``'s plain parts to ``flat`` and return how to rebuild it."""
    data = tensor.detach()
    flatten = getattr(data, "__tensor_flatten__", None)
    if flatten is None:
        flat[key] = _own_storage(data, storages)
        return _Layout(is_parameter)
    inner_names, context = flatten()
    for name in inner_names:
        inner = getattr(data, name)
        if getattr(inner, "__tensor_flatten__", None) is not None:
            raise TypeError(f"{key}: nested tensor subclasses cannot be parked")
        flat[f"{key}::{name}"] = _own_storage(inner, storages)
    return _Layout(is_parameter, type(data), tuple(inner_names), context, data.size(), data.stride())


def _own_storage(tensor: torch.Tensor, storages: set[int]) -> torch.Tensor:
    """``tensor`` on the CPU, contiguous, copied if another stored tensor shares its memory
    (safetensors refuses to write shared storage)."""
    tensor = tensor.to("cpu").contiguous()
    pointer = tensor.untyped_storage().data_ptr()
    if pointer != 0 and pointer in storages:  # 0: an empty tensor, which owns nothing
        tensor = tensor.clone()
        pointer = tensor.untyped_storage().data_ptr()
    storages.add(pointer)
    return tensor
