"""A model's own sampler defaults (its ``sampler.json``) reach every command that samples it.

A model folder saved with guidance 1.5, temperature 0.7, top-k 5 and residual temperature 0 must be
sampled with those values by ``generate``, ``edit``, ``synthesize``, ``eval`` and ``serve`` when the
user names none, and an option the user does give overrides only itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from openhart.cli import app
from openhart.loading import load
from openhart.sampling import SamplerSettings
from tests.conftest import make_tiny_pipeline
from tests.test_serve import ServerProcess

runner = CliRunner(env={"COLUMNS": "400"})
MODEL_SETTINGS = SamplerSettings(guidance_scale=1.5, temperature=0.7, top_k=5, residual_temperature=0.0)


@pytest.fixture(scope="module")
def tuned_model(tmp_path_factory) -> Path:
    """The tiny model saved with sampler settings of its own."""
    folder = tmp_path_factory.mktemp("sampler-defaults") / "tiny-tuned"
    pipeline = make_tiny_pipeline()
    pipeline.sampler_settings = MODEL_SETTINGS
    pipeline.save_pretrained(folder)
    return folder


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def _expected(folder: Path, prompt: str, seed: int, **overrides: object) -> np.ndarray:
    pipeline = load(str(folder), dtype=torch.float32)
    image = pipeline(prompt, generator=torch.Generator().manual_seed(seed), **overrides).images[0]
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_saved_settings_load_back_and_name_the_defaults(tuned_model):
    pipeline = load(str(tuned_model))
    assert pipeline.sampler_settings == MODEL_SETTINGS
    assert pipeline.default_guidance_scale == 1.5
    assert pipeline.default_num_inference_steps == pipeline.diffusion_head.config.num_inference_steps


def test_generate_uses_the_models_settings_and_an_option_overrides_only_itself(tuned_model, tmp_path):
    def generate(name: str, *options: str) -> np.ndarray:
        out = tmp_path / name
        args = ["generate", "a cat", "--model", str(tuned_model), "--seed", "5", "--dtype", "float32"]
        result = runner.invoke(app, [*args, *options, "-o", str(out)])
        assert result.exit_code == 0, result.output
        return _pixels(out)

    plain = generate("plain.png")
    assert np.array_equal(plain, _expected(tuned_model, "a cat", 5))
    # The command's defaults are the model's: naming them changes nothing.
    assert np.array_equal(plain, generate("named.png", "--guidance-scale", "1.5", "--temperature", "0.7"))
    # --guidance-scale replaces the guidance only: top-k 5 and temperature 0.7 stay.
    louder = generate("louder.png", "--guidance-scale", "4.5")
    assert np.array_equal(louder, _expected(tuned_model, "a cat", 5, guidance_scale=4.5))
    assert not np.array_equal(louder, plain)
    assert not np.array_equal(louder, _expected(tuned_model, "a cat", 5, sampler=SamplerSettings()))
    # --residual-temperature likewise: the head's step noise back at full scale, the rest the model's.
    noisy = generate("noisy.png", "--residual-temperature", "1")
    assert np.array_equal(noisy, _expected(tuned_model, "a cat", 5, residual_temperature=1.0))
    assert not np.array_equal(noisy, plain)


def test_generate_refuses_a_temperature_of_zero_before_loading(tuned_model, tmp_path):
    args = [
        "generate",
        "a cat",
        "--model",
        str(tuned_model),
        "--temperature",
        "0",
        "-o",
        str(tmp_path / "x.png"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "--temperature" in result.output
    assert not (tmp_path / "x.png").exists()


def test_generate_unguided_last_scales_option_reaches_the_call_and_is_checked(tuned_model, tmp_path):
    base = ["generate", "a cat", "--model", str(tuned_model), "--seed", "5", "--dtype", "float32"]
    result = runner.invoke(app, [*base, "--unguided-last-scales", "1", "-o", str(tmp_path / "one.png")])
    assert result.exit_code == 0, result.output
    assert np.array_equal(
        _pixels(tmp_path / "one.png"), _expected(tuned_model, "a cat", 5, unguided_last_scales=1)
    )
    result = runner.invoke(app, [*base, "--unguided-last-scales", "99", "-o", str(tmp_path / "bad.png")])
    assert result.exit_code != 0 and "--unguided-last-scales" in result.output
    assert not (tmp_path / "bad.png").exists()


def test_generate_refuses_a_negative_residual_temperature_before_loading(tmp_path):
    args = ["generate", "a cat", "--residual-temperature", "-0.5", "-o", str(tmp_path / "x.png")]
    result = runner.invoke(app, args)
    assert result.exit_code != 0 and "--residual-temperature" in result.output
    assert not (tmp_path / "x.png").exists()


def test_synthesize_records_the_models_guidance(tuned_model, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red apple\n")
    out = tmp_path / "data"
    args = ["synthesize", "--prompts", str(prompts), "--out", str(out), "--model", str(tuned_model)]
    result = runner.invoke(app, [*args, "--no-progress", "--threads", "1"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert row["guidance_scale"] == 1.5
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert "guidance the model's default" in dry.output


def test_eval_records_the_guidance_and_sampler_it_used(tuned_model):
    from openhart.evaluation.evaluate import evaluate
    from tests.test_evaluation import FIXTURE, PooledPixels

    options = {"adherence_images": 0, "reconstruction_images": 0, "batch_size": 4, "cache_dir": None}
    results = evaluate(str(tuned_model), FIXTURE, 4, extractor=PooledPixels(), progress=False, **options)
    assert results["guidance_scale"] == 1.5
    assert results["sampler"]["temperature"] == 0.7 and results["sampler"]["top_k"] == 5
    named = evaluate(str(tuned_model), FIXTURE, 4, extractor=PooledPixels(), guidance_scale=3.0, **options)
    assert named["guidance_scale"] == 3.0 and named["sampler"]["guidance_scale"] == 3.0


def test_served_model_card_and_requests_default_to_the_models_guidance(tuned_model, tmp_path):
    server = ServerProcess(["--model", str(tuned_model), "--dtype", "float32"], tmp_path / "server.log")
    try:
        card = server.client.get("/api/model").json()
        assert card["defaults"]["guidance_scale"] == 1.5
        schema = server.client.get("/openapi.json").json()
        assert "1.5" in json.dumps(schema)
        answer = server.client.post("/api/generate", json={"prompt": "a cat", "seed": 5})
        assert answer.status_code == 200, answer.text
        assert answer.json()["parameters"]["guidance_scale"] == 1.5
    finally:
        server.stop()
