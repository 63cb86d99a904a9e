"""Hugging Face Hub repo ids wherever a model folder is accepted.

``openhart.load("ORG/NAME")`` and ``openhart ... --model ORG/NAME`` come here when the
name is not a local folder. Two repository layouts load:

* the OpenHART layout (``model_index.json`` + one folder per component, safetensors), loaded as is;
* the released layout (``llm/`` + ``tokenizer/``, ``mit-han-lab/hart-0.7b-1024px``), whose pickles are
  read once (``torch.load(weights_only=True)``) and converted into the OpenHART layout in a cache
  folder keyed by the snapshot's commit, so later loads read safetensors only and a new upstream
  revision gets a fresh conversion. Its text encoder is the released Qwen2
  (:data:`DEFAULT_TEXT_ENCODER_REPO`) unless the caller passes another one.

Downloads go through ``huggingface_hub.snapshot_download`` with ``allow_patterns`` naming exactly
the files the loader reads (the released repository holds more), so the user's ``HF_HOME``,
``HF_TOKEN``, ``HF_HUB_OFFLINE``, progress bars and resumable downloads all apply. Every failure a
user can cause (offline and not cached, unknown or gated repository, disk full, connection lost, a
repository of neither layout) is a :class:`HubError` with a one-line message.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from openhart.errors import NO_ROOM_ERRNOS, NetworkError

if TYPE_CHECKING:
    from openhart.models.hart import HartPipeline
    from openhart.text import TextEncoder

logger = logging.getLogger("openhart")

# Names users expect → the released checkpoint they stand for.
RELEASED_REPOS: dict[str, str] = {"hart-0.7b-1024": "mit-han-lab/hart-0.7b-1024px"}
# The text model the released checkpoint was trained with (its last hidden layer is the context).
DEFAULT_TEXT_ENCODER_REPO = "mit-han-lab/Qwen2-VL-1.5B-Instruct"

# Files each layout's loader reads, nothing else (the released repo also holds a discriminator,
# non-EMA weights and training state).
CONFIG_PATTERNS = ["model_index.json", "llm/config.json", "tokenizer/config.json"]
# sampler.json and speed.json: the model's own sampling defaults and the speed option that
# changes its images, both read by HartPipeline.from_pretrained.
OPENHART_PATTERNS = [
    "model_index.json",
    "sampler.json",
    "speed.json",
    "*/config.json",
    "*/model.safetensors",
    "text_encoder/**",
]
# Weight files of the released layout in the order the loader prefers them (compat.official).
RELEASED_LLM_WEIGHTS = ("ema_model.bin", "model.safetensors", "pytorch_model.bin")
RELEASED_TOKENIZER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# A transformers text model: config, tokenizer files, safetensors weights (``*.bin`` only as a fallback).
TEXT_MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model"]

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class HubError(NetworkError):
    """A model could not be had from the Hub; the message is one line meant for the user."""


class ModelNotCachedError(HubError):
    """Offline (``HF_HUB_OFFLINE``) or unreachable, and the files are not in the local cache."""


class RepoNotFoundError(HubError):
    """No such repository or revision (or it is private and no token was given)."""


class GatedRepoAccessError(HubError):
    """The repository is gated and the token (``HF_TOKEN``) has no access."""


class DownloadFailedError(HubError):
    """The download stopped (disk full, connection lost); the cache keeps only complete files."""


class UnknownLayoutError(HubError):
    """The repository is neither an OpenHART model nor the released HART layout."""


def looks_like_repo_id(name: str | os.PathLike[str]) -> bool:
    """``ORG/NAME`` that is not an existing local path (a local folder always wins)."""
    text = os.fspath(name)
    return bool(_REPO_ID.fullmatch(text)) and not Path(text).exists()


def hf_home() -> Path:
    """``HF_HOME`` as the hub library reads it, looked up now (tests and users may set it late)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HOME")
    return Path(value).expanduser() if value else Path(constants.HF_HOME)


def hub_cache_dir() -> Path:
    """Where snapshots live: ``HF_HUB_CACHE``, else ``$HF_HOME/hub``."""
    value = os.environ.get("HF_HUB_CACHE")
    return Path(value).expanduser() if value else hf_home() / "hub"


def converted_cache_dir() -> Path:
    """Where converted released checkpoints live: ``OPENHART_CACHE``, else ``$HF_HOME/openhart``.

    Beside the hub cache, not inside it, so ``hf cache`` tools see only real repositories.
    """
    value = os.environ.get("OPENHART_CACHE")
    return (Path(value).expanduser() if value else hf_home() / "openhart") / "converted"


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as set now (the hub library reads it once, at import)."""
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in _TRUE_VALUES


def transfer_errors() -> tuple[type[Exception], ...]:
    """The errors huggingface_hub lets through when a connection fails mid-request, after its retries.

    They are the base ``RequestError`` of the HTTP client it is built on: ``httpx2`` (huggingface_hub
    2.x) or ``httpx`` (1.x); 0.x used ``requests``, whose errors are ``OSError``s. Only a client
    already imported can have raised one, so none is imported here.
    """
    clients = (sys.modules.get(name) for name in ("httpx2", "httpx"))
    return tuple(client.RequestError for client in clients if client is not None)


def download(repo_id: str, allow_patterns: list[str], revision: str | None = None) -> Path:
    """``snapshot_download`` of the files matching ``allow_patterns``; hub errors become :class:`HubError`.

    Offline, it returns the cached snapshot of ``revision`` (whatever part of it is cached).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cache = hub_cache_dir()
    offline = is_offline()
    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow_patterns,
            cache_dir=cache,
            local_files_only=offline,
        )
    except GatedRepoError as error:
        raise GatedRepoAccessError(
            f"{where} is gated: accept its terms on huggingface.co and set HF_TOKEN (or `hf auth login`)"
        ) from error
    except RevisionNotFoundError as error:
        raise RepoNotFoundError(f"{where}: no such revision on the Hugging Face Hub") from error
    except RepositoryNotFoundError as error:
        raise RepoNotFoundError(
            f"{repo_id}: no such repository on the Hugging Face Hub (or it is private: set HF_TOKEN)"
        ) from error
    except LocalEntryNotFoundError as error:
        reason = "HF_HUB_OFFLINE=1 forbids downloading" if offline else "the Hub could not be reached"
        raise ModelNotCachedError(
            f"{where} is not in the Hugging Face cache {cache} and {reason}; "
            + ("unset HF_HUB_OFFLINE to download it" if offline else "check the connection and retry")
        ) from error
    except HfHubHTTPError as error:
        raise DownloadFailedError(f"{where}: download failed: {first_line(error)}") from error
    except transfer_errors() as error:
        # Raised once the hub's own resumed retries are spent; like a failed write below, the
        # partial file is deleted and the files finished before stay in the snapshot.
        raise DownloadFailedError(
            f"{where}: download stopped (connection lost: {first_line(error)}); "
            "nothing partial was kept, rerun to download the rest"
        ) from error
    except OSError as error:
        # The hub writes each file under a temporary ``*.incomplete`` name and links it into the
        # snapshot only when whole (it deletes the partial file on failure), so the snapshot keeps
        # the files finished before the error and a rerun fetches only the others.
        raise DownloadFailedError(
            f"{where}: download into {cache} stopped ({write_failure_reason(error)}); "
            "nothing partial was kept, rerun to download the rest"
        ) from error
    return Path(folder)


def first_line(error: BaseException) -> str:
    """The first non-blank line of an error's message, or its class name when it has none."""
    return next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)


def write_failure_reason(error: OSError) -> str:
    """Why a write failed, in a few words: a full disk, quota and file-size limit read alike."""
    detail = error.strerror or first_line(error)
    if error.errno in NO_ROOM_ERRNOS:
        return f"no room left: disk full, quota or file-size limit; {detail}"
    return detail


def _repo_files(repo_id: str, revision: str | None) -> set[str] | None:
    """The repository's file list when the Hub is reachable (to pick one weights file), else None."""
    if is_offline():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return set(HfApi().list_repo_files(repo_id, revision=revision))
    except (HfHubHTTPError, OSError, *transfer_errors()):
        return None  # snapshot_download reports the real reason (not found, gated, offline)


def _first_present(repo_id: str, folder: str, names: tuple[str, ...], files: set[str] | None) -> list[str]:
    """Patterns for the first of ``names`` the repo has; all of them when the list is unknown (offline)."""
    if files is None:
        return [f"{folder}/{name}" for name in names]
    for name in names:
        if f"{folder}/{name}" in files:
            return [f"{folder}/{name}"]
    raise UnknownLayoutError(f"{repo_id}: {folder}/ holds none of the weights files {list(names)}")


@dataclass(frozen=True)
class Snapshot:
    """A resolved repository: its local snapshot folder, commit and layout ("openhart" or "released")."""

    repo_id: str
    folder: Path
    commit: str
    layout: str


def resolve_snapshot(repo_id: str, revision: str | None = None) -> Snapshot:
    """Fetch the repository's config files only and tell its layout (weights come later, if needed)."""
    folder = download(repo_id, CONFIG_PATTERNS, revision)
    if (folder / "model_index.json").is_file():
        layout = "openhart"
    elif (folder / "llm" / "config.json").is_file() and (folder / "tokenizer" / "config.json").is_file():
        layout = "released"
    else:
        raise UnknownLayoutError(
            f"{repo_id}: neither an OpenHART model (model_index.json) nor the released HART layout "
            "(llm/config.json + tokenizer/config.json)"
        )
    return Snapshot(repo_id, folder, folder.name, layout)


def text_model_folder(spec: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A transformers text model (the Qwen2 encoder) as a local folder: an existing folder or a repo id."""
    if Path(spec).is_dir():
        return Path(spec)
    name = os.fspath(spec)
    if not looks_like_repo_id(name):
        raise FileNotFoundError(f"text_encoder: no such folder, and not a Hugging Face repo id: {name!r}")
    files = _repo_files(name, revision)
    patterns = list(TEXT_MODEL_PATTERNS)
    if files is not None and not any(f.endswith(".safetensors") for f in files):
        patterns.append("*.bin")  # an old repository without safetensors
    folder = download(name, patterns, revision)
    if not (folder / "config.json").is_file():
        raise UnknownLayoutError(f"{name}: no config.json, not a transformers text model")
    return folder


def converted_folder(snapshot: Snapshot, prefer_ema: bool) -> Path:
    """The cache folder of one conversion: repository, commit and weights choice."""
    repo = snapshot.repo_id.replace("/", "--")
    return converted_cache_dir() / repo / f"{snapshot.commit}-{'ema' if prefer_ema else 'main'}"


def load_from_hub(
    repo_id: str,
    *,
    revision: str | None = None,
    text_encoder: TextEncoder | str | os.PathLike[str] | None = None,
    prefer_ema: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HartPipeline:
    """A pipeline from a Hub repository of either layout (see the module docstring)."""
    from openhart.models.hart import HartPipeline

    snapshot = resolve_snapshot(repo_id, revision)
    if snapshot.layout == "openhart":
        folder = download(repo_id, OPENHART_PATTERNS, snapshot.commit)
        encoder = _text_encoder_object(text_encoder) if text_encoder is not None else None
        return HartPipeline.from_pretrained(folder, device=device, dtype=dtype, text_encoder=encoder)

    encoder = _released_text_encoder(snapshot, text_encoder, dtype)
    converted = converted_folder(snapshot, prefer_ema)
    if not (converted / "model_index.json").is_file():
        convert_released(snapshot, encoder, prefer_ema, converted)
    else:
        logger.info("%s: reading the converted weights in %s", repo_id, converted)
    return HartPipeline.from_pretrained(converted, device=device, dtype=dtype, text_encoder=encoder)


def download_released(snapshot: Snapshot, prefer_ema: bool) -> Path:
    """The released layout's configs and one weights file per component (the one the loader reads)."""
    files = _repo_files(snapshot.repo_id, snapshot.commit)
    patterns = [
        *CONFIG_PATTERNS,
        *_first_present(
            snapshot.repo_id, "llm", RELEASED_LLM_WEIGHTS if prefer_ema else RELEASED_LLM_WEIGHTS[1:], files
        ),
        *_first_present(snapshot.repo_id, "tokenizer", RELEASED_TOKENIZER_WEIGHTS, files),
    ]
    return download(snapshot.repo_id, patterns, snapshot.commit)


def convert_released(snapshot: Snapshot, encoder: TextEncoder, prefer_ema: bool, destination: Path) -> None:
    """Download the released weights, read the pickles once and write the OpenHART layout atomically.

    The folder is written under a temporary name beside ``destination`` and renamed when whole, so
    an interrupted conversion (disk full, Ctrl-C) leaves nothing that a later load would trust.
    """
    from openhart.compat.loading import load_official_tokenizer, load_official_transformer
    from openhart.models.hart import HartPipeline

    folder = download_released(snapshot, prefer_ema)
    logger.info("%s: converting the released checkpoint once into %s", snapshot.repo_id, destination)
    try:
        tokenizer = load_official_tokenizer(folder / "tokenizer")
        transformer, head = load_official_transformer(folder / "llm", tokenizer.config, prefer_ema=prefer_ema)
    except FileNotFoundError as error:
        raise ModelNotCachedError(
            f"{snapshot.repo_id}: weights missing from the snapshot {folder} ({error}); "
            "unset HF_HUB_OFFLINE to download them"
        ) from error
    pipeline = HartPipeline(encoder, tokenizer, transformer, head)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination.parent, prefix=f".{destination.name}."))
    try:
        pipeline.save_pretrained(staging)
        if destination.exists():  # another process converted meanwhile: keep one
            shutil.rmtree(staging)
        else:
            os.replace(staging, destination)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadFailedError(
            f"{snapshot.repo_id}: writing the converted weights to {destination.parent} failed "
            f"({write_failure_reason(error)}); nothing partial was kept, rerun to convert again"
        ) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _text_encoder_object(text_encoder: TextEncoder | str | os.PathLike[str]) -> TextEncoder:
    """A ready encoder, or a saved OpenHART text encoder folder."""
    from openhart.text import TextEncoder, load_text_encoder

    if isinstance(text_encoder, TextEncoder):
        return text_encoder
    return load_text_encoder(text_encoder)


def _released_text_encoder(
    snapshot: Snapshot, text_encoder: TextEncoder | str | os.PathLike[str] | None, dtype: torch.dtype | None
) -> TextEncoder:
    """The released prompt encoding with the given (or the default Qwen2) text model, sized by llm/config.json."""
    from openhart.compat.loading import official_text_encoder_config
    from openhart.text import TextEncoder, build_text_encoder
    from openhart.utils.config import read_json

    if isinstance(text_encoder, TextEncoder):
        return text_encoder
    llm = read_json(snapshot.folder / "llm" / "config.json")
    folder = text_model_folder(text_encoder if text_encoder is not None else DEFAULT_TEXT_ENCODER_REPO)
    return build_text_encoder(
        official_text_encoder_config(
            folder,
            max_length=int(llm.get("context_token", 300)),
            hidden_size=int(llm.get("context_dim", 1536)),
        ),
        dtype=dtype,  # read the 1.5 B Qwen2 in the pipeline's dtype, not float32 first
    )
