"""``--resume`` survives damaged checkpoints: it falls back to the newest intact one, or fails in one line."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from openhart.training.checkpoint import (
    CHECKPOINTS_DIR,
    LATEST_NAME,
    MANIFEST_FILE,
    MODEL_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    checkpoint_problem,
    resumable_checkpoint,
)
from openhart.training.tokenizer_trainer import TokenizerTrainer
from tests.test_training import SquaresDataset, tokenizer_recipe

NEWER, OLDER = "step-0000004", "step-0000002"


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def recipe(out_dir: Path):
    return tokenizer_recipe(
        out_dir, optim={"max_steps": 6}, run={"checkpoint_every": 2, "keep_checkpoints": 2}
    )


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A tiny tokenizer run stopped at step 4, with intact checkpoints at steps 2 and 4."""
    out = tmp_path_factory.mktemp("run") / "run"
    torch.use_deterministic_algorithms(False)
    TokenizerTrainer(recipe(out), dataset=SquaresDataset(16)).train(stop_at_step=4)
    torch.use_deterministic_algorithms(False)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))


def _newer(run: Path) -> Path:
    return run / CHECKPOINTS_DIR / NEWER


# (fault, damage, the step --resume continues from, words the log or error must contain)
FAULTS: list[tuple[str, Callable[[Path], None], int, str]] = [
    ("truncated weights", lambda run: _truncate(_newer(run) / WEIGHTS_FILE), 2, "bytes"),
    (
        "missing training state",
        lambda run: (_newer(run) / STATE_FILE).unlink(),
        2,
        f"{STATE_FILE} is missing",
    ),
    ("zero-byte training state", lambda run: (_newer(run) / STATE_FILE).write_bytes(b""), 2, "bytes"),
    (
        "flipped byte in the model",
        lambda run: _flip_a_byte(_newer(run) / MODEL_DIR / "model.safetensors"),
        2,
        "hash",
    ),
    ("missing model folder", lambda run: shutil.rmtree(_newer(run) / MODEL_DIR), 2, "is missing"),
    ("unreadable manifest", lambda run: (_newer(run) / MANIFEST_FILE).write_text("{"), 2, "unreadable"),
    (
        "no manifest and a truncated state",
        lambda run: ((_newer(run) / MANIFEST_FILE).unlink(), _truncate(_newer(run) / STATE_FILE)),
        2,
        "unreadable",
    ),
    ("empty latest.json", lambda run: (run / CHECKPOINTS_DIR / LATEST_NAME).write_text(""), 4, "unreadable"),
    (
        "latest.json names a missing folder",
        lambda run: (run / CHECKPOINTS_DIR / LATEST_NAME).write_text(json.dumps({"folder": "step-0000099"})),
        4,
        "does not exist",
    ),
    ("missing latest.json", lambda run: (run / CHECKPOINTS_DIR / LATEST_NAME).unlink(), 4, ""),
    ("newest folder deleted", lambda run: shutil.rmtree(_newer(run)), 2, "does not exist"),
]


@pytest.mark.parametrize(("fault", "damage", "step", "said"), FAULTS, ids=[f[0] for f in FAULTS])
def test_resume_falls_back_to_the_newest_intact_checkpoint(
    stopped_run, tmp_path, caplog, fault, damage, step, said
):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    assert checkpoint_problem(_newer(run)) is None  # intact before the damage
    damage(run)
    with caplog.at_level(logging.WARNING):
        trainer = TokenizerTrainer(recipe(run), dataset=SquaresDataset(16), resume=True)
    assert trainer.step == step, fault
    if step == 2 or said:
        assert said in caplog.text, caplog.text
    result = trainer.train()
    assert result.finished and result.steps == 6


def test_no_intact_checkpoint_is_one_clear_error_naming_each(stopped_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    _truncate(_newer(run) / WEIGHTS_FILE)
    (run / CHECKPOINTS_DIR / OLDER / STATE_FILE).unlink()
    with pytest.raises(CheckpointError) as error:
        resumable_checkpoint(run)
    message = str(error.value)
    assert NEWER in message and OLDER in message and f"{STATE_FILE} is missing" in message


def test_the_cli_reports_a_run_without_intact_checkpoints_in_one_line(stopped_run, tmp_path):
    from openhart.training.cli import train_app

    run = tmp_path / "run"
    shutil.copytree(stopped_run, run)
    for folder in (NEWER, OLDER):
        _truncate(run / CHECKPOINTS_DIR / folder / WEIGHTS_FILE)
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "kind: tokenizer\npreset: tiny\ndata: {train: {type: imagefolder, root: nowhere}}\n"
        "optim: {max_steps: 6, warmup_steps: 0}\n"
    )
    result = CliRunner().invoke(
        train_app, ["tokenizer", "--config", str(config), "--out", str(run), "--resume"]
    )
    assert result.exit_code == 4, result.output  # CheckpointError is a ModelLoadError
    assert "no intact checkpoint" in result.output and "Traceback" not in result.output
    assert not isinstance(result.exception, CheckpointError)  # handled, not raised out of the command
