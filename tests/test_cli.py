"""The ``openhart`` command: a real process generating PNGs, and clear errors for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from openhart.cli import app
from openhart.loading import PACKAGED_WEIGHTS
from tests.conftest import make_tiny_pipeline

runner = CliRunner(env={"COLUMNS": "400"})  # no line wrapping in error boxes


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "tiny-model"
    make_tiny_pipeline().save_pretrained(folder)
    return folder


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "openhart", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_generate_in_a_real_process_writes_pngs_and_is_seeded(saved_model, tmp_path):
    out = tmp_path / "fox.png"
    result = _run_cli(
        "generate",
        "a red fox",
        "a cat",
        "--model",
        str(saved_model),
        "--seed",
        "3",
        "--num-images",
        "2",
        "--grid",
        "--dtype",
        "float32",  # bit-equal batch vs single holds in fp32; bf16 GEMMs round per batch size
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    paths = [tmp_path / f"fox-{i:03d}.png" for i in range(4)]
    for path in paths:
        assert path.is_file() and str(path) in result.stdout
        assert Image.open(path).size == (32, 32)
    assert Image.open(tmp_path / "fox-grid.png").size == (64, 64)
    assert "seed 6" in result.stdout  # image i uses seed + i
    # Image 2 of that call ("a cat", seed 5) equals a single call with seed 5.
    single = tmp_path / "single.png"
    result = runner.invoke(
        app,
        [
            "generate",
            "a cat",
            "--model",
            str(saved_model),
            "--seed",
            "5",
            "--dtype",
            "float32",
            "-o",
            str(single),
        ],
    )
    assert result.exit_code == 0, result.output
    # Equal up to rounding: a batch's matmuls may block differently from a single image's (seen
    # on AMD EPYC: ~6e-6 apart in float32), which can move a pixel by one level.
    batch_pixels = np.asarray(Image.open(paths[2]), dtype=np.int16)
    single_pixels = np.asarray(Image.open(single), dtype=np.int16)
    assert np.abs(batch_pixels - single_pixels).max() <= 1
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_info_and_bench(saved_model):
    result = runner.invoke(app, ["info", "hart-0.7b-1024"])
    assert result.exit_code == 0, result.output
    assert "1024 x 1024" in result.output and "695.94 M params" in result.output
    result = runner.invoke(app, ["info", str(saved_model)])
    assert result.exit_code == 0 and "32 x 32" in result.output
    result = runner.invoke(
        app, ["bench", "--model", str(saved_model), "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    )
    assert result.exit_code == 0, result.output
    for stage in (
        "text_encoder",
        "scale_0",
        "scale_5",
        "residual",
        "decode",
        "total",
        "end to end",
        "peak memory",
    ):
        assert stage in result.output
    result = runner.invoke(app, ["bench", "--model", str(saved_model), "--device", "cpu", "--cuda-graphs"])
    assert result.exit_code == 8 and "CUDA graphs need a CUDA device" in result.output  # DependencyError
    tiny_bench = ["bench", "--model", "tiny", "--repeats", "1", "--warmup", "0", "--device", "cpu"]
    result = runner.invoke(app, [*tiny_bench, "--unguided-last-scales", "2"])
    assert result.exit_code == 0 and "unguided_last_scales=2" in result.output, result.output
    result = runner.invoke(app, [*tiny_bench, "--store-last-scale-keys"])
    assert result.exit_code == 0 and "store_last_scale_keys=True" in result.output, result.output
    result = runner.invoke(app, [*tiny_bench, "--unguided-last-scales", "99"])
    assert result.exit_code == 3 and "unguided_last_scales" in result.output  # InvalidInputError
    result = runner.invoke(
        app,
        [
            "bench",
            "--model",
            "tiny",
            "--compare",
            "hart,var",
            "--batch-size",
            "2",
            "--warmup",
            "0",
            "--repeats",
            "1",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "| hart |" in result.output and "| var |" in result.output and "×" in result.output


def test_bench_reports_the_ratio_to_the_official_numbers():
    from openhart.evaluation.benchmark import BenchmarkResult

    result = BenchmarkResult(
        "hart-0.7b-512", "cpu", "bfloat16", 1, 8, 4.5, 1, {"decode": 20.0}, 36.0, end_to_end_seconds=35.0
    )
    assert "16.400 s per call" in result.table() and "0.47x as fast" in result.table()
    fp32 = BenchmarkResult("hart-0.7b-512", "cpu", "float32", 1, 8, 4.5, 1, {}, 40.0, end_to_end_seconds=21.2)
    assert "42.400 s per call" in fp32.table() and "2.00x as fast" in fp32.table()
    other = BenchmarkResult("hart-0.7b-512", "cuda:0", "bfloat16", 2, 8, 4.5, 1, {}, 1.0)
    assert other.official_reference() is None and "official" not in other.table()  # no batch-2 reference


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["--model", "/no/such/folder"], 4, "neither a model folder nor a preset"),  # ModelLoadError
        (["--seed", "-1"], 3, "seed"),  # InvalidInputError: the seed check shared with the library
        (["--guidance-scale", "-1"], 2, "guidance-scale"),  # usage errors: click's own ranges
        (["--steps", "0"], 2, "steps"),
        (["--num-images", "0"], 2, "num-images"),
        (["--device", "tpu"], 2, "device"),
        (["--top-p", "2"], 2, "top-p"),
    ],
)
def test_bad_arguments_exit_with_their_code_and_a_message(saved_model, tmp_path, args, exit_code, message):
    base = ["generate", "a cat", "-o", str(tmp_path / "x.png")]
    if "--model" not in args:
        base += ["--model", str(saved_model)]
    result = runner.invoke(app, base + args)
    assert result.exit_code == exit_code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_non_png_output_is_refused(saved_model, tmp_path):
    result = runner.invoke(
        app, ["generate", "a cat", "--model", str(saved_model), "-o", str(tmp_path / "x.jpg")]
    )
    assert result.exit_code == 3 and "png" in result.output  # InvalidInputError, before the model loads


def test_default_model(tmp_path):
    """Without --model the embedded default is used; until it ships, the error says what to do."""
    result = runner.invoke(app, ["generate", "a cat", "-o", str(tmp_path / "x.png"), "--seed", "0"])
    if (PACKAGED_WEIGHTS / "emoji-64").is_dir():
        assert result.exit_code == 0, result.output
        assert Image.open(tmp_path / "x.png").size == (64, 64)
    else:
        assert result.exit_code == 4  # ModelLoadError
        assert "not trained and shipped yet" in result.output


def test_median_seconds_times_each_call_after_an_untimed_one():
    import time

    import torch

    from openhart.evaluation.benchmark import median_seconds

    durations = iter([0.05, 0.001, 0.03, 0.002])  # the first (untimed) call is the slow one

    def call() -> None:
        time.sleep(next(durations))

    seconds = median_seconds(call, torch.device("cpu"), repeats=3)
    assert 0.002 <= seconds < 0.03  # the median of 1, 30 and 2 ms, whatever the sleep overshoot
