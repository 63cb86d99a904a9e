"""`openhart train diffusion`: the latent-diffusion baseline trained on the shared loop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

pytest.importorskip("diffusers")

from openhart.models import LatentDiffusionPipeline
from openhart.presets import build_pipeline
from openhart.training.batches import collate_samples
from openhart.training.cli import train_app
from openhart.training.diffusion_trainer import DiffusionTrainer
from openhart.training.recipe import RecipeError, recipe_from_dict
from openhart.training.tokenizer_trainer import save_tokenizer
from tests.test_training import SquaresDataset, _max_difference, _weights


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny tokenizer folder (random weights: the baseline only needs it frozen)."""
    folder = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    return save_tokenizer(build_pipeline("tiny", seed=0).tokenizer, folder)


def diffusion_recipe(out_dir: Path, tokenizer_dir: Path, **sections) -> object:
    data = {
        "kind": "diffusion",
        "preset": "tiny",
        "tokenizer_from": str(tokenizer_dir),
        "latent_statistics_images": 16,
        "seed": 0,
        "model": {"condition_dropout": 0.25, "num_inference_steps": 4},
        "data": {"batch_size": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 12, "ema_decay": 0.9},
        "sampling": {"prompts": ["a red square", "a blue square"], "guidance_scale": 1.0},
        "run": {
            "out_dir": str(out_dir),
            "log_every": 2,
            "checkpoint_every": 0,
            "sample_every": 0,
            "progress": False,
            "deterministic": True,
            "precision": "fp32",  # exact numerics on every CPU; auto is tested on its own
        },
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(data)


def _fixed_loss(trainer: DiffusionTrainer, batch, seed: int = 0) -> float:
    """The live transformer's loss on ``batch`` with fixed timesteps and noise, no condition dropout."""
    trainer.model.eval()
    try:
        with torch.no_grad():
            return float(
                trainer.pipeline.training_loss(
                    batch.images, batch.captions, torch.Generator().manual_seed(seed), condition_dropout=0.0
                )
            )
    finally:
        trainer.model.train()


def test_diffusion_steps_reduce_the_loss_and_save_a_generating_pipeline(tmp_path, tokenizer_dir):
    dataset = SquaresDataset()
    recipe = diffusion_recipe(
        tmp_path / "run", tokenizer_dir, optim={"max_steps": 30}, run={"sample_every": 30}
    )
    trainer = DiffusionTrainer(recipe, dataset=dataset)
    # The latent statistics are those of the dataset's first images: normalised latents are standard.
    z = trainer.pipeline.encode_images(torch.stack([dataset[i]["image"] for i in range(16)]))
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-3
    batch = collate_samples([dataset[i] for i in range(8)])
    before = _fixed_loss(trainer, batch)
    result = trainer.train()
    after = _fixed_loss(trainer, batch)
    assert result.finished
    assert after < 0.7 * before, (before, after)
    assert (tmp_path / "run" / "samples" / "step-0000030.png").is_file()

    # final/ is a LatentDiffusionPipeline folder with the EMA transformer and the latent statistics.
    loaded = LatentDiffusionPipeline.from_pretrained(result.model_dir)
    assert _max_difference(_weights(loaded.transformer), _weights(trainer.ema.module)) == 0.0
    assert loaded.config == trainer.pipeline.config
    images = loaded(
        "a red square", generator=torch.Generator().manual_seed(0), num_inference_steps=3, output_type="pt"
    ).images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_diffusion_resume_ends_with_the_same_weights_and_ema(tmp_path, tokenizer_dir):
    dataset = SquaresDataset(20)
    whole = DiffusionTrainer(diffusion_recipe(tmp_path / "whole", tokenizer_dir), dataset=dataset)
    whole.train()
    first = DiffusionTrainer(diffusion_recipe(tmp_path / "parts", tokenizer_dir), dataset=dataset)
    first.train(stop_at_step=7)
    second = DiffusionTrainer(
        diffusion_recipe(tmp_path / "parts", tokenizer_dir), dataset=dataset, resume=True
    )
    result = second.train()
    assert result.finished and result.steps == 12
    assert _max_difference(_weights(whole.model), _weights(second.model)) <= 1e-6
    assert _max_difference(whole.ema.state_dict(), second.ema.state_dict()) <= 1e-6
    assert second.pipeline.config == whole.pipeline.config


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"num_layers": 0}}, "model: LatentDiffusionConfig.num_layers"),
        ({"model": {"sampler": "heun"}}, "model: LatentDiffusionConfig.sampler"),
        ({"tokenizer_from": None}, "tokenizer_from"),
        ({"latent_statistics_images": 1}, "latent_statistics_images"),
        ({"preset": "huge"}, "preset"),
    ],
)
def test_bad_diffusion_recipe_values_name_the_field(tmp_path, change, message):
    with pytest.raises(RecipeError, match=message):
        diffusion_recipe(tmp_path, tmp_path, **change)


def test_cli_refuses_a_recipe_of_another_kind(tmp_path):
    root = Path(__file__).resolve().parents[1]
    result = CliRunner().invoke(
        train_app, ["diffusion", "--config", str(root / "configs" / "tiny-generator.yaml")]
    )
    assert result.exit_code == 5  # ConfigError
    assert "this command trains a diffusion" in result.output
