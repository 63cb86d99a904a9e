"""Data: image folders (.txt and metadata.jsonl), WebDataset shards, the factory, the emoji builder.

Everything runs on tiny files made here or committed under tests/fixtures/, so CI needs no npm.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from typer.testing import CliRunner

from openhart.data import (
    ImageFolderDataset,
    WebDatasetShards,
    assign_shards,
    build_dataset,
    caption_from_stem,
    expand_shards,
)
from openhart.data.cli import data_app
from openhart.data.datasets import expand_braces
from openhart.data.emoji import (
    EMOJI_SETS,
    build_emoji_dataset,
    concept_split,
    fetch_packages,
    normalize_codepoints,
    open_packages,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _png(size=(12, 12), colour=(255, 0, 0, 255), mode="RGBA") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpg(colour=(0, 0, 255)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 12), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


@pytest.fixture()
def text_folder(tmp_path) -> Path:
    root = tmp_path / "folder"
    (root / "sub").mkdir(parents=True)
    (root / "red_square.png").write_bytes(_png())
    (root / "red_square.txt").write_text("  a red\nsquare  ")
    # Transparent everywhere except the center: must come out white at the corners.
    rgba = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    rgba.paste((0, 0, 0, 255), (15, 5, 25, 15))
    rgba.save(root / "sub" / "black_dot.png")
    (root / "sub" / "black_dot.txt").write_text("")  # empty: falls back to the file stem
    (root / "blue-wide_bar.jpg").write_bytes(_jpg())  # no .txt at all
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "truncated.png").write_bytes(_png((64, 64))[:40])
    (root / "broken.txt").write_text("never returned")
    (root / "notes.md").write_text("ignored: not an image")
    return root


def test_text_folder_prepares_images_and_never_returns_empty_captions(text_folder):
    dataset = ImageFolderDataset(text_folder, image_size=16)
    assert len(dataset) == 3
    assert dataset.skipped == 2  # broken.png and truncated.png
    assert {key for key, _ in dataset.skipped_items} == {"broken", "truncated"}
    samples = {dataset[i]["key"]: dataset[i] for i in range(len(dataset))}
    assert set(samples) == {"red_square", "sub/black_dot", "blue-wide_bar"}
    assert samples["red_square"]["caption"] == "a red square"
    assert samples["sub/black_dot"]["caption"] == "black dot"
    assert samples["blue-wide_bar"]["caption"] == "blue wide bar"
    assert dataset.captions_from_stem == 2
    for sample in samples.values():
        image = sample["image"]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        assert image.min() >= -1.0 and image.max() <= 1.0
    red = samples["red_square"]["image"]
    torch.testing.assert_close(red[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))
    dot = samples["sub/black_dot"]["image"]  # 40x20 -> 32x16, center crop keeps the dot centered
    torch.testing.assert_close(dot[:, 0, 0], torch.ones(3))  # transparent -> white
    torch.testing.assert_close(dot[:, 8, 8], -torch.ones(3), atol=0.02, rtol=0)
    # Batches through a DataLoader keep captions as a list of strings.
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch["image"].shape == (3, 3, 16, 16) and all(batch["caption"])


def test_lazy_decode_failure_is_counted_and_replaced(text_folder):
    dataset = ImageFolderDataset(text_folder, image_size=8, verify=False)
    assert len(dataset) == 5 and dataset.skipped == 0
    keys = [record.key for record in dataset.records]
    sample = dataset[keys.index("broken")]
    assert sample["key"] != "broken" and sample["caption"]
    assert dataset.skipped == 1
    with pytest.raises(IndexError, match="index"):
        dataset[len(dataset)]
    with pytest.raises(TypeError, match="index"):
        dataset["0"]  # type: ignore[index]


def test_committed_fixture_metadata_split_and_extra_fields():
    root = FIXTURES / "tiny-shapes"
    train = ImageFolderDataset(root, 32, split="train")
    test = ImageFolderDataset(root, 32, split="test")
    everything = ImageFolderDataset(root, 32)
    assert (len(train), len(test), len(everything)) == (20, 4, 24)
    assert {r.key for r in train.records}.isdisjoint({r.key for r in test.records})
    assert all(r.extra["split"] == "test" for r in test.records)
    sample = test[0]
    assert sample["caption"].startswith("a ") and sample["image"].shape == (3, 32, 32)
    assert train.skipped == 0 and everything.captions_from_stem == 0


def test_metadata_problems_are_skipped_and_counted(tmp_path):
    (tmp_path / "a.png").write_bytes(_png())
    (tmp_path / "b_c.png").write_bytes(_png())
    lines = [
        json.dumps({"file_name": "a.png", "text": "an a"}),
        "{not json",
        json.dumps({"text": "no file name"}),
        json.dumps({"file_name": "missing.png", "text": "gone"}),
        json.dumps({"file_name": "b_c.png", "text": "   "}),  # blank -> "b c"
        json.dumps({"file_name": "___.png", "text": ""}),  # blank, and no words in the name
    ]
    (tmp_path / "___.png").write_bytes(_png())
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    dataset = ImageFolderDataset(tmp_path, 8)
    assert [r.caption for r in dataset.records] == ["an a", "b c"]
    assert dataset.skipped == 4 and dataset.captions_from_stem == 1
    with pytest.raises(ValueError, match="split"):
        ImageFolderDataset(tmp_path, 8, split="train")  # no split field, no train/ folder


def test_paths_stay_inside_the_dataset_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.png").write_bytes(_png())
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "ok.png").write_bytes(_png())
    (root / "sub" / "inner.png").write_bytes(_png())
    (root / "link.png").symlink_to(outside / "secret.png")
    (root / "linked-folder").symlink_to(outside, target_is_directory=True)
    rows = [
        {"file_name": "ok.png", "text": "ok"},
        {"file_name": "sub/../sub/inner.png", "text": "inner"},  # `..` that stays inside is fine
        {"file_name": "../outside/secret.png", "text": "escape"},
        {"file_name": str(outside / "secret.png"), "text": "absolute"},
        {"file_name": "link.png", "text": "a link out"},
        {"file_name": "linked-folder/secret.png", "text": "a folder link out"},
    ]
    (root / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    dataset = ImageFolderDataset(root, 8)
    assert [r.caption for r in dataset.records] == ["ok", "inner"]
    assert dataset.skipped == 4
    assert all(reason == "outside the dataset folder" for _, reason in dataset.skipped_items)
    # The caption-file layout: the same links are skipped.
    (root / "metadata.jsonl").unlink()
    dataset = ImageFolderDataset(root, 8)
    assert sorted(r.key for r in dataset.records) == ["ok", "sub/inner"]
    assert dataset.skipped >= 1 and "secret" not in " ".join(r.key for r in dataset.records)


def test_truncated_images_are_skipped_and_counted(tmp_path):
    (tmp_path / "good.png").write_bytes(_png())
    noise = torch.randint(0, 256, (32, 32, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise.numpy()).save(buffer, format="PNG")  # noise: the pixel data is most of the file
    data = buffer.getvalue()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    dataset = ImageFolderDataset(tmp_path, 8)
    assert [r.key for r in dataset.records] == ["good"] and dataset.skipped == 1


def test_split_subfolders_and_bad_arguments(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / f"{split}_image.png").write_bytes(_png())
    assert [r.key for r in ImageFolderDataset(tmp_path, 8, split="test").records] == ["test_image"]
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataset(tmp_path, 0)
    with pytest.raises(ValueError, match="root"):
        ImageFolderDataset(tmp_path / "nowhere", 8)
    assert caption_from_stem("red_fox--01.final.png") == "red fox 01"


# --------------------------------------------------------------------------------------------
# WebDataset shards
# --------------------------------------------------------------------------------------------


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture()
def shards(tmp_path) -> tuple[list[str], set[str]]:
    """Six shards of five good samples each (one shard also holds three bad samples)."""
    paths, good = [], set()
    for shard in range(6):
        path = tmp_path / f"shard-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for index in range(5):
                key = f"s{shard}/{index:04d}"
                image = _png((10, 14), (shard * 40, index * 50, 0, 255)) if index % 2 else _jpg()
                _add(archive, f"{key}.{'png' if index % 2 else 'jpg'}", image)
                _add(archive, f"{key}.txt", f"sample {shard} {index}".encode())
                good.add(key)
            if shard == 0:
                _add(archive, "bad/corrupt.jpg", b"\xff\xd8\xff garbage")
                _add(archive, "bad/corrupt.txt", b"corrupt image")
                _add(archive, "bad/blank.png", _png())
                _add(archive, "bad/blank.txt", b"  \n")
                _add(archive, "bad/caption_only.txt", b"no image")
        paths.append(str(path))
    return paths, good


def _keys(dataset) -> list[str]:
    return [sample["key"] for sample in dataset]


def test_shards_stream_every_good_sample_and_count_bad_ones(shards):
    paths, good = shards
    dataset = WebDatasetShards(paths, 8, shuffle_buffer=4, seed=0)
    samples = list(dataset)
    assert sorted(s["key"] for s in samples) == sorted(good)
    assert dataset.skipped == 3
    assert all(s["caption"] and s["image"].shape == (3, 8, 8) for s in samples)
    assert all(s["image"].min() >= -1 and s["image"].max() <= 1 for s in samples)


def test_shard_shuffles_are_seeded(shards):
    paths, _ = shards
    first = _keys(WebDatasetShards(paths, 4, shuffle_buffer=8, seed=1))
    assert first == _keys(WebDatasetShards(paths, 4, shuffle_buffer=8, seed=1))
    assert first != _keys(WebDatasetShards(paths, 4, shuffle_buffer=8, seed=2))
    dataset = WebDatasetShards(paths, 4, shuffle_buffer=8, seed=1)
    dataset.set_epoch(1)
    assert _keys(dataset) != first and sorted(_keys(dataset)) == sorted(first)
    in_order = _keys(WebDatasetShards(paths, 4, shuffle_buffer=0, shuffle_shards=False))
    assert in_order == sorted(in_order)  # no shuffling at all: tar order


def test_ranks_and_workers_read_disjoint_shards_that_cover_all(shards):
    paths, good = shards
    subsets = [assign_shards(paths, rank, 2, worker, 3) for rank in range(2) for worker in range(3)]
    assert sorted(s for subset in subsets for s in subset) == sorted(paths) and all(
        len(s) == 1 for s in subsets
    )
    dataset = WebDatasetShards(paths, 4, seed=3)
    for epoch in (0, 1):
        per_reader = [dataset.shards_for(epoch, r, 3, w, 2) for r in range(3) for w in range(2)]
        assert sorted(s for subset in per_reader for s in subset) == sorted(paths)
    # Whole ranks (simulated through arguments) see disjoint samples that cover the data.
    rank_keys = [set(_keys(WebDatasetShards(paths, 4, rank=r, world_size=2, seed=3))) for r in range(2)]
    assert rank_keys[0].isdisjoint(rank_keys[1]) and rank_keys[0] | rank_keys[1] == good
    # Real DataLoader workers split rank 1's shards between them.
    loader = DataLoader(
        WebDatasetShards(paths, 4, rank=1, world_size=2, seed=3), batch_size=None, num_workers=2
    )
    worker_keys = [sample["key"] for sample in loader]
    assert len(worker_keys) == len(set(worker_keys)) and set(worker_keys) == rank_keys[1]
    with pytest.raises(ValueError, match="rank"):
        WebDatasetShards(paths, 4, rank=2, world_size=2)


def test_shard_names_and_truncated_shards(shards, tmp_path):
    paths, _ = shards
    assert expand_braces("a-{00..02}-{x,y}.tar") == [f"a-{i:02d}-{s}.tar" for i in range(3) for s in "xy"]
    assert expand_shards(str(tmp_path / "shard-{000..005}.tar")) == paths
    assert expand_shards(str(tmp_path / "shard-*.tar")) == paths
    with pytest.raises(ValueError, match="urls"):
        expand_shards(str(tmp_path / "nothing-*.tar"))
    cut = tmp_path / "cut.tar"
    data = Path(paths[1]).read_bytes()
    cut.write_bytes(data[: len(data) // 2 + 100])
    dataset = WebDatasetShards([str(cut)], 4, shuffle_buffer=0)
    keys = _keys(dataset)
    assert 0 < len(keys) < 5 and dataset.skipped >= 1


def test_build_dataset_factory(shards):
    paths, good = shards
    folder = build_dataset(
        {"type": "imagefolder", "root": str(FIXTURES / "tiny-shapes"), "split": "test"}, 16
    )
    assert isinstance(folder, ImageFolderDataset) and len(folder) == 4
    stream = build_dataset({"type": "webdataset", "urls": paths, "shuffle_buffer": 3, "seed": 5}, 16)
    assert isinstance(stream, WebDatasetShards) and len(_keys(stream)) == len(good)
    with pytest.raises(ValueError, match="type"):
        build_dataset({"type": "parquet"}, 16)
    with pytest.raises(ValueError, match="unknown key"):
        build_dataset({"type": "imagefolder", "root": ".", "shuffle": True}, 16)
    with pytest.raises(ValueError, match="urls"):
        build_dataset({"type": "webdataset"}, 16)


# --------------------------------------------------------------------------------------------
# Emoji builder on fake mini packages
# --------------------------------------------------------------------------------------------

WAVE_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="20" fill="#f4aa41"/></svg>'
FACE_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="23" fill="#fcea2b"/></svg>'
LINE_SVG = '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 72 72"><circle cx="36" cy="36" r="23" fill="none" stroke="#000" stroke-width="2"/></svg>'
# Left half red, right half transparent: shows whether an alias was flipped.
HALF_BODY = '<path fill="#ff0000" d="M0 0h16v32H0z"/>'


def _write_package(root: Path, name: str, files: dict[str, bytes | str]) -> Path:
    for relative, data in {"package.json": json.dumps({"name": name, "version": "0.0.1"}), **files}.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return root


def _datasource_json() -> str:
    entries = [
        {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
         "category": "Smileys & Emotion", "has_img_google": True},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "short_names": ["wave"],
         "category": "People & Body", "has_img_google": True,
         "skin_variations": {"1F3FB": {"unified": "1F44B-1F3FB", "image": "1f44b-1f3fb.png", "has_img_google": True}}},
        {"name": "FLAG", "unified": "1F1E9-1F1EA", "image": "1f1e9-1f1ea.png", "short_names": ["flag-de", "de"],
         "category": "Flags", "has_img_google": False},  # only a fallback image: never used
    ]  # fmt: skip
    return json.dumps(entries)


@pytest.fixture()
def emoji_sources(tmp_path) -> list[Path]:
    noto = _write_package(tmp_path / "noto", "emoji-datasource-google", {
        "emoji.json": _datasource_json(),
        "LICENSE": "MIT License (emoji-datasource)",
        "img/google/64/1f600.png": _png((64, 64), (250, 220, 40, 255)),
        "img/google/64/1f44b.png": _png((64, 64), (240, 170, 60, 128)),  # half transparent
        "img/google/64/1f44b-1f3fb.png": _png((64, 64), (250, 220, 190, 255)),
        "img/google/64/1f1e9-1f1ea.png": _png(),
    })  # fmt: skip
    rows = [
        {"hexcode": "1F600", "annotation": "grinning face", "tags": "face, grin, happy", "openmoji_tags": "sunny grin",
         "group": "smileys-emotion", "subgroups": "face-smiling"},
        {"hexcode": "1F44B", "annotation": "waving hand", "tags": "hand, wave, waving", "openmoji_tags": "",
         "group": "people-body", "subgroups": "hand-fingers-open"},
        {"hexcode": "1F44B-1F3FB", "annotation": "waving hand: light skin tone", "tags": "", "openmoji_tags": "",
         "group": "people-body", "subgroups": "hand-fingers-open"},
        {"hexcode": "E0FF", "annotation": "some company", "tags": "", "openmoji_tags": "logo",
         "group": "extras-openmoji", "subgroups": "brand"},
    ]  # fmt: skip
    openmoji_files: dict[str, bytes | str] = {
        "data/openmoji.json": json.dumps(rows),
        "LICENSE.txt": "CC BY-SA 4.0",
    }
    colours = {"1F600": FACE_SVG, "1F44B": WAVE_SVG, "1F44B-1F3FB": WAVE_SVG.replace("#f4aa41", "#fadcbc")}
    for row in rows:
        colour = colours.get(row["hexcode"], WAVE_SVG)
        openmoji_files[f"color/svg/{row['hexcode']}.svg"] = colour
        openmoji_files[f"black/svg/{row['hexcode']}.svg"] = LINE_SVG  # line art: every tone looks alike
    openmoji_folder = _write_package(tmp_path / "openmoji-src" / "package", "openmoji", openmoji_files)
    tarball = tmp_path / "openmoji-0.0.1.tgz"
    with tarfile.open(tarball, "w:gz") as archive:  # as `npm pack` writes it: everything under package/
        archive.add(openmoji_folder, arcname="package")
    icons = {
        "prefix": "fluent-emoji-flat", "width": 32, "height": 32,
        "icons": {
            "grinning-face": {"body": '<circle cx="16" cy="16" r="14" fill="#fcd53f"/>'},
            "waving-hand": {"body": HALF_BODY},
            "waving-hand-light": {"body": HALF_BODY.replace("#ff0000", "#fadcbc"), "hidden": True},  # no chars entry: found by its tone suffix
        },
        "aliases": {"waving-hand-mirrored": {"parent": "waving-hand", "hFlip": True},
                    "smiley-alias": {"parent": "grinning-face"}},  # same drawing under another name: skipped
    }  # fmt: skip
    fluent = _write_package(tmp_path / "fluent", "@iconify-json/fluent-emoji-flat", {
        "icons.json": json.dumps(icons),
        "chars.json": json.dumps({"1f600": "grinning-face", "1f44b": "waving-hand"}),
    })  # fmt: skip
    return [noto, tarball, fluent]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_emoji_builder_on_fake_packages(emoji_sources, tmp_path):
    out = tmp_path / "emoji"
    report = build_emoji_dataset(out, emoji_sources, image_size=16)
    rows = {row["key"]: row for row in _rows(out)}
    assert set(rows) == {
        "noto/1f600", "noto/1f44b", "noto/1f44b-1f3fb",
        "openmoji-color/1f600", "openmoji-color/1f44b", "openmoji-color/1f44b-1f3fb",
        "openmoji-black/1f600", "openmoji-black/1f44b",  # the toned line art equals the plain one
        "fluent-flat/1f600", "fluent-flat/1f44b", "fluent-flat/1f44b-1f3fb", "fluent-flat/x-waving-hand-mirrored",
    }  # fmt: skip
    assert report.images == 12 and report.dropped_ambiguous == 1 and report.failed == 0
    assert report.per_set == {"fluent-flat": 4, "noto": 3, "openmoji-black": 2, "openmoji-color": 3}
    for row in rows.values():
        assert row["text"] in row["captions"] and all(row["captions"])
        assert all(EMOJI_SETS[row["set"]].style in caption for caption in row["captions"])
        assert row["license"] == EMOJI_SETS[row["set"]].license
        with Image.open(out / row["file_name"]) as image:
            assert image.size == (16, 16) and image.mode == "RGB"
    wave = rows["fluent-flat/1f44b-1f3fb"]
    assert (wave["name"], wave["skin_tone"], wave["concept"], wave["concept_id"]) == (
        "waving hand", "light skin tone", "waving hand", "1F44B",
    )  # fmt: skip
    assert "emoji of waving hand with light skin tone in flat fluent style" in wave["captions"]
    assert "sunny grin" in " ".join(rows["openmoji-color/1f600"]["captions"])  # OpenMoji tags: OpenMoji only
    assert "sunny grin" not in " ".join(rows["noto/1f600"]["captions"])
    # Concepts share a split; toned variants follow their concept.
    for row in rows.values():
        assert row["split"] == concept_split(row["concept_id"])
    # Composited on white; the fluent alias is the mirror image of its parent.
    with Image.open(out / "images/noto/1f44b.png") as image:
        assert image.getpixel((8, 8)) == pytest.approx((247, 212, 157), abs=2)
    with (
        Image.open(out / "images/fluent-flat/1f44b.png") as plain,
        Image.open(out / "images/fluent-flat/x-waving-hand-mirrored.png") as mirrored,
    ):
        assert plain.getpixel((2, 8)) == (255, 0, 0) and plain.getpixel((13, 8)) == (255, 255, 255)
        assert mirrored.getpixel((13, 8)) == (255, 0, 0) and mirrored.getpixel((2, 8)) == (255, 255, 255)
    # Licences beside the data.
    licences = (out / "LICENSES.md").read_text()
    for needle in ("Apache-2.0", "CC-BY-SA-4.0", "MIT", "OpenMoji", "Microsoft", "Unicode"):
        assert needle in licences
    assert (out / "LICENSES" / "Apache-2.0.txt").read_text().strip().startswith("Apache License")
    assert (out / "LICENSES" / "CC-BY-SA-4.0-openmoji.txt").is_file()
    # The output reads as an image folder.
    dataset = ImageFolderDataset(out, 16, split="train")
    assert len(dataset) == sum(row["split"] == "train" for row in rows.values())


def test_emoji_builder_resumes_and_is_idempotent(emoji_sources, tmp_path):
    out = tmp_path / "emoji"
    build_emoji_dataset(out, emoji_sources, image_size=16, sets=["noto", "fluent-flat"])
    metadata = (out / "metadata.jsonl").read_bytes()
    image = out / "images/noto/1f600.png"
    image_bytes = image.read_bytes()
    (out / "images/noto/1f44b.png").unlink()  # as if interrupted before this one
    again = build_emoji_dataset(out, emoji_sources, image_size=16, sets=["noto", "fluent-flat"])
    assert (again.rendered, again.reused) == (1, 6)
    assert (out / "metadata.jsonl").read_bytes() == metadata and image.read_bytes() == image_bytes
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(ValueError, match="image_size"):
        build_emoji_dataset(out, emoji_sources, image_size=32)
    with pytest.raises(ValueError, match="sets"):
        build_emoji_dataset(out, emoji_sources[:1], image_size=16, sets=["twemoji"])


def test_held_out_split_is_stable_and_about_five_percent():
    ids = [f"{cp:X}" for cp in range(0x1F300, 0x1F300 + 4000)]
    splits = [concept_split(i) for i in ids]
    assert splits == [concept_split(i) for i in ids]
    assert 0.04 < splits.count("test") / len(ids) < 0.06
    assert concept_split("1F600") == concept_split(normalize_codepoints("1f600"))
    with pytest.raises(ValueError, match="test_fraction"):
        concept_split("1F600", 1.5)


def test_apple_and_facebook_sets_are_refused(tmp_path):
    apple = _write_package(tmp_path / "apple", "emoji-datasource-apple", {"emoji.json": "[]"})
    with pytest.raises(ValueError, match="emoji-datasource-apple"):
        open_packages([apple])
    with pytest.raises(ValueError, match="facebook"):
        fetch_packages(tmp_path, {"emoji-datasource-facebook": "1.0.0"})


def test_fetch_uses_npm_pack_and_the_cache(emoji_sources, tmp_path):
    calls = tmp_path / "calls.txt"
    fake_npm = tmp_path / "npm"
    tarball = emoji_sources[1]
    fake_npm.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncp {tarball} "$4/openmoji-0.0.1.tgz"\n')
    fake_npm.chmod(fake_npm.stat().st_mode | stat.S_IEXEC)
    cache = tmp_path / "cache"
    for _ in range(2):
        paths = fetch_packages(cache, {"openmoji": "0.0.1"}, npm=str(fake_npm))
    assert paths == [cache / "openmoji-0.0.1.tgz"]
    assert calls.read_text().split("\n")[0].startswith("pack openmoji@0.0.1 --pack-destination")
    assert len(calls.read_text().splitlines()) == 1  # the second call found it in the cache


def test_cli_emoji_command(emoji_sources, tmp_path):
    out = tmp_path / "cli-out"
    args = ["--out", str(out), "--image-size", "16", "--set", "noto"]
    for source in emoji_sources:
        args += ["--sources", str(source)]
    result = CliRunner().invoke(data_app, ["emoji", *args])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout[result.stdout.index("{") :])["images"] == 3
    bad = CliRunner().invoke(data_app, ["emoji", "--out", str(out), "--sources", str(tmp_path / "missing")])
    assert bad.exit_code == 3 and "does not exist" in bad.output  # InvalidInputError


def test_heldout_prompts_take_one_style_per_held_out_concept(tmp_path):
    from openhart.data.emoji import heldout_prompts

    rows = [
        {"split": "train", "concept": "dog face", "style": "noto style"},
        {"split": "test", "concept": "sun", "style": "twemoji style"},
        {"split": "test", "concept": "sun", "style": "noto style"},
        {"split": "test", "concept": "thumbs up", "style": "noto style", "skin_tone": "medium"},
        {"split": "test", "concept": "fog", "style": "openmoji line style"},
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert heldout_prompts(tmp_path, 5) == ["sun emoji, twemoji style", "fog emoji, openmoji line style"]
    assert heldout_prompts(tmp_path, 1) == ["sun emoji, twemoji style"]
