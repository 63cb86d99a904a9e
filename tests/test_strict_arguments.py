"""The Python API refuses what it cannot use as given: flags that are not bools, devices this
machine lacks, text that is not Unicode, weights with NaN or Inf; and the CLI and the server share
one definition of a valid prompt and seed."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from openhart import HartPipeline
from openhart.errors import DependencyError, InvalidInputError, ModelLoadError
from openhart.models.editing import EditInputError
from openhart.serve.schema import ServeLimits, build_request_model
from openhart.utils.weights import NonFiniteWeightsError, check_finite
from openhart.validation import (
    MAX_PROMPT_CHARS,
    SEED_LIMIT,
    InvalidTypeError,
    check_bool,
    check_device,
    check_prompt,
    check_seed,
)
from tests.conftest import generators

LONE_SURROGATE = "a fox \ud800 in the snow"


@pytest.mark.parametrize(
    "flag", ["smooth_inputs", "sample_residual", "return_dict", "progress", "use_cuda_graphs"]
)
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None])
def test_pipeline_flags_must_be_bools(tiny_pipeline, flag, value):
    if flag == "use_cuda_graphs" and value is None:
        return  # None means "the default for this device"
    with pytest.raises(InvalidInputError, match=flag) as raised:
        tiny_pipeline("a cat", generator=generators(0), **{flag: value})
    assert isinstance(raised.value, TypeError)  # code that caught the old TypeError still does


@pytest.mark.parametrize("flag", ["paste_back", "return_dict"])
def test_edit_flags_must_be_bools(tiny_pipeline, flag):
    image = torch.rand(3, 32, 32)
    with pytest.raises(EditInputError, match=flag):
        tiny_pipeline.edit("a hat", image, **{flag: "yes"})


def test_prompts_must_be_unicode_text(tiny_pipeline):
    with pytest.raises(InvalidInputError, match="prompt: not valid Unicode"):
        tiny_pipeline(LONE_SURROGATE, generator=generators(0))
    with pytest.raises(InvalidInputError, match=r"prompt\[1\]"):
        tiny_pipeline(["fine", LONE_SURROGATE], generator=generators(0, 1))
    with pytest.raises(InvalidInputError, match="negative_prompt"):
        tiny_pipeline("fine", negative_prompt=LONE_SURROGATE, generator=generators(0))
    # The Python API keeps accepting an empty prompt (an unconditional sample), unlike the CLI.
    assert len(tiny_pipeline("", generator=generators(0), num_inference_steps=1).images) == 1


def test_devices_are_checked_before_torch_sees_them(tiny_pipeline):
    with pytest.raises(InvalidInputError, match="'gpu' is not a device name; available here: cpu"):
        tiny_pipeline.to("gpu")
    with pytest.raises(InvalidTypeError):
        tiny_pipeline.to(3.5)  # type: ignore[arg-type]
    missing = f"cuda:{torch.cuda.device_count() + 8}"
    with pytest.raises(DependencyError, match=rf"'{missing}' is not on this machine; available here: cpu"):
        tiny_pipeline.to(missing)
    if not torch.cuda.is_available():
        with pytest.raises(DependencyError, match="'cuda' is not on this machine"):
            tiny_pipeline.to("cuda")
    assert check_device("cpu") == torch.device("cpu")
    assert tiny_pipeline.to("cpu").device == torch.device("cpu")  # nothing moved, nothing broken


def test_from_pretrained_checks_the_device_too(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    missing = f"cuda:{torch.cuda.device_count() + 8}"
    with pytest.raises(DependencyError, match=missing):
        HartPipeline.from_pretrained(tmp_path / "model", device=missing)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tiny_pipeline, tmp_path, value):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    path = tmp_path / "model" / "transformer" / "model.safetensors"
    state = load_file(str(path))
    name = sorted(n for n, t in state.items() if t.is_floating_point())[3]
    state[name].view(-1)[-1] = value
    save_file(state, str(path))
    with pytest.raises(NonFiniteWeightsError, match=name.replace(".", r"\.")) as raised:
        HartPipeline.from_pretrained(tmp_path / "model")
    assert isinstance(raised.value, ModelLoadError) and str(path) in str(raised.value)


def test_check_finite_names_every_bad_tensor_and_passes_integer_tensors():
    state = {"ok": torch.ones(3), "ids": torch.arange(3), "bad": torch.tensor([1.0, float("nan")])}
    with pytest.raises(NonFiniteWeightsError, match=r"\['bad'\]"):
        check_finite(state, "file")
    check_finite({"ok": torch.ones(3), "ids": torch.arange(3)}, "file")


def test_one_definition_of_a_prompt_for_the_cli_and_the_server():
    assert check_prompt("a red fox") == "a red fox"
    for bad, message in [
        ("", "non-space"),
        (" \t\n", "non-space"),
        ("x" * (MAX_PROMPT_CHARS + 1), "limit"),
        (LONE_SURROGATE, "surrogate"),
    ]:
        with pytest.raises(InvalidInputError, match=message):
            check_prompt(bad)
    with pytest.raises(InvalidTypeError):
        check_prompt(b"bytes")
    request = build_request_model(ServeLimits(), default_steps=8, default_guidance=4.5)
    # pydantic refuses a lone surrogate itself (strict str); blank text is our shared definition.
    for bad in ("   ", LONE_SURROGATE, "x" * (MAX_PROMPT_CHARS + 1)):
        with pytest.raises(ValueError, match=r"non-space|unicode|at most"):
            request.model_validate({"prompt": bad})
    with pytest.raises(ValueError, match="unicode"):
        request.model_validate({"prompt": "ok", "negative_prompt": LONE_SURROGATE})
    assert ServeLimits().max_prompt_chars == MAX_PROMPT_CHARS


def test_seeds_fit_in_a_signed_64_bit_integer_for_every_image():
    assert check_seed(0) == 0 and check_seed(SEED_LIMIT - 1) == SEED_LIMIT - 1
    assert check_seed(SEED_LIMIT - 4, count=4) == SEED_LIMIT - 4
    torch.Generator().manual_seed(SEED_LIMIT - 1)  # the bound is one torch accepts
    for bad, count in [(-1, 1), (SEED_LIMIT, 1), (SEED_LIMIT - 3, 4), (2**64, 1)]:
        with pytest.raises(InvalidInputError, match="seed"):
            check_seed(bad, count)
    for bad in (True, 1.0, "3"):
        with pytest.raises(InvalidTypeError):
            check_seed(bad)


def test_check_bool_accepts_only_bools():
    assert check_bool(True, "x") is True and check_bool(False, "x") is False
    for bad in ("no", "yes", 0, 1, None, [True]):
        with pytest.raises(InvalidTypeError, match="flag_name must be True or False"):
            check_bool(bad, "flag_name")
