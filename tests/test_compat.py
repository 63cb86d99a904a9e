"""Compatibility with the released checkpoints: the golden verifier, layout round trips, loader switches."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from openhart import load
from openhart.cli import app
from openhart.compat import (
    OFFICIAL_SYSTEM_PROMPT,
    UnsupportedOfficialConfig,
    load_official_pipeline,
    official_sampler_settings,
    save_official_layout,
)
from openhart.compat.official import official_tokenizer_config, transformer_configs_from_official
from openhart.compat.verify import GoldenVerifier
from openhart.compat.verify_cli import main as verify_main
from openhart.errors import ModelLoadError
from openhart.text import HashTextEncoder, TextEncoderConfig
from openhart.tokenizer import TokenizerConfig
from tests.conftest import SHARED, generators

HART_TINY = SHARED / "compat" / "hart-tiny"
needs_shared = pytest.mark.skipif(not HART_TINY.is_dir(), reason="../shared/compat/hart-tiny not present")


def _text_encoder(length: int = 8, width: int = 32) -> HashTextEncoder:
    return HashTextEncoder(TextEncoderConfig(kind="hash", max_length=length, hidden_size=width))


@needs_shared
def test_verifier_passes_every_golden_case(capsys):
    assert verify_main([str(HART_TINY)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("83 passed, 0 failed")
    assert not [line for line in lines if line.startswith(("FAIL", "UNKNOWN", "SKIP"))]


@needs_shared
def test_verifier_fails_on_a_case_it_does_not_understand(tmp_path):
    folder = tmp_path / "golden-copy"
    shutil.copytree(HART_TINY, folder)
    tensors = load_file(str(folder / "golden" / "tf.safetensors"))
    tensors["mystery_tensor"] = torch.zeros(3)
    save_file(tensors, str(folder / "golden" / "tf.safetensors"))
    results = GoldenVerifier(folder).run()
    unknown = [r for r in results if r.status == "UNKNOWN"]
    assert [r.name for r in unknown] == ["tf/mystery_tensor"]
    assert verify_main([str(folder)]) == 1


@needs_shared
def test_verifier_fails_when_a_golden_number_is_off(tmp_path):
    folder = tmp_path / "golden-copy"
    shutil.copytree(HART_TINY, folder)
    tensors = load_file(str(folder / "golden" / "diff.safetensors"))
    tensors["net_out"] = tensors["net_out"] + 1e-3
    save_file(tensors, str(folder / "golden" / "diff.safetensors"))
    failed = [r for r in GoldenVerifier(folder).run() if r.status == "FAIL"]
    assert [r.name for r in failed] == ["diff/net_out"]


@needs_shared
def test_official_layout_round_trip_and_from_pretrained(tmp_path, monkeypatch):
    pipe = load(HART_TINY, text_encoder=_text_encoder())
    save_official_layout(pipe, tmp_path / "official")
    again = load(tmp_path / "official", text_encoder=_text_encoder())
    for name in ("tokenizer", "transformer", "diffusion_head"):
        a, b = pipe.components[name].state_dict(), again.components[name].state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # The written llm config is the official one, field for field, for the fields it carries.
    original = json.loads((HART_TINY / "llm" / "config.json").read_text())
    written = json.loads((tmp_path / "official" / "llm" / "config.json").read_text())
    for field, value in written.items():
        if field in original and field not in ("architectures",):
            assert original[field] == value, field
    # Without text_encoder= the released layout asks for its Qwen2 encoder by repo id; offline and
    # not cached, that is one named error naming the repo, not a download attempt.
    from openhart.hub import ModelNotCachedError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    with pytest.raises(ModelNotCachedError, match=r"Qwen2-VL-1\.5B-Instruct"):
        load(tmp_path / "official")


@needs_shared
def test_ema_weights_are_preferred_and_pickles_load_safely(tmp_path):
    folder = tmp_path / "official"
    shutil.copytree(HART_TINY / "llm", folder / "llm")
    shutil.copytree(HART_TINY / "tokenizer", folder / "tokenizer")
    state = load_file(str(folder / "llm" / "model.safetensors"))
    ema = {name: tensor + 0.5 if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    torch.save(ema, folder / "llm" / "ema_model.bin")
    with_ema = load_official_pipeline(folder, _text_encoder())
    without = load_official_pipeline(folder, _text_encoder(), prefer_ema=False)
    assert torch.equal(with_ema.transformer.head.weight, ema["head.weight"])
    assert torch.equal(without.transformer.head.weight, state["head.weight"])
    # A pickle that is not a plain state dict is refused by weights_only loading.
    torch.save({"head.weight": torch.zeros(1), "hook": print}, folder / "llm" / "ema_model.bin")
    with pytest.raises(ModelLoadError, match=r"refused to unpickle"):
        load_official_pipeline(folder, _text_encoder())


@needs_shared
def test_convert_command_writes_a_pickle_free_openhart_model(tmp_path):
    # The tiny Qwen2 ships no tokenizer (and the real Qwen2 BPE's ids exceed its 64-word vocabulary),
    # so the CLI is checked for its argument errors and the conversion itself with a hash text encoder.
    runner = CliRunner(env={"COLUMNS": "400"})
    result = runner.invoke(
        app, ["convert", str(tmp_path / "nothing"), str(tmp_path / "out"), "--text-encoder", str(tmp_path)]
    )
    assert result.exit_code == 4 and "no such folder" in result.output  # ModelLoadError
    result = runner.invoke(
        app, ["convert", str(HART_TINY), str(tmp_path / "out"), "--text-encoder", str(tmp_path / "none")]
    )
    assert result.exit_code == 4 and "--text-encoder" in result.output and "no such folder" in result.output
    pipe = load_official_pipeline(HART_TINY, _text_encoder())
    pipe.save_pretrained(tmp_path / "converted")
    assert not list((tmp_path / "converted").rglob("*.bin"))
    loaded = load(tmp_path / "converted")
    settings = official_sampler_settings(loaded.transformer.config.num_scales)
    a = pipe(["a red cat"], generator=generators(0), output_type="pt", sampler=settings).images
    b = loaded(["a red cat"], generator=generators(0), output_type="pt", sampler=settings).images
    assert torch.equal(a, b)


def test_unsupported_official_fields_are_named():
    base = json.loads((HART_TINY / "llm" / "config.json").read_text()) if HART_TINY.is_dir() else None
    if base is None:
        pytest.skip("../shared/compat/hart-tiny not present")
    transformer, head = transformer_configs_from_official(base, 640, 8)
    assert transformer.adaln == "block" and head.output_scale == 0.6 and head.num_inference_steps == 8
    for field, value in (("attn_type", "gpt2"), ("use_cross_attn", True), ("sep_aln_pooling_mode", "median")):
        with pytest.raises(UnsupportedOfficialConfig, match=field):
            transformer_configs_from_official({**base, field: value}, 640, 8)
    with pytest.raises(UnsupportedOfficialConfig, match="brand_new_switch"):
        transformer_configs_from_official({**base, "brand_new_switch": 1}, 640, 8)


def test_an_asymmetric_decoder_is_refused_by_the_official_export():
    released = TokenizerConfig()
    assert official_tokenizer_config(released)["ch"] == released.ch
    for field in ("decoder_ch", "decoder_num_res_blocks"):
        wider = released.replace(**{field: getattr(released, field.replace("decoder_", "")) * 2})
        with pytest.raises(UnsupportedOfficialConfig, match="decoder"):
            official_tokenizer_config(wider)


def test_official_sampler_settings_and_system_prompt():
    settings = official_sampler_settings(14)
    assert settings.top_k == (600,) * 7 + (300,) * 7
    assert settings.guidance_ramp == "hart" and settings.smooth_inputs is True
    assert OFFICIAL_SYSTEM_PROMPT.startswith("Given a user prompt") and OFFICIAL_SYSTEM_PROMPT.endswith(
        "User Prompt:\n"
    )
