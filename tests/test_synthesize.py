"""``openhart synthesize`` in one process: prompt files, the plan, folder and WebDataset output, resume.

The real command on the ``tiny`` preset, run in-process through typer. Several processes (torchrun,
a SIGKILL, a file-size limit) are in ``test_synthesize_processes.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from openhart.cli import app
from openhart.data import ImageFolderDataset, WebDatasetShards
from openhart.synthesis import build_plan, read_prompt_file
from openhart.synthesis.prompts import PromptLine
from openhart.synthesis.writers import png_is_complete

ROOT = Path(__file__).resolve().parents[1]
# One residual step and one thread: the tests check files and processes, not image quality, and on a
# busy CPU one thread is many times faster than two that wait for each other.
ONE_STEP = ("--steps", "1")
FAST = (*ONE_STEP, "--threads", "1")
runner = CliRunner(env={"COLUMNS": "400"})

PROMPTS_TXT = "a red apple\nblue car\n\n   \na cat\nhouse on a hill\nsmiling sun\n"
PROMPTS_JSONL = "\n".join(
    [
        json.dumps({"prompt": "a red apple", "scene": "kitchen", "weather": None}),
        json.dumps({"prompt": "a blue car", "seed": 7, "num_images": 3, "scene": "road"}),
        "{not json",
        json.dumps({"prompt": "   "}),
        json.dumps({"prompt": "a cat", "guidance_scale": 0.0, "scene": "sofa"}),
        json.dumps({"prompt": "a dog", "guidance_scale": "high"}),
        json.dumps({"prompt": "a tree", "negative_prompt": "blurry", "scene": "park"}),
        json.dumps({"prompt": "a house", "file_name": "x.png"}),
    ]
)


def _files(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every image file and shard under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".png", ".tar")
    }


def _metadata(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _synth(prompts: Path, out: Path, *args: str):
    return runner.invoke(
        app,
        [
            "synthesize",
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--model",
            "tiny",
            "--random-weights",
            "--no-progress",
            *FAST,
            *args,
        ],
    )


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _module_command(prompts: Path, out: Path, *args: str, fast: tuple[str, ...] = FAST) -> list[str]:
    return [
        "-m", "openhart.synthesize", "--prompts", str(prompts), "--out", str(out), "--model", "tiny", "--random-weights", *fast, *args,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The in-process command sets torch's thread count for the process; give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def txt_prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS_TXT)
    return path


# ---------------------------------------------------------------------- prompt files and the plan
def test_prompt_files_report_bad_lines_by_number_and_keep_free_metadata(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text(PROMPTS_TXT)
    parsed = read_prompt_file(txt)
    assert [(line.line, line.prompt) for line in parsed.lines] == [
        (1, "a red apple"), (2, "blue car"), (5, "a cat"), (6, "house on a hill"), (7, "smiling sun"),
    ]  # fmt: skip
    assert [(bad.line, bad.reason) for bad in parsed.bad] == [(3, "empty prompt"), (4, "empty prompt")]

    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(PROMPTS_JSONL + "\n")
    parsed = read_prompt_file(jsonl)
    assert [line.line for line in parsed.lines] == [1, 2, 5, 7]
    car = parsed.lines[1]
    assert (car.seed, car.num_images, car.extra) == (7, 3, {"scene": "road"})
    assert parsed.lines[2].guidance_scale == 0.0 and parsed.lines[3].negative_prompt == "blurry"
    assert parsed.lines[0].extra == {"scene": "kitchen", "weather": None}
    reasons = {bad.line: bad.reason for bad in parsed.bad}
    assert set(reasons) == {3, 4, 6, 8}
    assert "bad JSON" in reasons[3] and "prompt" in reasons[4]
    assert "guidance_scale" in reasons[6] and "file_name" in reasons[8]

    for name, error in (("p.csv", "must be a .txt or .jsonl"), ("missing.txt", "no such file")):
        if name == "p.csv":
            (tmp_path / name).write_text("a\n")
        with pytest.raises(ValueError, match=error):
            read_prompt_file(tmp_path / name)


def test_plan_is_the_same_for_every_world_size_and_splits_disjointly():
    lines = [PromptLine(line=n, prompt=f"p{n}") for n in range(1, 8)]
    lines[2] = PromptLine(line=3, prompt="p3", seed=100, guidance_scale=0.0, num_images=4)
    plan = build_plan(lines, images_per_prompt=2, seed=5, guidance_scale=4.5, batch_size=3, shard_size=5)
    assert len(plan.items) == 6 * 2 + 4
    third = [item for item in plan.items if item.line == 3]
    assert [item.seed for item in third] == [100, 101, 102, 103]  # the line's own seed + index
    # Seeds and names come from (job seed, line, index): another job seed changes only hashed seeds.
    other = build_plan(lines, images_per_prompt=2, seed=6, guidance_scale=4.5, batch_size=3, shard_size=5)
    assert [i.key for i in other.items] == [i.key for i in plan.items]
    assert all((a.seed == b.seed) == (a.line == 3) for a, b in zip(plan.items, other.items, strict=True))
    assert len({item.seed for item in plan.items}) == len(plan.items)
    # Batches never mix sampling parameters or cross a shard, and hold at most batch_size items.
    for batch in plan.batches:
        assert 1 <= len(batch.items) <= 3
        assert len({(i.guidance_scale, i.negative_prompt) for i in batch.items}) == 1
        assert {i.index // 5 for i in batch.items} == {batch.unit}
    for output_format in ("folder", "webdataset"):
        for world_size in (1, 2, 3):
            shares = [
                [i.index for b in plan.batches_for_rank(r, world_size, output_format) for i in b.items]
                for r in range(world_size)
            ]
            assert sorted(i for share in shares for i in share) == list(range(len(plan.items)))
    assert {b.unit for b in plan.batches_for_rank(1, 2, "webdataset")} == {1, 3}  # 4 shards of <= 5


# ---------------------------------------------------------------------- one process, folder output
def test_folder_output_loads_back_with_metadata_and_summary(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(PROMPTS_JSONL + "\n")
    out = tmp_path / "out"
    result = _synth(prompts, out, "--images-per-prompt", "2", "--batch-size", "4", "--steps", "2")
    assert result.exit_code == 0, result.output
    # 4 usable lines: 2 + 3 (num_images) + 2 + 2 images; 4 bad lines named in the log and summary.
    assert "done 9/9 images (9 made now, 0 already there), skipped 4 bad line(s), failed 0" in result.output
    assert "images/s per process: rank 0" in result.output
    rows = _metadata(out)
    assert [(r["line"], r["image_index"]) for r in rows] == [
        (1, 0), (1, 1), (2, 0), (2, 1), (2, 2), (5, 0), (5, 1), (7, 0), (7, 1),
    ]  # fmt: skip
    car = [r for r in rows if r["line"] == 2]
    assert [r["seed"] for r in car] == [7, 8, 9] and car[0]["scene"] == "road"
    assert rows[-1]["negative_prompt"] == "blurry" and rows[5]["guidance_scale"] == 0.0
    assert all(r["num_inference_steps"] == 2 for r in rows)
    summary = json.loads((out / "synthesis.json").read_text())["summary"]
    assert (summary["done"], summary["skipped_lines"], summary["failed"]) == (9, 4, 0)
    assert any("line 3: bad JSON" in bad for bad in summary["bad_lines"])
    assert not (out / ".synthesis").exists()

    dataset = ImageFolderDataset(out, image_size=32)
    assert len(dataset) == 9 and dataset.skipped == 0
    sample = dataset[2]
    assert sample["caption"] == "a blue car" and tuple(sample["image"].shape) == (3, 32, 32)
    assert dataset.records[0].extra["scene"] == "kitchen"

    # The same image alone through the pipeline API: what the file holds is that seed's image.
    from openhart.presets import build_pipeline
    from openhart.synthesis.writers import encode_png

    pipe = build_pipeline("tiny", seed=0)
    alone = pipe(
        "a tree",
        negative_prompt="blurry",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(rows[-1]["seed"]),
    )
    assert encode_png(alone.images[0]) == (out / rows[-1]["file_name"]).read_bytes()


def test_folder_output_loads_with_datasets_imagefolder(tmp_path, txt_prompts):
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "out"
    assert _synth(txt_prompts, out).exit_code == 0
    loaded = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(loaded) == 5
    assert sorted(loaded["text"]) == sorted(r["text"] for r in _metadata(out))
    assert loaded[0]["image"].size == (32, 32)


def test_dry_run_writes_nothing_and_max_images_caps_then_resumes(tmp_path, txt_prompts):
    out = tmp_path / "out"
    dry = _synth(txt_prompts, out, "--images-per-prompt", "2", "--max-images", "4", "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "10 planned, capped at 4" in dry.output and "line 3: empty prompt" in dry.output
    assert not out.exists()

    # The cap ends inside a batch of 3: that batch is made whole, so its images match an uncapped run.
    capped = _synth(txt_prompts, out, "--images-per-prompt", "2", "--max-images", "4", "--batch-size", "3")
    assert capped.exit_code == 0, capped.output
    assert "done 4/4 images" in capped.output and len(_metadata(out)) == 4
    assert (
        "4 image(s) already complete"
        in _synth(txt_prompts, out, "--images-per-prompt", "2", "--dry-run").output
    )
    rest = _synth(txt_prompts, out, "--images-per-prompt", "2", "--batch-size", "3")
    assert "done 10/10 images (6 made now, 4 already there)" in rest.output

    whole = tmp_path / "whole"
    assert _synth(txt_prompts, whole, "--images-per-prompt", "2", "--batch-size", "3").exit_code == 0
    assert _files(out) == _files(whole) and _metadata(out) == _metadata(whole)


def test_resume_replaces_missing_truncated_and_temporary_files(tmp_path, txt_prompts):
    out = tmp_path / "out"
    assert _synth(txt_prompts, out, "--images-per-prompt", "2", "--batch-size", "3").exit_code == 0
    reference = _files(out)
    paths = sorted(out.rglob("*.png"))
    paths[0].unlink()
    paths[3].write_bytes(paths[3].read_bytes()[:-20])  # truncated: no IEND chunk
    (paths[5].parent / f".{paths[5].name}.abc.tmp").write_bytes(b"half")  # a killed write
    assert not png_is_complete(paths[3])
    result = _synth(txt_prompts, out, "--images-per-prompt", "2", "--batch-size", "3")
    assert "done 10/10 images (2 made now, 8 already there)" in result.output
    assert _files(out) == reference
    assert not list(out.rglob("*.tmp"))


def test_a_rerun_with_other_settings_or_a_foreign_folder_is_refused(tmp_path, txt_prompts):
    out = tmp_path / "out"
    assert _synth(txt_prompts, out, "--max-images", "2").exit_code == 0
    other = _synth(txt_prompts, out, "--seed", "1")
    assert other.exit_code == 3 and "other settings (seed: 0 there, 1 now)" in other.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused = _synth(txt_prompts, foreign)
    assert refused.exit_code == 3 and "not empty" in refused.output
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    nothing = _synth(empty, tmp_path / "x")
    assert nothing.exit_code == 3 and "no usable prompt (2 bad line(s))" in nothing.output
    assert _synth(tmp_path / "nope.txt", tmp_path / "y").exit_code == 3  # InvalidInputError


# ---------------------------------------------------------------------- WebDataset shards
def test_webdataset_shards_load_with_webdataset_and_the_project_reader(tmp_path, txt_prompts):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    result = _synth(
        txt_prompts,
        out,
        "--format",
        "webdataset",
        "--shard-size",
        "4",
        "--images-per-prompt",
        "2",
        "--batch-size",
        "3",
    )
    assert result.exit_code == 0, result.output
    shards = sorted(out.glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    samples = list(wds.WebDataset([str(p) for p in shards], shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == [
        f"{line:08d}-{j:04d}" for line in (1, 2, 5, 6, 7) for j in range(2)
    ]
    assert samples[4]["png"].size == (32, 32) and samples[4]["json"]["text"] == "a cat"
    assert samples[4]["txt"] == "a cat" and samples[4]["json"]["line"] == 5
    ours = list(
        WebDatasetShards(str(out / "shard-*.tar"), image_size=32, shuffle_buffer=0, shuffle_shards=False)
    )
    assert len(ours) == 10 and ours[0]["caption"] == "a red apple"
    # The same images as folder output: the PNG bytes of one image are the same in both formats.
    folder = tmp_path / "folder"
    assert (
        _synth(
            txt_prompts, folder, "--images-per-prompt", "2", "--shard-size", "4", "--batch-size", "3"
        ).exit_code
        == 0
    )
    first = (folder / "images/00000/00000001-0000.png").read_bytes()
    raw = next(iter(wds.WebDataset(str(shards[0]), shardshuffle=False)))
    assert raw["png"] == first
    # A damaged shard is rewritten on resume; intact ones are kept.
    before = _files(out)
    shards[1].write_bytes(shards[1].read_bytes()[:1500])
    again = _synth(
        txt_prompts,
        out,
        "--format",
        "webdataset",
        "--shard-size",
        "4",
        "--images-per-prompt",
        "2",
        "--batch-size",
        "3",
    )
    assert "done 10/10 images (4 made now, 6 already there)" in again.output
    assert _files(out) == before


# ---------------------------------------------------------------------- output folders that refuse writes
def test_a_read_only_output_folder_is_a_clear_error(tmp_path, txt_prompts):
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        # Root ignores permission bits; an immutable folder refuses new files even to root.
        if (
            shutil.which("chattr") is None
            or subprocess.run(["chattr", "+i", str(out)], check=False).returncode
        ):
            pytest.skip("running as root on a file system without chattr +i")
        restore = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        restore = ["chmod", "755", str(out)]
    try:
        result = _synth(txt_prompts, out)
    finally:
        subprocess.run(restore, check=True)
    assert result.exit_code == 6  # StorageError
    message = result.output.strip().splitlines()[-1]
    assert message.startswith("Error: cannot write") and "read-only or not writable" in message
    assert list(out.iterdir()) == []
