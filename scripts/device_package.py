"""A generator-training package small enough for one device call, and its unpacking there.

A device call carries the working tree and the package together, 64 MiB at most, and the tracked
tree is about 34 MiB (``build`` reports both), so an emoji-64 generator run must fit its data, text
encoder and tokenizer in the rest (34 MiB). That leaves no room for ``candidates/`` (the models in
training, 24 MiB), which the device does not need: move it out of the working tree for the
call and ``git checkout candidates`` afterwards (only the files on disk travel).

- **images**: the recipe's training rows, as the trainer sees them (``prepare_image``: RGB,
  64x64, composited on white), one uint8 array compressed with xz: the emoji share their white
  backgrounds and flat colours, so 16k images take ~17 MB (their PNGs ~60 MB); the metadata rows
  beside them, xz-compressed JSON lines.
- **text encoder**: all-MiniLM-L6-v2 with its vocabulary cut to the word pieces the captions and
  sampling prompts use (WordPiece picks the longest piece in its vocabulary, and every piece it
  picked from the whole vocabulary is kept, so these texts tokenize to the same pieces), its
  layers' weight matrices stored as int8 with one scale per row (the rest fp16). Its features
  differ from the full encoder's by quantization noise: ``build`` measures how much on the
  captions and writes it to the manifest. The generator trains on features precomputed there,
  then runs with the full encoder here.
- **tokenizer**: the frozen tokenizer's encoder side in the dtype it is stored in (the tokens it
  makes are what the generator learns, so its values travel unchanged); its decoder stays here
  (the trainer needs one only for sample images, so
  the device gets a random one and no samples; ``assemble`` puts the real one back).

    python scripts/device_package.py build --recipe configs/emoji-64-generator-latent16.yaml --out .device-package
    python scripts/device_package.py unpack --package .device-package --out /tmp/pkg   # on the device

``unpack`` writes ``data/`` (PNG files + metadata.jsonl), ``text_encoder/`` (an ordinary
transformers folder in fp32) and ``tokenizer/``; ``scripts/device_train_emoji64.sh`` runs the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openhart.data.images import load_image, prepare_image
from openhart.text.encoders import TextEncoderConfig, TransformersTextEncoder, minilm_model_folder
from openhart.training.recipe import load_recipe
from openhart.utils.config import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TREE_LIMIT = 64 * 2**20  # what one device call carries: the working tree and the package
SCALE_SUFFIX = ".int8_row_scale"
TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")


def tokenizer_image_size(folder: Path) -> int:
    from openhart.tokenizer import TokenizerConfig
    from openhart.utils.config import load_config

    return load_config(TokenizerConfig, folder / "config.json").image_size


def training_rows(root: Path, split: str | None) -> list[dict]:
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if split is None or row.get("split") == split]


def pack_images(root: Path, rows: list[dict], size: int) -> bytes:
    from PIL import Image

    arrays = []
    for row in rows:
        with Image.open(root / row["file_name"]) as image:
            image.load()
            arrays.append(np.asarray(prepare_image(image, size).convert("RGB"), dtype=np.uint8))
    return lzma.compress(np.stack(arrays).tobytes(), preset=6)


def prune_vocabulary(folder: Path, texts: list[str], out: Path) -> dict[str, int]:
    """Copy the MiniLM folder to ``out`` with only the word pieces ``texts`` use; returns sizes."""
    from transformers import AutoTokenizer

    full = AutoTokenizer.from_pretrained(folder)
    used = {token_id for ids in full(texts)["input_ids"] for token_id in ids}
    used |= set(full.all_special_ids)
    vocabulary = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    kept = sorted(used)  # ascending: [PAD] = 0 stays 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("".join(vocabulary[i] + "\n" for i in kept), encoding="utf-8")
    for name in TOKENIZER_FILES:
        shutil.copy(folder / name, out / name)
    config = json.loads((folder / "config.json").read_text())
    config["vocab_size"] = len(kept)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")

    pruned = AutoTokenizer.from_pretrained(out)
    remap = {old: new for new, old in enumerate(kept)}
    for text, ids, new_ids in zip(texts, full(texts)["input_ids"], pruned(texts)["input_ids"], strict=True):
        if [remap[i] for i in ids] != new_ids:
            raise SystemExit(f"the pruned vocabulary tokenizes {text!r} differently")

    weights = load_file(str(folder / "model.safetensors"))
    packed: dict[str, torch.Tensor] = {}
    for name, tensor in weights.items():
        if name.endswith("word_embeddings.weight"):
            packed[name] = tensor[torch.tensor(kept)].half()
        elif ".layer." in name and name.endswith(".weight") and tensor.dim() == 2:
            scale = tensor.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127  # (out, 1)
            packed[name] = (tensor / scale).round().clamp(-127, 127).to(torch.int8)
            packed[name + SCALE_SUFFIX] = scale.float()
        elif tensor.is_floating_point():
            packed[name] = tensor.half()
        else:
            packed[name] = tensor
    save_file(packed, str(out / "model.packed.safetensors"))
    return {"vocabulary": len(vocabulary), "kept": len(kept)}


def unpack_text_encoder(packed_folder: Path, out: Path) -> None:
    """An ordinary fp32 transformers folder from a pruned, int8-packed one."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "config.json", *TOKENIZER_FILES):
        shutil.copy(packed_folder / name, out / name)
    packed = load_file(str(packed_folder / "model.packed.safetensors"))
    weights = {}
    for name, tensor in packed.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if tensor.dtype == torch.int8:
            weights[name] = tensor.float() * packed[name + SCALE_SUFFIX]
        else:
            weights[name] = tensor.float() if tensor.is_floating_point() else tensor
    save_file(weights, str(out / "model.safetensors"))


def text_encoder_config(model_path: Path, recipe_config: TextEncoderConfig) -> TextEncoderConfig:
    return TextEncoderConfig(
        kind="transformers",
        model_path=str(model_path),
        max_length=recipe_config.max_length,
        hidden_size=recipe_config.hidden_size,
        lowercase=recipe_config.lowercase,
    )


def feature_difference(packed_folder: Path, texts: list[str], recipe_config: TextEncoderConfig) -> dict:
    """How far the unpacked encoder's features are from the full one's, on ``texts``."""
    scratch = packed_folder.parent / ".text-encoder-check"
    try:
        unpack_text_encoder(packed_folder, scratch)
        full = TransformersTextEncoder(text_encoder_config(minilm_model_folder(), recipe_config))
        small = TransformersTextEncoder(text_encoder_config(scratch, recipe_config))
        worst_cosine, worst_abs, scale = 1.0, 0.0, 0.0
        with torch.no_grad():
            for start in range(0, len(texts), 128):
                chunk = texts[start : start + 128]
                (a, mask_a), (b, mask_b) = full.encode(chunk), small.encode(chunk)
                if not torch.equal(mask_a, mask_b):
                    raise SystemExit("the unpacked text encoder masks other tokens")
                a, b = a[mask_a].float(), b[mask_b].float()  # (tokens, D)
                worst_cosine = min(worst_cosine, float(torch.nn.functional.cosine_similarity(a, b).min()))
                worst_abs = max(worst_abs, float((a - b).abs().max()))
                scale = max(scale, float(a.abs().max()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "texts": len(texts),
        "min_token_cosine": worst_cosine,
        "max_abs_diff": worst_abs,
        "max_abs": scale,
    }


DECODER_PREFIXES = ("decoder.", "post_quant_conv.")


def pack_tokenizer(folder: Path, out: Path) -> None:
    """The tokenizer's encoder side (encoder, quant_conv, quantizer), values unchanged: what makes the tokens."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(folder / "config.json", out / "config.json")
    weights = load_file(str(folder / "model.safetensors"))
    kept = {name: t for name, t in weights.items() if not name.startswith(DECODER_PREFIXES)}
    save_file(kept, str(out / "encoder.safetensors"))


def unpack_tokenizer(packed_folder: Path, out: Path) -> None:
    """A loadable tokenizer folder: the carried encoder side and a seeded random decoder.

    The generator's trainer uses the decoder only for sample images (switched off on the device);
    the pipeline is assembled here with the real decoder.
    """
    from openhart.tokenizer import HybridTokenizer, TokenizerConfig
    from openhart.utils.config import load_config
    from openhart.utils.weights import save_component

    config = load_config(TokenizerConfig, packed_folder / "config.json")
    torch.manual_seed(0)
    tokenizer = HybridTokenizer(config)
    missing, unexpected = tokenizer.load_state_dict(
        load_file(str(packed_folder / "encoder.safetensors")), strict=False
    )
    if unexpected or any(not name.startswith(DECODER_PREFIXES) for name in missing):
        raise SystemExit(f"the packed tokenizer does not fit its config: {unexpected or missing}")
    save_component(tokenizer, out)


def working_tree_bytes() -> int:
    """Bytes of what a device call carries besides its carried paths: the files git tracks or would
    track (untracked, not ignored) that are on disk now."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    paths = {ROOT / name.decode() for name in listed if name}
    return sum(path.stat().st_size for path in paths if path.is_file())


def build(args: argparse.Namespace) -> None:
    recipe = load_recipe(args.recipe)
    root = Path(recipe.data.train["root"])
    rows = training_rows(root, recipe.data.train.get("split"))
    tokenizer_folder = Path(recipe.tokenizer_from)
    if (tokenizer_folder / "final" / "tokenizer").is_dir():
        tokenizer_folder = tokenizer_folder / "final" / "tokenizer"
    elif (tokenizer_folder / "final").is_dir():
        tokenizer_folder = tokenizer_folder / "final"
    size = tokenizer_image_size(tokenizer_folder)
    text_config = recipe.component_configs()["text_encoder"]

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    atomic_write_bytes(out / "images.u8.xz", pack_images(root, rows, size))
    # The rows without their caption variants (most of their bytes; the recipe reads `text`).
    slim = [{key: value for key, value in row.items() if key != "captions"} for row in rows]
    atomic_write_bytes(
        out / "rows.jsonl.xz", lzma.compress("".join(json.dumps(r) + "\n" for r in slim).encode())
    )
    texts = sorted({row["text"] for row in rows} | set(recipe.sampling.prompts) | set(args.extra_prompt))
    if text_config.lowercase:
        texts = sorted({text.lower() for text in texts})
    vocabulary = prune_vocabulary(minilm_model_folder(), texts, out / "text_encoder")
    compared = texts if args.check_texts == 0 else texts[:: max(1, len(texts) // args.check_texts)]
    difference = feature_difference(out / "text_encoder", compared, text_config)
    pack_tokenizer(tokenizer_folder, out / "tokenizer")

    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {
        "recipe": str(args.recipe),
        "rows": len(rows),
        "image_size": size,
        "tokenizer_from": str(tokenizer_folder),
        "text_vocabulary": vocabulary,
        "text_feature_difference": difference,
        "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
        "bytes": sum(p.stat().st_size for p in files),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=2))
    tree = working_tree_bytes()
    travelling = tree + manifest["bytes"]
    print(
        f"a device call would carry {travelling / 2**20:.1f} MiB: working tree {tree / 2**20:.1f} MiB + package"
    )
    if travelling > DEVICE_TREE_LIMIT:
        print(
            f"warning: over the device's {DEVICE_TREE_LIMIT / 2**20:.0f} MiB by "
            f"{(travelling - DEVICE_TREE_LIMIT) / 2**20:.1f} MiB: move candidates/ out of the working "
            "tree for the call (the package carries what the device needs of it; `git checkout "
            "candidates` puts it back)",
            file=sys.stderr,
        )


def unpack(args: argparse.Namespace) -> None:
    from PIL import Image

    package, out = args.package, args.out
    manifest = json.loads((package / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        if hashlib.sha256((package / name).read_bytes()).hexdigest() != digest:
            raise SystemExit(f"{package / name}: checksum mismatch (a partial copy?)")
    rows = [
        json.loads(line) for line in lzma.decompress((package / "rows.jsonl.xz").read_bytes()).splitlines()
    ]
    size = manifest["image_size"]
    images = np.frombuffer(lzma.decompress((package / "images.u8.xz").read_bytes()), dtype=np.uint8)
    images = images.reshape(len(rows), size, size, 3)
    data = out / "data"
    for row, image in zip(rows, images, strict=True):
        path = data / row["file_name"]
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)
    (data / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    unpack_text_encoder(package / "text_encoder", out / "text_encoder")
    unpack_tokenizer(package / "tokenizer", out / "tokenizer")
    print(f"unpacked {len(rows)} images, the text encoder and the tokenizer into {out}")


def check(args: argparse.Namespace) -> None:
    """The unpacked images load as the originals do, pixel for pixel."""
    recipe = load_recipe(args.recipe)
    root = Path(recipe.data.train["root"])
    rows = training_rows(root, recipe.data.train.get("split"))
    size = tokenizer_image_size(args.unpacked / "tokenizer")
    step = max(1, len(rows) // args.rows)
    for row in rows[::step]:
        original = load_image(root / row["file_name"], size)
        unpacked = load_image(args.unpacked / "data" / row["file_name"], size)
        if not torch.equal(original, unpacked):
            raise SystemExit(f"{row['file_name']}: the unpacked image differs")
    print(f"{len(rows[::step])} images identical to the originals")


def export(args: argparse.Namespace) -> None:
    """A trained pipeline's transformer and head as fp16 files with their configs (on the device).

    One file per component keeps each under the device's 16 MiB per returned file.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    for component, name in (("transformer", "transformer"), ("diffusion_head", "head")):
        folder = args.pipeline / component
        weights = load_file(str(folder / "model.safetensors"))
        metadata = {"config": (folder / "config.json").read_text()}
        save_file({k: v.half() for k, v in weights.items()}, str(args.out / f"{name}.safetensors"), metadata)


def assemble(args: argparse.Namespace) -> None:
    """A pipeline folder from exported files, a tokenizer folder and the shipped text encoder."""
    from safetensors import safe_open

    from openhart.diffusion import DiffusionHeadConfig, ResidualDiffusionHead
    from openhart.models.hart import HartPipeline
    from openhart.text import load_text_encoder
    from openhart.tokenizer import HybridTokenizer, TokenizerConfig
    from openhart.transformer import HartTransformer, HartTransformerConfig
    from openhart.utils.weights import load_component

    modules = {}
    for name, module_cls, config_cls in (
        ("transformer", HartTransformer, HartTransformerConfig),
        ("head", ResidualDiffusionHead, DiffusionHeadConfig),
    ):
        path = args.returned / f"{name}.safetensors"
        with safe_open(str(path), "pt") as handle:
            config = config_cls.from_dict(json.loads(handle.metadata()["config"]))
        module = module_cls(config)
        module.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()}, strict=True)
        modules[name] = module
    shipped = ROOT / "openhart" / "weights" / "emoji-64"
    pipeline = HartPipeline(
        text_encoder=load_text_encoder(shipped / "text_encoder"),
        tokenizer=load_component(HybridTokenizer, TokenizerConfig, args.tokenizer),
        transformer=modules["transformer"],
        diffusion_head=modules["head"],
    )
    pipeline.save_pretrained(args.out)
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_parser = commands.add_parser("build")
    build_parser.add_argument("--recipe", type=Path, required=True)
    build_parser.add_argument("--out", type=Path, required=True)
    build_parser.add_argument(
        "--extra-prompt", action="append", default=[], help="more prompts to keep words of"
    )
    build_parser.add_argument(
        "--check-texts", type=int, default=1024, help="texts whose features are compared (0: all)"
    )
    unpack_parser = commands.add_parser("unpack")
    unpack_parser.add_argument("--package", type=Path, required=True)
    unpack_parser.add_argument("--out", type=Path, required=True)
    check_parser = commands.add_parser("check")
    check_parser.add_argument("--recipe", type=Path, required=True)
    check_parser.add_argument("--unpacked", type=Path, required=True)
    check_parser.add_argument("--rows", type=int, default=500)
    export_parser = commands.add_parser("export")
    export_parser.add_argument("--pipeline", type=Path, required=True)
    export_parser.add_argument("--out", type=Path, required=True)
    assemble_parser = commands.add_parser("assemble")
    assemble_parser.add_argument("--returned", type=Path, required=True, help="a folder that export wrote")
    assemble_parser.add_argument("--tokenizer", type=Path, required=True)
    assemble_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    {"build": build, "unpack": unpack, "check": check, "export": export, "assemble": assemble}[args.command](
        args
    )


if __name__ == "__main__":
    main()
