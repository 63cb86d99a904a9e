"""``openhart synthesize`` across real processes: torchrun (gloo) against one process, a SIGKILL and
a rerun, and a process whose files may not grow (a full output folder)."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.test_synthesize import (
    ONE_STEP,
    PROMPTS_TXT,
    ROOT,
    _files,
    _metadata,
    _module_command,
    _restore_torch_threads,  # noqa: F401  (autouse fixture)
    _subprocess_env,
    _synth,
)


@pytest.fixture
def txt_prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS_TXT)
    return path


# ---------------------------------------------------------------------- processes: torchrun and kill
def _torchrun(prompts: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        command + _module_command(prompts, out, *args, fast=ONE_STEP),  # threads: the default split
        cwd=ROOT,
        env=_subprocess_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.mark.parametrize("output_format", ["folder", "webdataset"])
def test_two_torchrun_processes_write_the_same_bytes_as_one(tmp_path, txt_prompts, output_format):
    args = ("--images-per-prompt", "2", "--batch-size", "2", "--shard-size", "4", "--format", output_format)
    single = tmp_path / "single"
    assert _synth(txt_prompts, single, *args).exit_code == 0
    double = tmp_path / "double"
    result = _torchrun(txt_prompts, double, *args)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "1 CPU thread(s) per process" in result.stderr  # 2 cores split over 2 ranks
    assert "images/s per process: rank 0" in result.stdout and ", rank 1 " in result.stdout
    assert "done 10/10 images (10 made now" in result.stdout
    # Rank 0's bar counts both ranks' images (rank 1's through its progress file).
    assert "10/10" in result.stderr and "img/s" in result.stderr and "dataset ~" in result.stderr
    assert not (double / ".synthesis").exists()
    assert _files(double) == _files(single)
    assert len(_files(single)) == (10 if output_format == "folder" else 3)
    if output_format == "folder":
        assert (double / "metadata.jsonl").read_bytes() == (single / "metadata.jsonl").read_bytes()
    summary = json.loads((double / "synthesis.json").read_text())["summary"]
    assert summary["world_size"] == 2 and all(r["written"] > 0 for r in summary["per_rank"])


def test_a_killed_job_rerun_finishes_with_the_uninterrupted_set(tmp_path):
    prompts = tmp_path / "many.txt"
    prompts.write_text("".join(f"shape number {n}\n" for n in range(40)))
    args = ("--batch-size", "1")
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, *_module_command(prompts, killed, *args)],
        cwd=ROOT,
        env=_subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(killed.rglob("*.png"))) < 5 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    interrupted = len(list(killed.rglob("*.png")))
    assert 5 <= interrupted < 40, "the job was not killed midway"
    assert not (killed / "metadata.jsonl").exists()

    rerun = subprocess.run(
        [sys.executable, *_module_command(prompts, killed, *args, "--no-progress")],
        cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"done 40/40 images ({40 - interrupted} made now, {interrupted} already there)" in rerun.stdout
    whole = tmp_path / "whole"
    assert _synth(prompts, whole, *args).exit_code == 0
    assert _files(killed) == _files(whole)
    assert _metadata(killed) == _metadata(whole)
    assert not list(killed.rglob("*.tmp"))
    for path in killed.rglob("*.png"):
        with Image.open(path) as image:
            image.load()  # every file decodes in full


# ---------------------------------------------------------------------- output folders that refuse writes
def _run_limited(prompts: Path, out: Path, preexec) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *_module_command(prompts, out, "--no-progress")],
        cwd=ROOT, env=_subprocess_env(), capture_output=True, text=True, timeout=120, check=False,
        preexec_fn=preexec,
    )  # fmt: skip


def test_a_full_output_folder_is_a_clear_error_and_leaves_no_partial_file(tmp_path, txt_prompts):
    # A real kernel limit: files may not grow past 2 kB (EFBIG), as writes fail on a full disk.
    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))

    out = tmp_path / "out"
    result = _run_limited(txt_prompts, out, small_files)
    assert result.returncode == 6, result.stderr[-3000:]  # StorageError
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("Error: cannot write") and "output folder is full" in message
    assert "Traceback" not in result.stderr
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.png"))
