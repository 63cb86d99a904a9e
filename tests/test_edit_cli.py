"""``openhart edit``: a real process editing PNGs, and a table of bad inputs, each exiting with code 2."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from openhart.cli import app
from tests.conftest import make_tiny_pipeline

runner = CliRunner(env={"COLUMNS": "400"})  # no line wrapping in error boxes


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edit-cli")
    model = root / "tiny-model"
    make_tiny_pipeline().save_pretrained(model)
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # not the model's 32 px
    Image.fromarray(pixels).save(root / "in.png")
    mask = np.zeros((40, 48), np.uint8)
    mask[10:30, 12:36] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(mask[:32, :32]).save(root / "small-mask.png")
    data = (root / "in.png").read_bytes()
    (root / "truncated.png").write_bytes(data[: len(data) // 2])
    (root / "text.png").write_text("not an image")
    frames = [Image.fromarray(pixels), Image.fromarray(255 - pixels)]
    frames[0].save(root / "animated.png", save_all=True, append_images=frames[1:])
    Image.fromarray(pixels).convert("CMYK").save(root / "cmyk.jpg")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="GIF")
    (root / "gif-named.png").write_bytes(buffer.getvalue())
    return {"root": root, "model": model, "image": root / "in.png", "mask": root / "mask.png"}


def test_edit_in_a_real_process_keeps_the_outside_and_is_seeded(files, tmp_path):
    args = ["edit", "a red hat", "--image", str(files["image"]), "--mask", str(files["mask"])]
    args += ["--model", str(files["model"]), "--seed", "4", "--feather", "2"]
    result = subprocess.run(
        [sys.executable, "-m", "openhart", *args, "-o", str(tmp_path / "a.png")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "seed 4" in result.stdout
    edited = np.asarray(Image.open(tmp_path / "a.png"))
    source = np.asarray(Image.open(files["image"]))
    assert edited.shape == source.shape  # the input's size is restored
    outside = np.ones((40, 48), bool)
    outside[8:32, 10:38] = False  # the mask grown by the 2 px seam
    assert np.array_equal(edited[outside], source[outside])
    assert not np.array_equal(edited[12:28, 14:34], source[12:28, 14:34])
    again = runner.invoke(app, [*args, "-o", str(tmp_path / "b.png")])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_outpaint_and_variations(files, tmp_path):
    base = ["--image", str(files["image"]), "--model", str(files["model"]), "--seed", "0"]
    result = runner.invoke(
        app, ["edit", "a beach", *base, "--outpaint", "left=8,bottom=4", "-o", str(tmp_path / "o.png")]
    )
    assert result.exit_code == 0, result.output
    wide = np.asarray(Image.open(tmp_path / "o.png"))
    assert wide.shape == (44, 56, 3)
    source = np.asarray(Image.open(files["image"]))
    assert np.array_equal(wide[:39, 9:], source[:39, 1:])  # the input, away from the 1 px seam
    result = runner.invoke(
        app,
        ["edit", "a beach", *base, "--strength", "0.5", "--num-images", "2", "-o", str(tmp_path / "v.png")],
    )
    assert result.exit_code == 0, result.output
    first, second = (np.asarray(Image.open(tmp_path / f"v-{i:03d}.png")) for i in range(2))
    assert first.shape == source.shape and not np.array_equal(first, second)


BAD_INPUTS = [
    (["--image", "{root}/missing.png"], "--image", "no such file"),
    (["--image", "{root}/text.png"], "--image", "not a PNG, JPEG or WebP"),
    (["--image", "{root}/gif-named.png"], "--image", "not a PNG, JPEG or WebP"),
    (["--image", "{root}/truncated.png"], "--image", "truncated"),
    (["--image", "{root}/animated.png"], "--image", "animated"),
    (["--image", "{root}/cmyk.jpg"], "--image", "CMYK"),
    (["--image", "{root}/in.png", "--mask", "{root}/small-mask.png"], "--mask", "differs from the image"),
    (["--image", "{root}/in.png", "--mask", "{root}/text.png"], "--mask", "not a PNG"),
    (["--image", "{root}/in.png", "--outpaint", "up=3"], "--outpaint", "SIDE=PIXELS"),
    (["--image", "{root}/in.png", "--outpaint", "left=-3"], "--outpaint", "SIDE=PIXELS"),
    (["--image", "{root}/in.png", "--outpaint", "left=0"], "--outpaint", "at least one side"),
    (
        ["--image", "{root}/in.png", "--mask", "{root}/mask.png", "--outpaint", "left=3"],
        "--outpaint",
        "not both",
    ),
    (["--image", "{root}/in.png", "--strength", "2"], "--strength", "[0, 1]"),
    (["--image", "{root}/in.png", "--mask-threshold", "1"], "--mask-threshold", "[0, 1)"),
    (["--image", "{root}/in.png", "-o", "{root}/out.jpg"], "--output", "png"),
]


@pytest.mark.parametrize(
    ("args", "option", "message"), BAD_INPUTS, ids=[" ".join(a[-2:]) for a, _, _ in BAD_INPUTS]
)
def test_bad_input_exits_with_its_category_naming_the_option(files, args, option, message):
    args = [a.format(root=files["root"]) for a in args]
    if "-o" not in args:
        args += ["-o", str(files["root"] / "out.png")]
    result = runner.invoke(app, ["edit", "a cat", "--model", str(files["model"]), *args])
    # StorageError (6) for a file that is not there, InvalidInputError (3) for everything else.
    assert result.exit_code == (6 if message == "no such file" else 3), result.output
    assert option in result.output and message in result.output, result.output
    assert not (files["root"] / "out.png").exists()
