"""Hostile input to every command, each in a real ``python -m openhart`` process.

Each case is one bad input (a corrupt model folder, an unwritable ``-o``, a seed out of range, a
prompt that is blank or not text, a malformed recipe ...) and the category of error it must end
in. The assertions are the command line's contract (README, "Exit codes"): a nonzero exit with
the category's code, no traceback, and a last stderr line that says what failed and names the
file, option or field. Usage errors (exit 2) are click's own box and only need to name the option.

The processes run in a small thread pool (torch's import dominates each one); the fixtures are
built once per session from the library's own ``save_pretrained`` and corrupted copy by copy.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from openhart import HartPipeline
from openhart.compat.loading import save_official_layout
from openhart.diffusion import ResidualDiffusionHead
from openhart.errors import ConfigError, DependencyError, InvalidInputError, ModelLoadError, StorageError
from openhart.presets import build_pipeline
from openhart.tokenizer import HybridTokenizer
from openhart.transformer import HartTransformer

ROOT = Path(__file__).resolve().parents[1]
USAGE = 2  # click's own usage errors (an option's type or range)
INPUT, MODEL, CONFIG, STORAGE, DEPENDENCY = (
    InvalidInputError.exit_code,
    ModelLoadError.exit_code,
    ConfigError.exit_code,
    StorageError.exit_code,
    DependencyError.exit_code,
)
NOT_UTF8 = b"caf\xe9 \xff"  # argv bytes that are not UTF-8: Python decodes them to lone surrogates
PROCESS_TIMEOUT_S = 180


@dataclass
class Case:
    """One bad input: the arguments (``{root}`` is the fixture folder), the exit code expected,
    and text the error must contain (the file, option or field it names)."""

    name: str
    args: list[str | bytes]
    exit_code: int
    names: str
    module: str = "openhart"
    setup: Callable[[Path], None] | None = field(default=None, repr=False)


# ---------------------------------------------------------------------------------- the fixtures
def _copy_good(root: Path, name: str) -> Path:
    target = root / name
    if not target.exists():
        shutil.copytree(root / "good", target)
    return target


def _rewrite_tensors(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def _first_float(state: dict[str, torch.Tensor]) -> str:
    return next(
        name for name, tensor in sorted(state.items()) if tensor.is_floating_point() and tensor.numel() > 1
    )


def _model_corruptions() -> dict[str, tuple[Callable[[Path], None], int, str]]:
    """Name → (how to corrupt a copy of the good folder, exit code, what the error must name)."""

    def write(relative: str, data: bytes) -> Callable[[Path], None]:
        return lambda folder: (folder / relative).write_bytes(data)

    def delete(relative: str) -> Callable[[Path], None]:
        def run(folder: Path) -> None:
            target = folder / relative
            shutil.rmtree(target) if target.is_dir() else target.unlink()

        return run

    def truncate(relative: str) -> Callable[[Path], None]:
        def run(folder: Path) -> None:
            data = (folder / relative).read_bytes()
            (folder / relative).write_bytes(data[: len(data) // 2])

        return run

    def tensors(relative: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
        return lambda folder: _rewrite_tensors(folder / relative, change)

    def config(relative: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
        def run(folder: Path) -> None:
            data = json.loads((folder / relative).read_text())
            change(data)
            (folder / relative).write_text(json.dumps(data))

        return run

    def reshape(state: dict[str, torch.Tensor]) -> None:
        name = _first_float(state)
        state[name] = torch.zeros(state[name].numel() + 1)

    def poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
        def run(state: dict[str, torch.Tensor]) -> None:
            name = _first_float(state)
            state[name] = state[name].clone()
            state[name].view(-1)[0] = value

        return run

    cases: dict[str, tuple[Callable[[Path], None], int, str]] = {
        "no-model-index": (delete("model_index.json"), MODEL, "model_index.json"),
        "no-transformer-folder": (delete("transformer"), CONFIG, "transformer/config.json"),
        "no-text-encoder-folder": (delete("text_encoder"), MODEL, "text_encoder"),
        "config-not-json": (write("transformer/config.json", b"{not json"), CONFIG, "transformer/config.json"),
        "config-empty-file": (write("tokenizer/config.json", b""), CONFIG, "tokenizer/config.json"),
        "config-binary": (write("diffusion_head/config.json", b"\xff\xfe\x00junk"), CONFIG, "config.json"),
        "config-a-list": (write("transformer/config.json", b"[1, 2]"), CONFIG, "expected a JSON object"),
        "config-wrong-type": (config("transformer/config.json", lambda d: d.update(width="64")), CONFIG, "width"),
        "config-bool-for-int": (config("transformer/config.json", lambda d: d.update(depth=True)), CONFIG, "depth"),
        "config-list-for-int": (config("tokenizer/config.json", lambda d: d.update(codebook_size=[1])), CONFIG, "codebook_size"),
        "config-null-for-int": (config("diffusion_head/config.json", lambda d: d.update(width=None)), CONFIG, "width"),
        "config-unknown-field": (config("transformer/config.json", lambda d: d.update(wdith=64)), CONFIG, "wdith"),
        "config-missing-field": (config("transformer/config.json", lambda d: d.pop("patch_nums")), CONFIG, "patch_nums"),
        "config-patch-nums-strings": (config("transformer/config.json", lambda d: d.update(patch_nums=["1", "2"])), CONFIG, "patch_nums"),
        "text-config-not-json": (write("text_encoder/config.json", b"nope"), CONFIG, "text_encoder/config.json"),
        "text-config-unknown-kind": (config("text_encoder/config.json", lambda d: d.update(kind=7)), CONFIG, "kind"),
        "weights-missing": (delete("transformer/model.safetensors"), MODEL, "transformer/model.safetensors"),
        "weights-zero-bytes": (write("transformer/model.safetensors", b""), MODEL, "transformer/model.safetensors"),
        "weights-random-bytes": (write("tokenizer/model.safetensors", os.urandom(4096)), MODEL, "tokenizer/model.safetensors"),
        "weights-truncated-transformer": (truncate("transformer/model.safetensors"), MODEL, "transformer/model.safetensors"),
        "weights-truncated-tokenizer": (truncate("tokenizer/model.safetensors"), MODEL, "tokenizer/model.safetensors"),
        "weights-truncated-head": (truncate("diffusion_head/model.safetensors"), MODEL, "diffusion_head/model.safetensors"),
        "weights-truncated-text": (truncate("text_encoder/model.safetensors"), MODEL, "text_encoder/model.safetensors"),
        "weights-a-folder": (lambda f: (delete("transformer/model.safetensors")(f), (f / "transformer/model.safetensors").mkdir()), MODEL, "model.safetensors"),
        "weights-huge-header": (write("transformer/model.safetensors", (2**62).to_bytes(8, "little") + b"{}"), MODEL, "transformer/model.safetensors"),
        "tensor-wrong-shape": (tensors("transformer/model.safetensors", reshape), MODEL, "shape mismatch"),
        "tensor-extra": (tensors("transformer/model.safetensors", lambda s: s.update(extra=torch.zeros(2))), MODEL, "extra"),
        "tensor-missing": (tensors("diffusion_head/model.safetensors", lambda s: s.pop(sorted(s)[0])), MODEL, "missing tensors"),
        "tensor-nan": (tensors("transformer/model.safetensors", poison(float("nan"))), MODEL, "NaN"),
        "tensor-inf": (tensors("diffusion_head/model.safetensors", poison(float("inf"))), MODEL, "infinite"),
        "tensor-nan-text": (tensors("text_encoder/model.safetensors", poison(float("nan"))), MODEL, "text_encoder"),
    }  # fmt: skip
    return cases


def _build_fixtures(root: Path) -> None:
    build_pipeline("tiny", seed=0).save_pretrained(root / "good")
    (root / "empty").mkdir()
    (root / "a-file").write_text("not a folder\n")
    Image.new("RGB", (32, 32), "red").save(root / "image.png")
    Image.new("L", (16, 16), 255).save(root / "small-mask.png")
    (root / "not-an-image.png").write_text("hello\n")
    (root / "zero.png").write_bytes(b"")
    (root / "folder.png").mkdir()
    (root / "prompts.txt").write_text("a red square\na blue circle\n")
    (root / "blank-prompts.txt").write_text("\n   \n\t\n")
    (root / "junk-prompts.jsonl").write_text('{"prompt": \n[1,2]\n{"no_prompt": 1}\n')
    (root / "binary-prompts.txt").write_bytes(b"\xff\xfe\x00\x81" * 64)
    (root / "prompts.csv").write_text("prompt\na cat\n")
    (root / "recipe-not-yaml.yaml").write_text("kind: [tokenizer\n  : :\n")
    (root / "recipe-unknown.yaml").write_text("kind: tokenizer\npreset: tiny\noptim: {lrr: 1.0}\n")
    (root / "recipe-bad-lr.yaml").write_text("kind: tokenizer\npreset: tiny\noptim: {lr: -1}\n")
    (root / "recipe-wrong-type.yaml").write_text("kind: tokenizer\npreset: tiny\noptim: {max_steps: many}\n")
    (root / "recipe-a-list.yaml").write_text("- 1\n- 2\n")
    (root / "recipe-empty.yaml").write_text("")
    (root / "recipe-unknown-preset.yaml").write_text("kind: tokenizer\npreset: no-such-preset\n")
    (root / "recipe-bad-data.yaml").write_text(
        "kind: tokenizer\npreset: tiny\ndata: {train: {type: imagefolder, root: /no/such/folder}}\n"
    )
    for name, (corrupt, _, _) in _model_corruptions().items():
        corrupt(_copy_good(root, f"model-{name}"))
    # The released layout, written by the library, then corrupted.
    official = root / "official-good"
    save_official_layout(_official_tiny(), official)
    for name in ("official-empty-configs", "official-llm-not-json", "official-pickle", "official-truncated",
                 "official-nan", "official-no-weights", "official-not-dict"):  # fmt: skip
        shutil.copytree(official, root / name)
    for part in ("llm", "tokenizer"):
        (root / "official-empty-configs" / part / "config.json").write_text("{}")
    (root / "official-llm-not-json" / "llm" / "config.json").write_text("{oops")
    for weights in (root / "official-pickle" / "llm").glob("model.*"):
        weights.unlink()
    (root / "official-pickle" / "llm" / "ema_model.bin").write_bytes(pickle.dumps(_Exploit()))
    llm_weights = next((root / "official-truncated" / "llm").glob("model.*"))
    llm_weights.write_bytes(llm_weights.read_bytes()[:1000])
    nan_weights = next((root / "official-nan" / "tokenizer").glob("model.*"))
    _rewrite_tensors(nan_weights, lambda s: s[_first_float(s)].view(-1).__setitem__(0, float("nan")))
    for weights in (root / "official-no-weights" / "llm").glob("model.*"):
        weights.unlink()
    for weights in (root / "official-not-dict" / "llm").glob("model.*"):
        weights.unlink()
    torch.save([torch.zeros(2)], root / "official-not-dict" / "llm" / "ema_model.bin")


def _official_tiny() -> HartPipeline:
    """The tiny preset with the release's switches, so that the released layout can express it."""
    tiny = build_pipeline("tiny", seed=0)
    transformer = tiny.transformer.config
    transformer = transformer.replace(
        head_pooling="max", block_pooling="max", rope_2d="hart", mask_context_padding=False,
        attn_scale=0.25 / math.sqrt(transformer.head_dim),
    )  # fmt: skip
    return HartPipeline(
        tiny.text_encoder,
        HybridTokenizer(tiny.tokenizer.config.replace(num_res_blocks=2)),
        HartTransformer(transformer),
        ResidualDiffusionHead(tiny.diffusion_head.config.replace(output_scale=0.6)),
    )


class _Exploit:
    """A pickle that would run a shell command when loaded without ``weights_only``."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pwned > /tmp/openhart-pwned",))


# ------------------------------------------------------------------------------------- the cases
def _cases() -> list[Case]:
    cases: list[Case] = []
    gen = ["generate", "a red square", "-o", "{root}/out/x.png"]
    good = ["--model", "{root}/good"]

    # Every corrupt model folder, through generate, info, and three more commands that load one.
    for name, (_, code, names) in _model_corruptions().items():
        folder = f"{{root}}/model-{name}"
        cases.append(Case(f"generate/{name}", [*gen, "--model", folder], code, names))
        cases.append(Case(f"info/{name}", ["info", folder], code, names))
    for name in ("config-not-json", "weights-truncated-transformer", "tensor-nan", "config-wrong-type"):
        _, code, names = _model_corruptions()[name]
        folder = f"{{root}}/model-{name}"
        cases += [
            Case(f"edit/{name}", ["edit", "a hat", "--image", "{root}/image.png", "-o", "{root}/out/e.png", "--model", folder], code, names),
            Case(f"serve/{name}", ["serve", "--model", folder, "--port", "0"], code, names),
            Case(f"synthesize/{name}", ["synthesize", "--prompts", "{root}/prompts.txt", "--out", f"{{root}}/synth-{name}", "--model", folder], code, names),
            Case(f"bench/{name}", ["bench", "--model", folder, "--repeats", "1", "--warmup", "0"], code, names),
        ]  # fmt: skip

    # Models that are not folders at all.
    for label, model, code, names in [
        ("empty-folder", "{root}/empty", MODEL, "model_index.json"),
        ("unknown-name", "no-such-model", MODEL, "no-such-model"),
        ("empty-string", "", MODEL, "--model"),
        ("a-file", "{root}/a-file", MODEL, "a-file"),
        ("not-cached-repo", "nobody/no-such-repo-xyz", 7, "nobody/no-such-repo-xyz"),
        ("official-layout-no-encoder", "{root}/official-good", 7, "Qwen2"),
    ]:
        cases.append(Case(f"generate/model-{label}", [*gen, "--model", model], code, names))
        cases.append(
            Case(f"info/model-{label}", ["info", model], code, names if label != "empty-string" else "MODEL")
        )

    # Prompts: the server's definition (not blank, UTF-8 text, at most 1000 characters).
    for label, prompt, names in [
        ("empty", "", "PROMPTS[0]"),
        ("blank", "   ", "PROMPTS[0]"),
        ("tabs-newlines", "\t\n ", "PROMPTS[0]"),
        ("too-long", "a" * 1001, "1000"),
        ("not-utf8", NOT_UTF8, "surrogate"),
    ]:
        cases.append(
            Case(
                f"generate/prompt-{label}",
                ["generate", prompt, "-o", "{root}/out/p.png", *good],
                INPUT,
                names,
            )
        )
        cases.append(Case(f"edit/prompt-{label}", ["edit", prompt, "--image", "{root}/image.png", "-o", "{root}/out/e.png", *good], INPUT, names.replace("PROMPTS[0]", "PROMPT")))  # fmt: skip
    cases.append(
        Case(
            "generate/second-prompt-blank",
            ["generate", "ok", " ", "-o", "{root}/out/p.png", *good],
            INPUT,
            "PROMPTS[1]",
        )
    )
    cases.append(
        Case(
            "generate/negative-not-utf8",
            [*gen, *good, "--negative-prompt", NOT_UTF8],
            INPUT,
            "--negative-prompt",
        )
    )

    # Seeds: 0 <= seed + images - 1 < 2**63.
    for label, seed, extra in [
        ("negative", "-1", []),
        ("2**64", str(2**64), []),
        ("2**63", str(2**63), []),
        ("huge", "9" * 40, []),
        ("overflow-by-images", str(2**63 - 1), ["--num-images", "2"]),
    ]:
        cases.append(Case(f"generate/seed-{label}", [*gen, *good, "--seed", seed, *extra], INPUT, "--seed"))
        cases.append(Case(f"edit/seed-{label}", ["edit", "a hat", "--image", "{root}/image.png", "-o", "{root}/out/e.png", *good, "--seed", seed, *extra], INPUT, "--seed"))  # fmt: skip
    cases.append(Case("generate/seed-not-int", [*gen, *good, "--seed", "abc"], USAGE, "--seed"))

    # -o: checked before the model loads (a model that does not exist proves the order).
    missing_model = ["--model", "no-such-model"]
    for label, output, code, names in [
        ("empty", "", INPUT, "--output"),
        ("blank", "  ", INPUT, "--output"),
        ("dev-null", "/dev/null", STORAGE, "/dev/null"),
        ("under-dev-null", "/dev/null/x.png", STORAGE, "/dev/null"),
        ("under-a-file", "{root}/a-file/x.png", STORAGE, "a-file"),
        ("under-a-file-deep", "{root}/a-file/sub/dir/x.png", STORAGE, "a-file"),
        ("folder-under-a-file", "{root}/a-file/folder", STORAGE, "a-file"),
        ("read-only-proc", "/proc/openhart-out.png", STORAGE, "/proc"),
        ("read-only-sys", "/sys/openhart-out/x.png", STORAGE, "/sys"),
        ("a-folder-named-png", "{root}/folder.png", STORAGE, "folder.png"),
        ("jpeg-suffix", "{root}/out/x.jpg", INPUT, "x.jpg"),
        ("txt-suffix", "{root}/out/x.txt", INPUT, "x.txt"),
    ]:
        # For generate an existing folder is a valid -o (images go inside): the model fails then.
        generate_code, generate_names = (
            (MODEL, "no-such-model") if label == "a-folder-named-png" else (code, names)
        )
        cases.append(Case(f"generate/output-{label}", ["generate", "a red square", "-o", output, *missing_model], generate_code, generate_names))  # fmt: skip
        if label not in ("folder-under-a-file",):
            edit_code = INPUT if label == "dev-null" else code  # edit takes a .png path only
            cases.append(Case(f"edit/output-{label}", ["edit", "a hat", "--image", "{root}/image.png", "-o", output, *missing_model], edit_code, names))  # fmt: skip
    if os.geteuid() != 0:  # root writes into a 0555 folder; the /proc and /sys cases cover root
        cases.append(Case("generate/output-read-only-folder", ["generate", "x", "-o", "{root}/read-only/x.png", *missing_model], STORAGE, "read-only"))  # fmt: skip

    # Options out of range (click's usage errors) and options the library refuses.
    for label, extra, code, names in [
        ("num-images-0", ["--num-images", "0"], USAGE, "--num-images"),
        ("guidance-negative", ["--guidance-scale", "-1"], USAGE, "--guidance-scale"),
        ("top-p-2", ["--top-p", "2"], USAGE, "--top-p"),
        ("steps-0", ["--steps", "0"], USAGE, "--steps"),
        ("dtype-unknown", ["--dtype", "float8"], USAGE, "--dtype"),
        ("device-unknown", ["--device", "tpu"], USAGE, "--device"),
        ("quantize-unknown", ["--quantize", "int3"], INPUT, "int3"),
    ]:
        cases.append(Case(f"generate/{label}", [*gen, *good, *extra], code, names))
    if not torch.cuda.is_available():
        cases.append(
            Case("generate/device-cuda-absent", [*gen, *good, "--device", "cuda"], DEPENDENCY, "cuda")
        )
        cases.append(Case("bench/cuda-graphs-on-cpu", ["bench", *good, "--device", "cpu", "--cuda-graphs"], DEPENDENCY, "--cuda-graphs"))  # fmt: skip

    # edit: images, masks and editing options.
    edit = ["edit", "a hat", "-o", "{root}/out/e.png", *good]
    for label, extra, code, names in [
        ("image-missing", ["--image", "{root}/nope.png"], STORAGE, "nope.png"),
        ("image-not-an-image", ["--image", "{root}/not-an-image.png"], INPUT, "not-an-image.png"),
        ("image-zero-bytes", ["--image", "{root}/zero.png"], INPUT, "zero.png"),
        ("image-a-folder", ["--image", "{root}/folder.png"], STORAGE, "folder.png"),
        ("mask-missing", ["--image", "{root}/image.png", "--mask", "{root}/nope.png"], STORAGE, "--mask"),
        (
            "mask-not-an-image",
            ["--image", "{root}/image.png", "--mask", "{root}/not-an-image.png"],
            INPUT,
            "--mask",
        ),
        (
            "mask-wrong-size",
            ["--image", "{root}/image.png", "--mask", "{root}/small-mask.png"],
            INPUT,
            "--mask",
        ),
        (
            "mask-and-outpaint",
            ["--image", "{root}/image.png", "--mask", "{root}/image.png", "--outpaint", "left=8"],
            INPUT,
            "--outpaint",
        ),
        ("outpaint-bad-side", ["--image", "{root}/image.png", "--outpaint", "up=8"], INPUT, "--outpaint"),
        ("outpaint-not-number", ["--image", "{root}/image.png", "--outpaint", "left=x"], INPUT, "--outpaint"),
        (
            "outpaint-twice",
            ["--image", "{root}/image.png", "--outpaint", "left=8,left=4"],
            INPUT,
            "--outpaint",
        ),
        ("outpaint-empty", ["--image", "{root}/image.png", "--outpaint", ""], INPUT, "--outpaint"),
        ("strength-2", ["--image", "{root}/image.png", "--strength", "2"], INPUT, "--strength"),
    ]:
        cases.append(Case(f"edit/{label}", [*edit, *extra], code, names))  # fmt: skip

    # convert: the released layout, corrupted (a text-encoder folder is given, so nothing downloads).
    encoder = ["--text-encoder", "{root}/empty"]
    for label, source, code, names in [
        ("missing-source", "{root}/nope", MODEL, "nope"),
        ("empty-folder", "{root}/empty", MODEL, "llm/config.json"),
        ("our-layout", "{root}/good", MODEL, "llm/config.json"),
        ("empty-configs", "{root}/official-empty-configs", CONFIG, "tokenizer/config.json"),
        ("llm-config-not-json", "{root}/official-llm-not-json", CONFIG, "llm/config.json"),
        ("malicious-pickle", "{root}/official-pickle", MODEL, "ema_model.bin"),
        ("truncated-weights", "{root}/official-truncated", MODEL, "llm/model"),
        ("nan-weights", "{root}/official-nan", MODEL, "NaN"),
        ("no-weights", "{root}/official-no-weights", MODEL, "llm"),
        ("pickle-not-a-dict", "{root}/official-not-dict", CONFIG, "ema_model.bin"),
        ("source-a-file", "{root}/a-file", MODEL, "a-file"),
    ]:
        cases.append(Case(f"convert/{label}", ["convert", source, "{root}/converted", *encoder], code, names))
    cases.append(Case("convert/destination-under-a-file", ["convert", "{root}/official-good", "{root}/a-file/out", *encoder], STORAGE, "a-file"))  # fmt: skip
    cases.append(Case("convert/destination-read-only", ["convert", "{root}/official-good", "/proc/openhart-converted", *encoder], STORAGE, "/proc"))  # fmt: skip
    cases.append(Case("convert/text-encoder-missing", ["convert", "{root}/official-good", "{root}/converted", "--text-encoder", "{root}/nope"], MODEL, "--text-encoder"))  # fmt: skip

    # synthesize: prompt files and output folders (also as its own module, what torchrun launches).
    synth = ["--model", "tiny", "--random-weights", "--steps", "1"]
    for label, prompts, out, code, names in [
        ("prompts-missing", "{root}/nope.txt", "{root}/s1", INPUT, "nope.txt"),
        ("prompts-blank", "{root}/blank-prompts.txt", "{root}/s2", INPUT, "blank-prompts.txt"),
        ("prompts-junk-jsonl", "{root}/junk-prompts.jsonl", "{root}/s3", INPUT, "junk-prompts.jsonl"),
        ("prompts-binary", "{root}/binary-prompts.txt", "{root}/s4", INPUT, "binary-prompts.txt"),
        ("prompts-csv", "{root}/prompts.csv", "{root}/s5", INPUT, "prompts.csv"),
        ("prompts-a-folder", "{root}/empty", "{root}/s6", INPUT, "empty"),
        ("out-a-file", "{root}/prompts.txt", "{root}/a-file", STORAGE, "a-file"),
        ("out-dev-null", "{root}/prompts.txt", "/dev/null", STORAGE, "/dev/null"),
        ("out-under-a-file", "{root}/prompts.txt", "{root}/a-file/s", STORAGE, "a-file"),
        ("out-read-only", "{root}/prompts.txt", "/proc/openhart-synth", STORAGE, "/proc"),
        ("out-not-empty", "{root}/prompts.txt", "{root}/good", INPUT, "not empty"),
    ]:
        args = ["--prompts", prompts, "--out", out, *synth]
        cases.append(Case(f"synthesize/{label}", ["synthesize", *args], code, names))
        if label in ("prompts-missing", "out-a-file", "prompts-blank"):
            cases.append(
                Case(
                    f"python -m openhart.synthesize/{label}", args, code, names, module="openhart.synthesize"
                )
            )
    cases.append(Case("synthesize/device-unknown", ["synthesize", "--prompts", "{root}/prompts.txt", "--out", "{root}/s7", "--device", "tpu"], USAGE, "--device"))  # fmt: skip
    cases.append(Case("synthesize/model-corrupt-standalone", ["--prompts", "{root}/prompts.txt", "--out", "{root}/s8", "--model", "{root}/model-tensor-nan"], MODEL, "NaN", module="openhart.synthesize"))  # fmt: skip

    # train: recipes (every one is refused before any data is read).
    for label, recipe, names in [
        ("missing", "{root}/nope.yaml", "nope.yaml"),
        ("not-yaml", "{root}/recipe-not-yaml.yaml", "recipe-not-yaml.yaml"),
        ("unknown-field", "{root}/recipe-unknown.yaml", "lrr"),
        ("bad-lr", "{root}/recipe-bad-lr.yaml", "optim.lr"),
        ("wrong-type", "{root}/recipe-wrong-type.yaml", "max_steps"),
        ("a-list", "{root}/recipe-a-list.yaml", "recipe-a-list.yaml"),
        ("empty", "{root}/recipe-empty.yaml", "recipe-empty.yaml"),
        ("unknown-preset", "{root}/recipe-unknown-preset.yaml", "no-such-preset"),
    ]:
        cases.append(
            Case(f"train/tokenizer-recipe-{label}", ["train", "tokenizer", "--config", recipe], CONFIG, names)
        )
    # click checks that --config is a file: its own usage error, naming the option.
    cases.append(Case("train/tokenizer-recipe-a-folder", ["train", "tokenizer", "--config", "{root}/empty"], USAGE, "--config"))  # fmt: skip
    cases.append(Case("train/generator-given-tokenizer-recipe", ["train", "generator", "--config", "{root}/recipe-bad-lr.yaml"], CONFIG, "generator"))  # fmt: skip
    for label, override, names in [
        ("not-key-value", "optim.lr", "optim.lr"),
        ("unknown-section", "nosuch.x=1", "nosuch"),
        ("bad-value", "optim.lr=-5", "optim.lr"),
        ("into-a-value", "optim.lr.x=3", "optim.lr"),
    ]:
        cases.append(Case(f"train/set-{label}", ["train", "tokenizer", "--config", "configs/tiny-tokenizer.yaml", "--set", override], CONFIG, names))  # fmt: skip

    # eval, serve, data, bench: what each refuses before it starts working.
    cases += [
        Case("eval/data-missing", ["eval", "--model", "tiny", "--random-weights", "--data", "{root}/nope"], STORAGE, "--data"),
        Case("eval/data-a-file", ["eval", "--model", "tiny", "--random-weights", "--data", "{root}/a-file"], STORAGE, "--data"),
        Case("serve/model-unknown", ["serve", "--model", "no-such-model", "--port", "0"], MODEL, "no-such-model"),
        Case("serve/model-empty-folder", ["serve", "--model", "{root}/empty", "--port", "0"], MODEL, "model_index.json"),
        Case("serve/log-level", ["serve", "--model", "tiny", "--random-weights", "--log-level", "loud"], INPUT, "--log-level"),
        Case("serve/max-prompt-chars-0", ["serve", "--model", "tiny", "--random-weights", "--max-prompt-chars", "0"], USAGE, "--max-prompt-chars"),
        Case("data/sources-missing", ["data", "emoji", "--out", "{root}/emoji", "--sources", "{root}/nope"], INPUT, "nope"),
        Case("data/sources-a-text-file", ["data", "emoji", "--out", "{root}/emoji", "--sources", "{root}/a-file"], INPUT, "a-file"),
        Case("data/sources-empty-folder", ["data", "emoji", "--out", "{root}/emoji", "--sources", "{root}/empty"], INPUT, "empty"),
        Case("data/set-unknown", ["data", "emoji", "--out", "{root}/emoji", "--set", "comic-sans"], INPUT, "comic-sans"),
        Case("bench/json-under-a-file", ["bench", "--model", "tiny", "--json", "{root}/a-file/b.json"], STORAGE, "a-file"),
        Case("bench/json-dev-null-folder", ["bench", "--model", "tiny", "--json", "/dev/null/b.json"], STORAGE, "/dev/null"),
        Case("bench/model-unknown", ["bench", "--model", "no-such-model"], MODEL, "no-such-model"),
        Case("bench/unguided-too-many", ["bench", "--model", "tiny", "--device", "cpu", "--unguided-last-scales", "99", "--repeats", "1", "--warmup", "0"], INPUT, "--unguided-last-scales"),
    ]  # fmt: skip
    return cases


CASES = _cases()


# -------------------------------------------------------------------------------------- running
def _argv(case: Case, root: Path) -> list[str]:
    """The case's arguments as the process sees them (bytes decoded as Python decodes argv)."""
    return [
        os.fsdecode(arg) if isinstance(arg, bytes) else arg.replace("{root}", str(root)) for arg in case.args
    ]


def _env() -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "200",  # click's usage box wraps long option names otherwise
    }
    env.pop("OPENHART_DEBUG", None)
    return env


def _run_fresh(case: Case, root: Path) -> subprocess.CompletedProcess:
    """One case in a fresh interpreter: ``python -m openhart ...`` exactly as a user types it."""
    args = [arg if isinstance(arg, bytes) else arg.replace("{root}", str(root)) for arg in case.args]
    result = subprocess.run(
        [sys.executable, "-m", case.module, *args],
        cwd=ROOT, env=_env(), capture_output=True, timeout=PROCESS_TIMEOUT_S, check=False,
    )  # fmt: skip
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode("utf-8", "replace"),
        result.stderr.decode("utf-8", "replace"),
    )  # fmt: skip


def _run_forked(cases: list[Case], root: Path, jobs: int) -> dict[str, subprocess.CompletedProcess]:
    """Every case in a process of its own, forked from one that imported torch once."""
    request = [{"module": case.module, "argv": _argv(case, root)} for case in cases]
    runner = subprocess.run(
        [sys.executable, "-m", "tests.cli_fork_runner", "--jobs", str(jobs), "--timeout", str(PROCESS_TIMEOUT_S)],
        cwd=ROOT, env=_env(), input=json.dumps(request), capture_output=True, text=True, check=True,
        timeout=PROCESS_TIMEOUT_S * len(cases),
    )  # fmt: skip
    return {
        case.name: subprocess.CompletedProcess(r["argv"], r["returncode"], r["stdout"], r["stderr"])
        for case, r in zip(cases, json.loads(runner.stdout), strict=True)
    }


# One case per command also runs in a fresh interpreter, to show that forking changes nothing.
FRESH_SAMPLE = sorted({(case.module, str(case.args[0])): case.name for case in CASES}.values())


@pytest.fixture(scope="session")
def bad_input_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    _build_fixtures(root)
    return root


@pytest.fixture(scope="session")
def bad_input_results(bad_input_root) -> dict[str, subprocess.CompletedProcess]:
    """Every case's finished process (two at a time; more on machines with more cores)."""
    jobs = max(2, min(4, os.cpu_count() or 2))
    started = time.perf_counter()
    results = _run_forked(CASES, bad_input_root, jobs)
    clean = sum(1 for c in CASES if _problems(c, results[c.name]) == [])
    tracebacks = sum(1 for r in results.values() if "Traceback" in r.stderr)
    print(
        f"\nbad inputs: {len(CASES)} tried, {clean} clean, {tracebacks} with a traceback "
        f"({time.perf_counter() - started:.0f} s, {jobs} processes at a time)"
    )
    return results


def _problems(case: Case, result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    problems = []
    if result.returncode == 0:
        problems.append("exited 0")
    elif result.returncode != case.exit_code:
        problems.append(f"exit code {result.returncode}, expected {case.exit_code}")
    if "Traceback" in result.stderr:
        problems.append("a traceback on stderr")
    if not lines:
        problems.append("nothing on stderr")
    elif case.exit_code == USAGE:
        if case.names not in result.stderr:
            problems.append(f"the usage error does not name {case.names!r}")
    else:
        last = lines[-1]
        if not last.startswith("Error: "):
            problems.append(f"last line is not one 'Error: ...' line: {last!r}")
        if case.names not in last:
            problems.append(f"the last line does not name {case.names!r}: {last!r}")
    return problems


def test_there_are_enough_cases():
    assert len(CASES) >= 150
    assert len({case.name for case in CASES}) == len(CASES), "case names must be unique"
    commands = {case.args[0] if case.module == "openhart" else case.module for case in CASES}
    for command in ("generate", "info", "convert", "eval", "train", "serve", "data", "edit", "synthesize"):
        assert command in commands


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_ends_in_one_line_and_its_exit_code(case, bad_input_results):
    result = bad_input_results[case.name]
    problems = _problems(case, result)
    assert not problems, f"{case.name}: {problems}\nstderr tail:\n{result.stderr[-1500:]}"


def test_a_fresh_interpreter_gives_the_same_results(bad_input_root, bad_input_results):
    """``python -m openhart ...`` from scratch, one case per command: same exit code, same last line."""
    by_name = {case.name: case for case in CASES}
    with ThreadPoolExecutor(max_workers=2) as pool:
        fresh = list(pool.map(lambda name: _run_fresh(by_name[name], bad_input_root), FRESH_SAMPLE))
    for name, result in zip(FRESH_SAMPLE, fresh, strict=True):
        forked = bad_input_results[name]
        assert not _problems(by_name[name], result), (name, result.stderr[-1500:])
        assert result.returncode == forked.returncode, name
        last = [line for line in result.stderr.splitlines() if line.strip()][-1]
        assert last == [line for line in forked.stderr.splitlines() if line.strip()][-1], name


def test_debug_shows_the_traceback(tmp_path):
    """--debug (and OPENHART_DEBUG=1) lets the same error through with its traceback."""
    case = Case("debug", ["--debug", "info", str(tmp_path)], MODEL, "model_index.json")
    for variant, env_debug in ((case, None), (Case("env", ["info", str(tmp_path)], MODEL, ""), "1")):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        if env_debug:
            env["OPENHART_DEBUG"] = env_debug
        result = subprocess.run(
            [sys.executable, "-m", "openhart", *variant.args], cwd=ROOT, env=env, capture_output=True,
            text=True, timeout=PROCESS_TIMEOUT_S, check=False,
        )  # fmt: skip
        assert result.returncode != 0
        assert "Traceback" in result.stderr and "ModelFilesMissingError" in result.stderr
