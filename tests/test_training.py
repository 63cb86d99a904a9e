"""Training: a few steps of each trainer reduce the loss; resume == uninterrupted; torchrun (gloo)
keeps the ranks' weights identical; recipes reject bad values with the field named.

Everything runs the `tiny` preset on an in-memory dataset of coloured squares (32 px).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import Dataset
from typer.testing import CliRunner

from openhart.models.hart import HartPipeline
from openhart.presets import build_pipeline
from openhart.training.batches import collate_samples
from openhart.training.checkpoint import latest_checkpoint
from openhart.training.cli import train_app
from openhart.training.generator_trainer import GeneratorTrainer
from openhart.training.recipe import RecipeError, apply_overrides, load_recipe, recipe_from_dict
from openhart.training.tokenizer_trainer import TokenizerTrainer, load_tokenizer, save_tokenizer

ROOT = Path(__file__).resolve().parents[1]
COLOURS = {"red": (1, -1, -1), "green": (-1, 1, -1), "blue": (-1, -1, 1), "yellow": (1, 1, -1)}


class SquaresDataset(Dataset):
    """``n`` white 32-px images with one coloured square each; captions name the colour."""

    def __init__(self, n: int = 32, size: int = 32, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.samples = []
        for index in range(n):
            colour = list(COLOURS)[index % len(COLOURS)]
            side = int(torch.randint(6, size // 2, (1,), generator=generator))
            x, y = (int(v) for v in torch.randint(0, size - side, (2,), generator=generator))
            image = torch.ones(3, size, size)
            image[:, y : y + side, x : x + side] = torch.tensor(COLOURS[colour], dtype=torch.float32).view(
                3, 1, 1
            )
            self.samples.append(
                {"image": image, "caption": f"a {colour} square", "key": f"square-{index:03d}"}
            )

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return self.samples[index]


def tokenizer_recipe(out_dir: Path, **sections) -> object:
    data = {
        "kind": "tokenizer",
        "preset": "tiny",
        "seed": 0,
        "data": {"batch_size": 8},
        "optim": {"lr": 2e-3, "warmup_steps": 2, "max_steps": 12, "weight_decay": 0.0},
        "loss": {"revive_every": 4},
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


def generator_recipe(out_dir: Path, tokenizer_dir: Path, **sections) -> object:
    data = {
        "kind": "generator",
        "preset": "tiny",
        "tokenizer_from": str(tokenizer_dir),
        "seed": 0,
        "data": {"batch_size": 8},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 12, "ema_decay": 0.9},
        "loss": {"token_subsampling": True, "condition_dropout": 0.25, "diffusion_batch_mul": 2},
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


@pytest.fixture(autouse=True)
def _restore_determinism():
    """Trainers in deterministic mode switch a process-wide torch flag; give it back after each test."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A tiny tokenizer folder (random weights: the generator tests only need it frozen)."""
    folder = tmp_path_factory.mktemp("tokenizer") / "tokenizer"
    return save_tokenizer(build_pipeline("tiny", seed=0).tokenizer, folder)


def _weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


# ---------------------------------------------------------------------- training reduces the loss
def test_tokenizer_steps_reduce_reconstruction_error_and_write_a_loadable_tokenizer(tmp_path):
    dataset = SquaresDataset()
    trainer = TokenizerTrainer(tokenizer_recipe(tmp_path / "run", run={"sample_every": 12}), dataset=dataset)
    images = collate_samples([dataset[i] for i in range(8)]).images
    before = trainer.evaluate(images)
    result = trainer.train()
    after = trainer.evaluate(images)
    assert result.finished and result.steps == 12
    # Both decoder inputs improve: HART's alternation trains the discrete and the hybrid path.
    assert after["psnr_hybrid"] > before["psnr_hybrid"] + 3.0, (before, after)
    assert after["psnr_discrete"] > before["psnr_discrete"] + 3.0, (before, after)
    rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    assert len(rows) == 1 + 6 and {"l2_discrete", "l2_hybrid", "codes_used", "codes_revived"} <= set(header)
    losses = [float(r.split(",")[header.index("loss")]) for r in rows[1:]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "run" / "samples" / "step-0000012.png").is_file()
    loaded = load_tokenizer(tmp_path / "run")  # finds final/
    reloaded = {k: v for k, v in loaded.state_dict().items()}
    assert _max_difference(reloaded, _weights(trainer.model)) == 0.0


def test_dead_codes_are_revived_from_encoder_outputs(tmp_path):
    trainer = TokenizerTrainer(
        tokenizer_recipe(tmp_path / "run", optim={"max_steps": 4}, loss={"revive_every": 2}),
        dataset=SquaresDataset(16),
    )
    codebook_before = trainer.model.quantize.embedding.weight.detach().clone()
    trainer.train()
    # Squares on white use few codes of 128, so revival must have replaced most of the codebook.
    moved = (trainer.model.quantize.embedding.weight.detach() - codebook_before).abs().amax(dim=1) > 1e-3
    assert int(moved.sum()) > 64
    header, *rows = (tmp_path / "run" / "metrics.csv").read_text().strip().splitlines()
    revived = [float(r.split(",")[header.split(",").index("codes_revived")]) for r in rows]
    assert max(revived) > 0


def test_generator_steps_reduce_both_losses_and_save_a_generating_pipeline(tmp_path, tokenizer_dir):
    dataset = SquaresDataset()
    recipe = generator_recipe(
        tmp_path / "run", tokenizer_dir, optim={"max_steps": 15}, run={"sample_every": 15}
    )
    trainer = GeneratorTrainer(recipe, dataset=dataset)
    batch = collate_samples([dataset[i] for i in range(8)])
    before = trainer.evaluate(batch)
    result = trainer.train()
    after = trainer.evaluate(batch)
    assert result.finished
    assert after["ce"] < before["ce"] - 0.5, (before, after)
    assert after["diffusion"] < before["diffusion"], (before, after)
    assert (tmp_path / "run" / "samples" / "step-0000015.png").is_file()

    # final/ is a pipeline folder carrying the EMA weights; it generates images.
    pipeline = HartPipeline.from_pretrained(result.model_dir)
    ema = trainer.ema.module
    assert _max_difference(_weights(pipeline.transformer), _weights(ema.transformer)) == 0.0
    assert _max_difference(_weights(pipeline.diffusion_head), _weights(ema.diffusion_head)) == 0.0
    assert _max_difference(_weights(pipeline.tokenizer), _weights(load_tokenizer(tokenizer_dir))) == 0.0
    images = pipeline("a red square", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_var_only_recipe_trains_the_transformer_and_leaves_the_head(tmp_path, tokenizer_dir):
    dataset = SquaresDataset()
    recipe = generator_recipe(
        tmp_path / "run",
        tokenizer_dir,
        optim={"max_steps": 15},
        loss={"diffusion_weight": 0.0},
        run={"sample_every": 15},
    )
    assert recipe.var_only
    trainer = GeneratorTrainer(recipe, dataset=dataset)
    head_before = _weights(trainer.model.diffusion_head)
    batch = collate_samples([dataset[i] for i in range(8)])
    before = trainer.evaluate(batch)
    trainer.train()
    after = trainer.evaluate(batch)
    assert after["ce"] < before["ce"] - 0.5, (before, after)
    assert _max_difference(head_before, _weights(trainer.model.diffusion_head)) == 0.0
    assert _max_difference(head_before, _weights(trainer.ema.module.diffusion_head)) == 0.0
    assert (tmp_path / "run" / "samples" / "step-0000015.png").is_file()


def test_generator_condition_dropout_and_subsampling_follow_the_recipe(tmp_path, tokenizer_dir):
    trainer = GeneratorTrainer(generator_recipe(tmp_path / "run", tokenizer_dir), dataset=SquaresDataset())
    generator = torch.Generator().manual_seed(0)
    kept = [trainer.subsample_positions(4, generator) for _ in range(50)]
    counts = torch.tensor([p.shape[1] for p in kept], dtype=torch.float)
    assert counts.min() >= 4 and counts.max() <= 32  # 64 last-scale tokens: drop 50–100%, keep ≥ 4
    assert counts.std() > 2  # the fraction is random per step
    assert all(bool((p[:, 1:] > p[:, :-1]).all()) for p in kept)  # distinct, ascending positions
    context, mask = trainer.contexts(["a red square"] * 400)
    context, mask, dropped = trainer.drop_conditions(context, mask, generator)
    assert 0.18 < float(dropped.float().mean()) < 0.32  # condition_dropout 0.25
    empty_context, empty_mask = trainer.pipeline.empty_context(1)
    assert torch.equal(context[dropped], empty_context.expand(int(dropped.sum()), -1, -1))
    assert torch.equal(mask[dropped], empty_mask.expand(int(dropped.sum()), -1))


def test_precomputed_text_features_replace_the_text_encoder(tmp_path, tokenizer_dir, monkeypatch):
    from openhart.text import build_text_encoder
    from openhart.training import text_features

    dataset = SquaresDataset(16)
    recipe = generator_recipe(tmp_path / "run", tokenizer_dir, optim={"max_steps": 2})
    encoder = build_text_encoder(recipe.component_configs()["text_encoder"])
    captions = text_features.collect_captions(dataset) + list(recipe.sampling.prompts)
    assert captions[:4] == ["a blue square", "a green square", "a red square", "a yellow square"]
    features = text_features.precompute_text_features(encoder, captions, tmp_path / "text.safetensors")
    table = text_features.load_text_features(features, encoder.config)
    context, mask = encoder.encode(["a red square"])
    stored_context, stored_mask = table["a red square"]
    assert torch.equal(stored_mask, mask[0])
    # float16 storage of the valid positions; zeros where the prompt is padded.
    assert torch.allclose(stored_context[mask[0]], context[0][mask[0]], atol=1e-3)
    assert stored_context[~mask[0]].abs().max() == 0

    # Without a buildable text encoder the trainer runs on the features alone, samples included.
    def unavailable(config):
        raise ImportError("no weights here")

    monkeypatch.setattr(text_features, "build_text_encoder", unavailable)
    recipe = recipe.replace(text_features=str(features), run=recipe.run.replace(sample_every=2))
    trainer = GeneratorTrainer(recipe, dataset=dataset)
    assert isinstance(trainer.pipeline.text_encoder, text_features.PrecomputedTextEncoder)
    assert trainer.train().finished
    assert (tmp_path / "run" / "samples" / "step-0000002.png").is_file()
    with pytest.raises(ValueError, match="no precomputed text features"):
        trainer.contexts(["an unseen caption"])
    other = encoder.config.replace(seed=7)
    with pytest.raises(ValueError, match="was made with text encoder"):
        text_features.load_text_features(features, other)


# ---------------------------------------------------------------------- resume == uninterrupted
def test_tokenizer_resume_ends_with_the_same_weights(tmp_path):
    # Stops mid usage window (revive_every 4, stop at 6) so the window counts must be resumed too.
    dataset = SquaresDataset(20)  # 2 batches per epoch: the stop falls inside an epoch
    whole = TokenizerTrainer(tokenizer_recipe(tmp_path / "whole"), dataset=dataset)
    whole.train()
    first = TokenizerTrainer(tokenizer_recipe(tmp_path / "parts"), dataset=dataset)
    stopped = first.train(stop_at_step=5)
    assert not stopped.finished and stopped.steps == 5
    with pytest.raises(FileExistsError, match="--resume"):
        TokenizerTrainer(tokenizer_recipe(tmp_path / "parts"), dataset=dataset)
    second = TokenizerTrainer(tokenizer_recipe(tmp_path / "parts"), dataset=dataset, resume=True)
    assert second.step == 5
    second.train()
    assert _max_difference(_weights(whole.model), _weights(second.model)) <= 1e-6
    moments = [whole.optimizer.state[p]["exp_avg"] for p in whole.model.parameters()]
    resumed = [second.optimizer.state[p]["exp_avg"] for p in second.model.parameters()]
    assert max(float((a - b).abs().max()) for a, b in zip(moments, resumed, strict=True)) <= 1e-6
    # The CSV of the resumed run has one row per log step, none duplicated.
    steps = [
        r.split(",")[0] for r in (tmp_path / "parts" / "metrics.csv").read_text().strip().splitlines()[1:]
    ]
    assert steps == [str(s) for s in range(2, 13, 2)]


def test_generator_resume_ends_with_the_same_weights_and_ema(tmp_path, tokenizer_dir):
    dataset = SquaresDataset(20)
    whole = GeneratorTrainer(generator_recipe(tmp_path / "whole", tokenizer_dir), dataset=dataset)
    whole.train()
    first = GeneratorTrainer(generator_recipe(tmp_path / "parts", tokenizer_dir), dataset=dataset)
    first.train(stop_at_step=7)
    second = GeneratorTrainer(
        generator_recipe(tmp_path / "parts", tokenizer_dir), dataset=dataset, resume=True
    )
    result = second.train()
    assert result.finished and result.steps == 12
    assert _max_difference(_weights(whole.model), _weights(second.model)) <= 1e-6
    assert _max_difference(whole.ema.state_dict(), second.ema.state_dict()) <= 1e-6
    assert whole.ema.num_updates == second.ema.num_updates == 12


def test_checkpoints_are_pipeline_folders_and_old_ones_are_pruned(tmp_path, tokenizer_dir):
    recipe = generator_recipe(
        tmp_path / "run",
        tokenizer_dir,
        optim={"max_steps": 6},
        run={"checkpoint_every": 2, "keep_checkpoints": 2},
    )
    GeneratorTrainer(recipe, dataset=SquaresDataset(16)).train()
    folders = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert folders == ["latest.json", "step-0000004", "step-0000006"]
    latest = latest_checkpoint(tmp_path / "run")
    assert latest.name == "step-0000006"
    HartPipeline.from_pretrained(latest / "model")
    state = json.loads((latest / "recipe.json").read_text())
    assert state["kind"] == "generator" and state["optim"]["max_steps"] == 6


# ---------------------------------------------------------------------- torchrun, 2 processes, gloo
DDP_SCRIPT = """
import sys, torch
from pathlib import Path
from safetensors.torch import save_file
from openhart.utils.distributed import init_distributed, cleanup_distributed
from openhart.training.tokenizer_trainer import TokenizerTrainer
from openhart.training.generator_trainer import GeneratorTrainer
from tests.test_training import SquaresDataset, tokenizer_recipe, generator_recipe

out = Path(sys.argv[1])
ctx = init_distributed("cpu")
dataset = SquaresDataset(32)
tok = TokenizerTrainer(tokenizer_recipe(out / "tok", optim={"max_steps": 3}, loss={"revive_every": 2}),
                       dataset=dataset, ctx=ctx)
tok.train()
gen = GeneratorTrainer(generator_recipe(out / "gen", out / "tok", optim={"max_steps": 3}), dataset=dataset, ctx=ctx)
gen.train()
keys = [k for batch in tok.stream.epoch(0) for k in batch.keys]
weights = {"tok." + k: v for k, v in tok.model.state_dict().items()}
weights.update({"gen." + k: v for k, v in gen.model.state_dict().items()})
weights.update({"ema." + k: v for k, v in gen.ema.state_dict().items()})
save_file({k: v.contiguous() for k, v in weights.items()}, str(out / f"rank{ctx.rank}.safetensors"),
          metadata={"keys": ",".join(keys), "world_size": str(ctx.world_size)})
cleanup_distributed()
"""


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(tmp_path),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert time.monotonic() - started < 90
    from safetensors import safe_open

    weights, metadata = [], []
    for rank in range(2):
        path = tmp_path / f"rank{rank}.safetensors"
        weights.append(load_file(str(path)))
        with safe_open(str(path), framework="pt") as handle:
            metadata.append(handle.metadata())
    assert metadata[0]["world_size"] == "2"
    assert _max_difference(weights[0], weights[1]) == 0.0
    # The ranks read disjoint halves of the data (16 each per epoch, 2 batches of 8).
    keys = [set(m["keys"].split(",")) for m in metadata]
    assert len(keys[0]) == len(keys[1]) == 16 and not keys[0] & keys[1]
    # Training moved the weights, and rank 0 wrote the run (checkpoint + CSV) once.
    fresh = build_pipeline("tiny", seed=0)
    assert (
        _max_difference(
            {
                k[len("gen.transformer.") :]: v
                for k, v in weights[0].items()
                if k.startswith("gen.transformer.")
            },
            {k: v for k, v in fresh.transformer.state_dict().items()},
        )
        > 0
    )
    assert HartPipeline.from_pretrained(tmp_path / "gen" / "final").transformer is not None
    rows = (tmp_path / "gen" / "metrics.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "3"]


# ---------------------------------------------------------------------- recipes and the CLI
def test_shipped_recipes_parse():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe.kind in path.name and recipe.preset in path.name, path
        assert recipe.run.out_dir.startswith("runs/"), path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"optim": {"lr": -1}}, "optim.lr"),
        ({"optim": {"lrr": 1}}, r"unknown field\(s\) \['optim.lrr'\]"),
        ({"optim": {"warmup_steps": 50, "max_steps": 10}}, "optim.warmup_steps"),
        ({"optim": {"betas": [0.9]}}, "optim.betas"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"loss": {"discrete_probability": 1.5}}, "loss.discrete_probability"),
        ({"loss": {"l1_weight": 0, "l2_weight": 0}}, "reconstruction weight"),
        ({"run": {"precision": "fp8"}}, "run.precision"),
        ({"run": {"device": "tpu"}}, "run.device"),
        ({"preset": "huge"}, "preset"),
        ({"tokenizer": {"codebook_size": 0}}, "tokenizer: TokenizerConfig.codebook_size"),
        ({"kind": "generator"}, "tokenizer_from"),
        ({"optim": "fast"}, "optim: expected a mapping"),
    ],
)
def test_bad_recipe_values_name_the_field(tmp_path, change, message):
    data = {"kind": "tokenizer", "preset": "tiny", "run": {"out_dir": str(tmp_path)}}
    for key, value in change.items():
        data[key] = (
            {**data[key], **value} if isinstance(data.get(key), dict) and isinstance(value, dict) else value
        )
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loss": {"diffusion_batch_mul": 0}}, "loss.diffusion_batch_mul"),
        ({"loss": {"condition_dropout": 1.0}}, "loss.condition_dropout"),
        ({"loss": {"subsample_drop_min": 0.8, "subsample_drop_max": 0.6}}, "loss.subsample_drop_max"),
        ({"loss": {"self_correction": 1.5}}, "loss.self_correction"),
        ({"loss": {"self_correction_neighbours": 1}}, "loss.self_correction_neighbours"),
        ({"optim": {"ema_decay": 0.0}}, "save_ema"),
        ({"transformer": {"width": 63}}, "transformer"),
        ({"sampling": {"prompts": [1, 2]}}, "sampling.prompts"),
    ],
)
def test_bad_generator_recipe_values_name_the_field(tmp_path, change, message):
    data = {
        "kind": "generator",
        "preset": "tiny",
        "tokenizer_from": str(tmp_path),
        "run": {"out_dir": str(tmp_path)},
    }
    for key, value in change.items():
        data[key] = {**data.get(key, {}), **value}
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict(data)


def test_bad_datasets_and_recipes_are_refused_before_training(tmp_path, tokenizer_dir):
    with pytest.raises(ValueError, match=r"image_size=32"):
        TokenizerTrainer(tokenizer_recipe(tmp_path / "a"), dataset=SquaresDataset(16, size=64)).train()
    with pytest.raises(ValueError, match="fewer than batch_size 8"):
        TokenizerTrainer(tokenizer_recipe(tmp_path / "b"), dataset=SquaresDataset(4))
    with pytest.raises(ValueError, match="'image', 'caption' and 'key'"):
        collate_samples([{"image": torch.zeros(3, 32, 32), "caption": "x"}])
    with pytest.raises(TypeError, match="needs a tokenizer recipe"):
        TokenizerTrainer(generator_recipe(tmp_path / "c", tokenizer_dir), dataset=SquaresDataset(16))
    with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
        GeneratorTrainer(generator_recipe(tmp_path / "d", tmp_path), dataset=SquaresDataset(16))
    with pytest.raises(ValueError, match=r"data\.train: the recipe names no dataset"):
        TokenizerTrainer(tokenizer_recipe(tmp_path / "e"))


def test_overrides_are_parsed_as_yaml_and_checked():
    data = apply_overrides(
        {"optim": {"lr": 1.0}}, ["optim.lr=1e-4", "loss.token_subsampling=true", "optim.betas=[0.8, 0.9]"]
    )
    assert data == {"optim": {"lr": 1e-4, "betas": [0.8, 0.9]}, "loss": {"token_subsampling": True}}
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(RecipeError, match="not a section"):
        apply_overrides({"optim": {"lr": 1.0}}, ["optim.lr.x=3"])


def test_cli_reports_recipe_errors_without_a_traceback(tmp_path):
    runner = CliRunner(env={"COLUMNS": "300"})
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("kind: tokenizer\npreset: tiny\noptim: {lr: -1}\n")
    result = runner.invoke(train_app, ["tokenizer", "--config", str(recipe)])
    assert result.exit_code == 5 and "optim.lr" in result.output  # ConfigError
    result = runner.invoke(train_app, ["generator", "--config", str(recipe)])
    assert result.exit_code == 5 and "this command trains a generator" in result.output
    result = runner.invoke(train_app, ["tokenizer", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 5 and "recipe file not found" in result.output


def test_cli_trains_the_tiny_recipe_on_the_fixture_and_resumes(tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "tiny-shapes"
    if not fixture.is_dir():
        pytest.skip("tests/fixtures/tiny-shapes not present")
    pytest.importorskip("openhart.data")
    runner = CliRunner()
    out = tmp_path / "tok"
    common = ["tokenizer", "--config", str(ROOT / "configs" / "tiny-tokenizer.yaml"), "--out", str(out)]
    common += [
        "--set",
        f"data.train.root={fixture}",
        "--set",
        "run.progress=false",
        "--set",
        "optim.warmup_steps=1",
        "--max-steps",
        "4",
    ]
    result = runner.invoke(train_app, [*common, "--stop-at-step", "2"])
    assert result.exit_code == 0, result.output
    assert "stopped" in result.output and latest_checkpoint(out).name == "step-0000002"
    result = runner.invoke(train_app, [*common, "--resume"])
    assert result.exit_code == 0, result.output
    assert "finished at step 4" in result.output and (out / "final" / "model.safetensors").is_file()

    features = tmp_path / "text.safetensors"
    args = [
        "text-features",
        "--config",
        str(ROOT / "configs" / "tiny-generator.yaml"),
        "--out",
        str(features),
    ]
    result = runner.invoke(train_app, [*args, "--set", f"data.train.root={fixture}"])
    assert result.exit_code == 0, result.output
    assert "of 20 captions" in result.output  # the sample prompts are training captions here


# ---------------------------------------------------------------------- precision
@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, None)])
def test_precision_auto_is_bf16_only_on_cpus_that_compute_it_natively(monkeypatch, native, expected):
    # The flag is this CPU's (/proc/cpuinfo; its reading is tested in test_quantization.py): set
    # both ways here, since one machine has only one answer.
    import openhart.training.optim as optim

    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: native)
    assert optim.autocast_dtype("auto", torch.device("cpu")) is expected
    assert optim.autocast_dtype("fp32", torch.device("cpu")) is None


def test_explicit_bf16_on_a_cpu_without_it_is_obeyed_with_a_warning(monkeypatch):
    import openhart.training.optim as optim

    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(UserWarning, match="run.precision=auto picks fp32"):
        assert optim.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(optim, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert optim.autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_the_emoji_recipes_leave_precision_to_the_hardware():
    # An explicit bf16 runs 40x slower per tokenizer step on an AVX2-only CPU than fp32.
    for path in sorted((ROOT / "configs").glob("emoji-64-*.yaml")):
        assert load_recipe(path).run.precision == "auto", path.name
