"""LoRA adapters: training lowers HART's loss with the base untouched; scale 0 is the base; fused
equals unfused; save/load and resume are exact; adapters refuse another base; bad input is named.

Everything runs a perturbed `tiny` pipeline saved to a folder (the "trained base") and a folder
of eight 32-px images with same-name .txt captions.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("peft")

from conftest import generators, make_tiny_pipeline
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file

from openhart.cli import app
from openhart.errors import ConfigError, InvalidInputError, ModelLoadError
from openhart.models.hart import HartPipeline
from openhart.models.lora import ADAPTER_WEIGHTS, parse_lora_spec, weights_fingerprint
from openhart.training.batches import collate_samples
from openhart.training.checkpoint import latest_checkpoint
from openhart.training.lora_recipe import load_lora_recipe
from openhart.training.lora_trainer import LoraTrainer
from openhart.training.recipe import RecipeError

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220)}
PROMPTS = ["sks a red square", "sks a blue square"]


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("base") / "tiny-base"
    make_tiny_pipeline(seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Eight white 32-px images, each with one coloured square, and same-name .txt captions."""
    folder = tmp_path_factory.mktemp("data") / "squares"
    folder.mkdir()
    generator = torch.Generator().manual_seed(0)
    for index in range(8):
        colour = list(COLOURS)[index % 2]
        side, x, y = (int(v) for v in torch.randint(8, 16, (3,), generator=generator))
        image = Image.new("RGB", (32, 32), "white")
        image.paste(COLOURS[colour], (x, y, min(32, x + side), min(32, y + side)))
        image.save(folder / f"{colour}-{index}.png")
        (folder / f"{colour}-{index}.txt").write_text(f"a {colour} square", encoding="utf-8")
    return folder


def recipe(out: Path, base: Path, data: Path, *overrides: str, **values):
    settings = {
        "model": str(base),
        "data.train": {"type": "imagefolder", "root": str(data)},
        "run.out_dir": str(out),
        "trigger": "sks",
        "data.batch_size": 4,
        "optim.max_steps": 8,
        "optim.lr": 2e-2,
        "optim.warmup_steps": 1,
        "run.log_every": 1,
        "run.checkpoint_every": 0,
        "run.sample_every": 0,
        "run.progress": False,
        "run.deterministic": True,
        **values,
    }
    return load_lora_recipe(None, list(overrides), settings)


def images(pipeline: HartPipeline) -> torch.Tensor:
    return pipeline(PROMPTS, guidance_scale=2.0, generator=generators(0, 1), output_type="pt").images


@pytest.fixture(scope="module")
def trained(tmp_path_factory, base_dir, data_dir):
    """One 8-step run: (trainer, loss before, loss after, frozen weights before training)."""
    trainer = LoraTrainer(recipe(tmp_path_factory.mktemp("run") / "lora", base_dir, data_dir))
    batch = collate_samples([trainer.dataset[i] for i in range(8)])
    before = trainer.evaluate(batch)["loss"]
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    result = trainer.train()
    assert result.finished
    return trainer, before, trainer.evaluate(batch)["loss"], frozen


# ---------------------------------------------------------------------- training
def test_training_lowers_the_loss_and_leaves_every_base_weight_bit_unchanged(trained, base_dir):
    trainer, before, after, frozen = trained
    assert after < 0.95 * before, (before, after)
    now = dict(trainer.model.named_parameters())
    assert frozen and all(torch.equal(now[name], value) for name, value in frozen.items())
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    # The captions carry the trigger word; the base pipeline's files are those it started from.
    assert trainer.dataset[0]["caption"].startswith("sks a ")
    assert weights_fingerprint(HartPipeline.from_pretrained(base_dir)) == trainer.base_record.weights_sha256


def test_adapter_is_peft_format_and_under_a_tenth_of_the_base_at_rank_8(trained, base_dir):
    trainer, *_ = trained
    final = trainer.out_dir / "final"
    assert {"adapter_config.json", ADAPTER_WEIGHTS, "openhart_base.json"} <= {p.name for p in final.iterdir()}
    base_bytes = sum(p.stat().st_size for p in base_dir.rglob("*.safetensors"))
    assert (final / ADAPTER_WEIGHTS).stat().st_size <= 0.10 * base_bytes


def test_saved_adapter_reproduces_the_trained_model_exactly(trained, base_dir):
    trainer, *_ = trained
    trainer.model.eval()
    try:
        live = images(trainer.pipeline)
    finally:
        trainer.model.train()
    pipeline = HartPipeline.from_pretrained(base_dir)
    pipeline.load_lora(trainer.out_dir)  # a training run's folder resolves to its final/
    assert torch.equal(images(pipeline), live)
    saved = load_file(trainer.out_dir / "final" / ADAPTER_WEIGHTS)
    trained_weights = get_peft_model_state_dict(trainer.model, save_embedding_layers=False)
    assert saved.keys() == trained_weights.keys()
    assert all(torch.equal(saved[k], trained_weights[k]) for k in saved)


def test_scale_zero_is_the_base_fused_equals_unfused_and_unload_restores(trained, base_dir):
    trainer, *_ = trained
    pipeline = HartPipeline.from_pretrained(base_dir)
    base = images(pipeline)
    name = pipeline.load_lora(trainer.out_dir / "final", scale=0.0)
    assert torch.equal(images(pipeline), base)
    pipeline.set_lora_scale(name, 1.0)
    adapted = images(pipeline)
    assert (adapted - base).abs().max() > 1e-3  # the adapter does something
    pipeline.fuse_lora()
    # Measured: 0 on this CPU; fusing reorders one float sum per layer, which may move a pixel.
    assert (images(pipeline) - adapted).abs().max() <= 1e-4
    pipeline.unfuse_lora()
    pipeline.unload_lora()
    assert (images(pipeline) - base).abs().max() <= 1e-4
    assert not any("lora_" in n for n, _ in pipeline.transformer.named_parameters())
    assert all(p.requires_grad for p in pipeline.transformer.parameters())  # as loaded, trainable again


def test_resume_ends_with_the_same_adapter(tmp_path, base_dir, data_dir):
    whole = LoraTrainer(recipe(tmp_path / "whole", base_dir, data_dir))
    whole.train()
    first = LoraTrainer(recipe(tmp_path / "parts", base_dir, data_dir))
    first.train(stop_at_step=3)
    assert latest_checkpoint(tmp_path / "parts").name == "step-0000003"
    second = LoraTrainer(recipe(tmp_path / "parts", base_dir, data_dir), resume=True)
    assert second.step == 3
    assert second.train().steps == 8
    a, b = whole.trained_weights(), second.trained_weights()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_checkpointing_gives_the_same_steps(tmp_path, base_dir, data_dir):
    plain = LoraTrainer(recipe(tmp_path / "plain", base_dir, data_dir, **{"optim.max_steps": 2}))
    plain.train()
    recomputed = LoraTrainer(
        recipe(
            tmp_path / "ckpt", base_dir, data_dir, **{"optim.max_steps": 2, "gradient_checkpointing": True}
        )
    )
    assert recomputed.pipeline.transformer.gradient_checkpointing
    recomputed.train()
    a, b = plain.trained_weights(), recomputed.trained_weights()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


# ---------------------------------------------------------------------- loading and errors
def test_an_adapter_on_another_base_is_refused_naming_both(trained):
    trainer, *_ = trained
    other = make_tiny_pipeline(seed=1)
    with pytest.raises(ModelLoadError) as error:
        other.load_lora(trainer.out_dir, base_name="other-model")
    message = str(error.value)
    assert str(trainer.recipe.model) in message and "other-model" in message


@pytest.mark.parametrize(
    ("values", "overrides", "field"),
    [
        ({"lora.rank": 0}, (), "lora.rank"),
        ({"lora.targets": ["attention", "(unclosed"]}, (), "lora.targets"),
        ({}, ("optim.ema_decay=0.99",), "optim.ema_decay"),
        ({}, ("lora.nonsense=1",), "lora.nonsense"),
        ({"data.train": {}}, (), "data.train"),
    ],
)
def test_bad_recipes_name_the_field(tmp_path, base_dir, data_dir, values, overrides, field):
    with pytest.raises(RecipeError, match=field.replace(".", r"\.")):
        recipe(tmp_path / "r", base_dir, data_dir, *overrides, **values)


def test_bad_folders_targets_and_specs_get_named_errors(tmp_path, base_dir, data_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InvalidInputError, match="no usable images"):
        LoraTrainer(recipe(tmp_path / "a", base_dir, empty))
    with pytest.raises(InvalidInputError, match="missing-folder"):
        LoraTrainer(recipe(tmp_path / "b", base_dir, tmp_path / "missing-folder"))
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        LoraTrainer(recipe(tmp_path / "c", base_dir, data_dir, **{"data.batch_size": 16}))
    with pytest.raises(ConfigError, match=r"lora.targets: .transformer.*nothing. matches no linear"):
        LoraTrainer(recipe(tmp_path / "d", base_dir, data_dir, **{"lora.targets": [r"transformer\.nothing"]}))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        LoraTrainer(recipe(tmp_path / "e", tmp_path / "no-such-model", data_dir))
    with pytest.raises(ModelLoadError, match=r"no adapter_config\.json"):
        make_tiny_pipeline().load_lora(data_dir)
    assert parse_lora_spec("runs/a:0.5") == ("runs/a", 0.5)
    assert parse_lora_spec("runs/a") == ("runs/a", 1.0)


def test_generate_and_merge_commands_use_the_adapter(trained, base_dir, tmp_path):
    trainer, *_ = trained
    runner = CliRunner()
    out = tmp_path / "img.png"
    args = ["generate", PROMPTS[0], "--model", str(base_dir), "--seed", "0", "-o", str(out)]
    result = runner.invoke(app, [*args, "--lora", f"{trainer.out_dir}:1.0"])
    assert result.exit_code == 0, result.output
    merged = tmp_path / "merged"
    result = runner.invoke(app, ["lora", "merge", str(base_dir), str(trainer.out_dir), str(merged)])
    assert result.exit_code == 0, result.output
    fused = HartPipeline.from_pretrained(base_dir)
    fused.load_lora(trainer.out_dir)
    expected = images(fused)
    assert (images(HartPipeline.from_pretrained(merged)) - expected).abs().max() <= 1e-4
    other = tmp_path / "other"
    make_tiny_pipeline(seed=1).save_pretrained(other)
    result = runner.invoke(app, [*args[:3], str(other), *args[4:], "--lora", str(trainer.out_dir)])
    assert result.exit_code == ModelLoadError.exit_code and str(other) in result.output
    if importlib.util.find_spec("uvicorn") is not None:  # serve checks its adapters before serving
        result = runner.invoke(app, ["serve", "--model", str(other), "--lora", str(trainer.out_dir)])
        assert result.exit_code == ModelLoadError.exit_code and str(other) in result.output
    train = ["train", "lora", "--model", str(base_dir), "--data", str(tmp_path), "--out", str(tmp_path / "x")]
    result = runner.invoke(app, [*train, "--set", "lora.rank=0"])
    assert result.exit_code == ConfigError.exit_code and "lora.rank" in result.output


def test_the_contract_command_trains_in_a_subprocess(tmp_path, base_dir, data_dir):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "openhart", "train", "lora", "--model", str(base_dir)]
    command += ["--data", str(data_dir), "--out", str(out), "--max-steps", "3", "--trigger", "sks"]
    command += ["--batch-size", "4", "--sample-every", "3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished at step 3" in done.stdout
    assert (out / "final" / ADAPTER_WEIGHTS).is_file() and (out / "samples" / "step-0000003.png").is_file()
    grid = Image.open(out / "samples" / "step-0000003.png")
    assert grid.size == (32 * 2, 32 * 2)  # two data captions: base row above, adapted row below
