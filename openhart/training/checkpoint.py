"""Training checkpoints: the model as a loadable folder, plus everything ``--resume`` needs.

Layout of a run's output folder::

    OUT/checkpoints/step-0000500/
        model/                      the model (a HartPipeline folder, or a tokenizer folder)
        weights.safetensors         trained weights as the optimiser sees them, EMA under "ema."
        training_state.safetensors  optimiser moments, RNG states of every rank; its metadata
                                    holds the JSON rest (step, data position, scheduler, ...)
        recipe.json                 the resolved recipe the run used
        manifest.json               every other file's size and SHA-256, as written
    OUT/checkpoints/latest.json     {"step": 500, "folder": "step-0000500"}

A checkpoint is written into a temporary folder that is renamed into place, and ``latest.json`` is
replaced atomically afterwards, so an interrupted write never leaves a half checkpoint that
``--resume`` would pick up. Disks still fail and people still delete files: ``--resume`` checks
each checkpoint against its manifest, newest first, and resumes from the newest intact one, saying
which it skipped and why (:func:`resumable_checkpoint`). Nothing is pickled: tensors go to
safetensors, the rest to JSON.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save

from openhart.errors import ModelLoadError
from openhart.utils.config import atomic_write_bytes, read_json, write_json

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest.json"
MODEL_DIR = "model"
WEIGHTS_FILE = "weights.safetensors"
STATE_FILE = "training_state.safetensors"
RECIPE_FILE = "recipe.json"
MANIFEST_FILE = "manifest.json"
EMA_PREFIX = "ema."


class CheckpointError(ModelLoadError, RuntimeError):
    """A run has checkpoints but none is intact; the message names each one and what is wrong."""


@dataclass
class TrainingState:
    """What a resumed run restores besides the weights."""

    step: int  # optimiser steps done
    epoch: int  # data epoch the next batch comes from
    batch_in_epoch: int  # batches of that epoch already consumed (per process)
    world_size: int
    ema_updates: int = 0
    scheduler: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # trainer-specific JSON values
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # trainer-specific tensors
    optimizer: dict[str, Any] | None = None  # a torch optimizer state_dict
    rng: list[dict[str, Any]] | None = None  # capture_rng_state() of every rank, in rank order


# ---------------------------------------------------------------------- RNG state of one process
def capture_rng_state() -> dict[str, Any]:
    """The global RNG streams of this process (torch CPU/CUDA, numpy, random), picklable."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "rest": list(np_state[2:])},
        "python": _python_random_state_to_json(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy"]["keys"].numpy().astype(np.uint32)
    pos, has_gauss, cached = state["numpy"]["rest"]
    np.random.set_state(("MT19937", keys, int(pos), int(has_gauss), float(cached)))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _python_random_state_to_json(state: tuple) -> list:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


# ---------------------------------------------------------------------- optimizer state ⇄ flat
def flatten_optimizer_state(
    state_dict: dict[str, Any], prefix: str = "optimizer."
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimizer state_dict as (safetensors-ready tensors under ``prefix``, JSON rest)."""
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}state.{index}.{key}"] = value
            else:
                plain_state.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain_state": plain_state}


def unflatten_optimizer_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], prefix: str = "optimizer."
) -> dict[str, Any]:
    """The inverse of :func:`flatten_optimizer_state`; tensors outside ``prefix`` are ignored."""
    state: dict[int, dict[str, Any]] = {}
    prefix = f"{prefix}state."
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ---------------------------------------------------------------------- save
def checkpoint_folder_name(step: int) -> str:
    return f"step-{step:07d}"


def save_checkpoint(
    out_dir: str | os.PathLike[str],
    state: TrainingState,
    weights: dict[str, torch.Tensor],
    write_model: Callable[[Path], None],
    recipe: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step-<state.step>`` under ``out_dir/checkpoints`` atomically; returns its folder.

    ``weights`` are the trained tensors (EMA ones prefixed ``ema.``); ``write_model(folder)`` writes
    the loadable model into ``folder``. Only the ``keep`` newest checkpoints are kept. Call on rank 0.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_folder_name(state.step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))
    try:
        write_model(tmp / MODEL_DIR)
        atomic_write_bytes(
            tmp / WEIGHTS_FILE, save({k: v.detach().contiguous().cpu() for k, v in weights.items()})
        )
        atomic_write_bytes(tmp / STATE_FILE, _encode_state(state))
        write_json(tmp / RECIPE_FILE, recipe)
        write_manifest(tmp)
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_json(root / LATEST_NAME, {"step": state.step, "folder": name})
    _prune(root, keep)
    return final


def _encode_state(state: TrainingState) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    optimizer_meta = None
    if state.optimizer is not None:
        optimizer_tensors, optimizer_meta = flatten_optimizer_state(state.optimizer)
        tensors.update(optimizer_tensors)
    rng_meta = []
    for rank, rng in enumerate(state.rng or []):
        tensors[f"rng.{rank}.torch"] = rng["torch"]
        tensors[f"rng.{rank}.numpy_keys"] = rng["numpy"]["keys"]
        if "cuda" in rng:
            tensors[f"rng.{rank}.cuda"] = rng["cuda"]
        rng_meta.append({"numpy_rest": rng["numpy"]["rest"], "python": rng["python"], "cuda": "cuda" in rng})
    for name, tensor in state.extra_tensors.items():
        tensors[f"extra.{name}"] = tensor
    meta = {
        "step": state.step,
        "epoch": state.epoch,
        "batch_in_epoch": state.batch_in_epoch,
        "world_size": state.world_size,
        "ema_updates": state.ema_updates,
        "scheduler": state.scheduler,
        "extra": state.extra,
        "optimizer": optimizer_meta,
        "rng": rng_meta,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return save(tensors, metadata={"training_state": json.dumps(meta)})


# ---------------------------------------------------------------------- integrity
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike[str]) -> None:
    """Record the size and SHA-256 of every file under ``folder`` in its ``manifest.json``."""
    folder = Path(folder)
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    write_json(folder / MANIFEST_FILE, {"files": files})


def checkpoint_problem(folder: str | os.PathLike[str]) -> str | None:
    """What is wrong with a checkpoint folder (a short reason), or None when it is intact.

    With a manifest: every listed file exists with its size and hash, and the weights, training
    state and recipe are among them. Without one (checkpoints written before manifests): the
    weights and training state exist and their safetensors headers parse.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return "the folder does not exist"
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
        try:
            files = read_json(manifest)["files"]
            entries = {str(name): (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            return f"{MANIFEST_FILE} is unreadable ({type(error).__name__})"
        for required in (WEIGHTS_FILE, STATE_FILE, RECIPE_FILE):
            if required not in entries:
                return f"{MANIFEST_FILE} does not list {required}"
        for name, (size, digest) in entries.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
            if _sha256(path) != digest:
                return f"{name} does not match the hash it was written with"
        return None
    for name in (WEIGHTS_FILE, STATE_FILE):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        try:
            with safe_open(str(path), framework="pt") as handle:
                handle.keys()
        except Exception as error:  # safetensors raises its own SafetensorError for a bad file
            return f"{name} is unreadable ({str(error).splitlines()[0][:120]})"
    return None


# ---------------------------------------------------------------------- load
def checkpoint_folders(out_dir: str | os.PathLike[str]) -> list[Path]:
    """The run's ``step-*`` checkpoint folders, newest first (temporary folders excluded)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    folders = [p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")]
    return sorted(folders, key=lambda p: p.name, reverse=True)


def has_checkpoints(out_dir: str | os.PathLike[str]) -> bool:
    """Whether the run folder holds any checkpoint (intact or not) or a ``latest.json``."""
    return bool(checkpoint_folders(out_dir)) or (Path(out_dir) / CHECKPOINTS_DIR / LATEST_NAME).exists()


def resumable_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The newest intact checkpoint of a run, or None when it has none at all.

    Newest by step, whatever ``latest.json`` says: it is only written after its folder is complete,
    and it is the file most likely to be lost or emptied. Each skipped checkpoint is logged with
    its reason; when checkpoints exist but none is intact, :class:`CheckpointError` lists them all.
    """
    root = Path(out_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_NAME
    if pointer.exists():
        try:
            named = read_json(pointer)["folder"]
            if not (root / str(named)).is_dir():
                logger.warning("%s names %s, which does not exist", pointer, named)
        except (ValueError, KeyError, TypeError, OSError) as error:
            logger.warning(
                "%s is unreadable (%s); looking at the checkpoint folders", pointer, type(error).__name__
            )
    skipped: list[str] = []
    for folder in checkpoint_folders(out_dir):
        problem = checkpoint_problem(folder)
        if problem is None:
            if skipped:
                logger.warning("resuming from %s; skipped %s", folder.name, "; ".join(skipped))
            return folder
        skipped.append(f"{folder.name} ({problem})")
    if skipped:
        raise CheckpointError(f"no intact checkpoint in {root}: " + "; ".join(skipped))
    return None


def latest_checkpoint(out_dir: str | os.PathLike[str]) -> Path | None:
    """The folder ``latest.json`` points at, or None when the run has no checkpoint yet."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    pointer = root / LATEST_NAME
    if not pointer.is_file():
        return None
    folder = root / read_json(pointer)["folder"]
    if not folder.is_dir():
        raise FileNotFoundError(f"{pointer} names {folder.name}, which does not exist")
    return folder


def load_training_state(folder: str | os.PathLike[str]) -> TrainingState:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"missing training state file: {path}")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["training_state"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    rng = []
    for rank, rng_meta in enumerate(meta["rng"]):
        entry = {
            "torch": tensors[f"rng.{rank}.torch"],
            "numpy": {"keys": tensors[f"rng.{rank}.numpy_keys"], "rest": rng_meta["numpy_rest"]},
            "python": rng_meta["python"],
        }
        if rng_meta["cuda"]:
            entry["cuda"] = tensors[f"rng.{rank}.cuda"]
        rng.append(entry)
    return TrainingState(
        step=meta["step"],
        epoch=meta["epoch"],
        batch_in_epoch=meta["batch_in_epoch"],
        world_size=meta["world_size"],
        ema_updates=meta["ema_updates"],
        scheduler=meta["scheduler"],
        extra=meta["extra"],
        extra_tensors={k[len("extra.") :]: v for k, v in tensors.items() if k.startswith("extra.")},
        optimizer=None
        if meta["optimizer"] is None
        else unflatten_optimizer_state(tensors, meta["optimizer"]),
        rng=rng or None,
    )


def load_checkpoint_weights(folder: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of ``weights.safetensors`` (trained weights; EMA ones prefixed ``ema.``)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"missing checkpoint weights: {path}")
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118


def split_weights(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (e.g. "ema.transformer."), with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def write_model_folder(target: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Write a model folder (``final/``) through a temporary sibling renamed into place."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        write(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _prune(root: Path, keep: int) -> None:
    folders = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in folders[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
