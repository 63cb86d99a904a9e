"""``openhart.load``: one name means one model in every command, random weights only when asked."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import openhart
from openhart.errors import ModelLoadError
from openhart.evaluation.evaluate import load_for_evaluation
from openhart.loading import PACKAGED_WEIGHTS
from openhart.models import HartPipeline, LatentDiffusionPipeline, VarOnlyPipeline
from openhart.presets import build_diffusion_baseline, build_pipeline

SHIPPED = PACKAGED_WEIGHTS / "emoji-64"
needs_shipped = pytest.mark.skipif(
    not SHIPPED.is_dir(), reason="the embedded emoji-64 weights are not in this tree"
)

# Pixels (row, column, channel) and their 0-255 values for the tiny preset's random weights
# (seed 0), prompts ["a red apple", "a blue car"], generator seed 7, recorded with the code
# before the models moved into openhart/models/: the move changed no number.
PIXELS = [(0, 0, 0), (5, 7, 1), (13, 2, 2), (31, 31, 0), (20, 40, 1), (60, 3, 2), (63, 63, 1), (40, 12, 0)]
TINY_PIXELS = [[127, 143, 165, 119, 127, 164, 127, 137], [130, 200, 172, 123, 120, 123, 123, 106]]
TINY_MEANS = [128.52766927083334, 128.32779947916666]


def _probe(pipeline: HartPipeline, prompts: list[str], seed: int) -> tuple[list[list[int]], list[float]]:
    images = pipeline(prompts, generator=torch.Generator().manual_seed(seed), output_type="np").images
    levels = np.round(images * 255).astype(np.int64)
    last = levels.shape[1] - 1  # tiny images are smaller than some probed positions: clipped
    pixels = [[int(image[min(y, last), min(x, last), c]) for y, x, c in PIXELS] for image in levels]
    return pixels, [float(image.mean()) for image in levels]


def test_tiny_images_are_unchanged_by_the_move():
    pixels, means = _probe(
        openhart.load("tiny", random_weights=True, seed=0), ["a red apple", "a blue car"], 7
    )
    # One level of slack: another CPU may round a float32 sum differently.
    assert np.abs(np.array(pixels) - np.array(TINY_PIXELS)).max() <= 1
    assert np.allclose(means, TINY_MEANS, atol=0.05)


def test_a_preset_means_its_trained_weights_and_random_only_when_asked(caplog):
    with pytest.raises(ModelLoadError, match=r"no trained weights.*random_weights=True"):
        openhart.load("tiny")
    with caplog.at_level("WARNING"):
        random = openhart.load("tiny", random_weights=True, seed=3)
    assert "RANDOM weights" in caplog.text
    reference = build_pipeline("tiny", seed=3)
    assert torch.equal(random.transformer.head.weight, reference.transformer.head.weight)


@needs_shipped
def test_eval_and_generate_load_the_same_shipped_weights():
    shipped = HartPipeline.from_pretrained(SHIPPED)
    by_name = openhart.load("emoji-64")
    evaluated, variant = load_for_evaluation("emoji-64")
    assert variant == "hart"
    for name, tensor in shipped.transformer.state_dict().items():
        assert torch.equal(tensor, by_name.transformer.state_dict()[name]), name
        assert torch.equal(tensor, evaluated.transformer.state_dict()[name]), name
    var, variant = load_for_evaluation("emoji-64", "var")
    assert variant == "var" and isinstance(var, VarOnlyPipeline)
    assert torch.equal(var.transformer.head.weight, shipped.transformer.head.weight)


def test_folders_of_either_kind_and_kind_mismatches(tmp_path):
    hart = build_pipeline("tiny", seed=0)
    hart.save_pretrained(tmp_path / "hart")
    build_diffusion_baseline("tiny", seed=0, hart=hart).save_pretrained(tmp_path / "diffusion")
    assert isinstance(openhart.load(tmp_path / "hart"), HartPipeline)
    assert isinstance(openhart.load(tmp_path / "diffusion"), LatentDiffusionPipeline)
    assert isinstance(openhart.load(str(tmp_path / "diffusion"), kind="diffusion"), LatentDiffusionPipeline)
    with pytest.raises(ModelLoadError, match="asked for a 'hart' model, but it holds a 'diffusion' one"):
        openhart.load(tmp_path / "diffusion", kind="hart")
    with pytest.raises(ModelLoadError, match="asked for a 'diffusion' model"):
        openhart.load(tmp_path / "hart", kind="diffusion")
    baseline = openhart.load("tiny", kind="diffusion", random_weights=True)
    assert isinstance(baseline, LatentDiffusionPipeline)
    with pytest.raises(ModelLoadError, match="no trained latent-diffusion baseline"):
        openhart.load("emoji-64", kind="diffusion")


@pytest.mark.parametrize(
    ("name", "kwargs", "message"),
    [
        ("no-such-model", {}, "neither a model folder nor a preset"),
        ("", {}, "neither a model folder nor a preset"),
        ("tiny", {"kind": "vae"}, "kind must be one of"),
        ("tiny", {"random_weights": "yes"}, "random_weights must be a bool"),
    ],
)
def test_bad_names_and_arguments_are_named(name, kwargs, message):
    with pytest.raises(ModelLoadError, match=message):
        openhart.load(name, **kwargs)


def test_from_pretrained_reads_our_layout_only_and_points_to_load(tmp_path):
    (tmp_path / "llm").mkdir()
    with pytest.raises(FileNotFoundError, match=r"openhart\.load\(\)"):
        HartPipeline.from_pretrained(tmp_path)
