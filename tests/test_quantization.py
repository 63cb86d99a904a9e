"""Laptop options: int8 weights, text-encoder offload, and the ``--dtype auto`` choice on CPUs."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

from openhart import HartPipeline
from openhart.command_setup import resolve_dtype
from openhart.loading import PACKAGED_WEIGHTS
from openhart.utils.hardware import cpu_has_native_bf16
from tests.conftest import generators, make_tiny_pipeline


def require_torchao() -> None:
    pytest.importorskip("torchao", reason="int8 weights need torchao (pip install 'openhart[quantize]')")


PROMPTS = ["a red cat", "a blue car", "green tree", "a yellow sun"] * 2
SEEDS = range(8)


def images(pipe: HartPipeline, offset: int = 0) -> torch.Tensor:
    return pipe(PROMPTS, generator=generators(*(s + offset for s in SEEDS)), output_type="pt").images


def saved_bytes(module: torch.nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return len(buffer.getvalue())


def test_int8_images_stay_close_to_float32_and_weights_shrink():
    require_torchao()
    from openhart.quantization import weight_bytes

    reference_pipe = make_tiny_pipeline()
    reference = images(reference_pipe)
    other_seeds = images(reference_pipe, offset=100)
    quantized = make_tiny_pipeline()
    sizes = weight_bytes(quantized.transformer), saved_bytes(quantized.transformer)
    quantized.quantize("int8")
    assert type(quantized.transformer.blocks[0].attn.qkv_proj.weight).__name__ == "Int8Tensor"
    # Linears hold most of the tiny transformer: 887 kB → 243 kB measured (0.27x), the file 0.30x.
    assert weight_bytes(quantized.transformer) < 0.35 * sizes[0]
    assert saved_bytes(quantized.transformer) < 0.4 * sizes[1]

    out = images(quantized)
    # Measured on this preset (8 images): mean |int8 − fp32| 0.0072, where bf16 weights give 0.018
    # and two different seeds 0.27 (pixels in [0, 1]). A few tokens flip where two codes are nearly
    # tied, so the bound is on the mean: 0.02 admits bf16-sized rounding, not a different image.
    assert (out - reference).abs().mean().item() < 0.02
    assert (other_seeds - reference).abs().mean().item() > 10 * (out - reference).abs().mean().item()


def test_quantize_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode must be one of"):
        make_tiny_pipeline().quantize("int4")


def test_offloaded_text_encoder_is_freed_during_sampling_and_reloaded():
    """emoji-64's MiniLM encoder (weights from files): same images, no weights held after a call."""
    pipe = HartPipeline.from_pretrained(PACKAGED_WEIGHTS / "emoji-64")
    prompts, seeds = ["red apple emoji", "blue car"], generators(0, 1)
    reference = pipe(prompts, generator=seeds, output_type="pt").images

    seen_during_sampling = []
    pipe.enable_text_encoder_offload()
    out = pipe(
        prompts,
        generator=generators(0, 1),
        output_type="pt",
        stage_callback=lambda stage: seen_during_sampling.append(
            all(p.is_meta for p in pipe.text_encoder.parameters())
        ),
    ).images
    assert torch.equal(out, reference)
    assert all(p.is_meta for p in pipe.text_encoder.parameters())  # freed after encoding
    assert seen_during_sampling and all(seen_during_sampling[1:])  # every stage after the text encoder
    again = pipe(prompts, generator=generators(0, 1), output_type="pt").images  # reloaded from its files
    assert torch.equal(again, reference)

    with pytest.raises(ValueError, match="keeps its weights in memory only"):
        make_tiny_pipeline().enable_text_encoder_offload()  # a hash encoder has no files to reload


def write_cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("avx2 avx512f avx512_bf16", True),
        ("avx512f amx_tile amx_bf16", True),
        ("avx2 avx512f", False),
        ("", False),
    ],
)
def test_native_bf16_is_read_from_cpu_flags(tmp_path, flags, native):
    assert cpu_has_native_bf16(write_cpuinfo(tmp_path, flags)) is native


def test_dtype_auto_follows_the_cpu_and_the_model(monkeypatch, tmp_path):
    import openhart.command_setup as command_setup

    cpu = torch.device("cpu")
    monkeypatch.setattr(command_setup, "cpu_has_native_bf16", lambda: True)
    assert resolve_dtype("auto", cpu, "mit-han-lab/hart-0.7b-1024px") == torch.bfloat16
    assert resolve_dtype("auto", cpu, "hart-0.7b-1024") == torch.bfloat16
    # Small models stay float32 on CPUs (bf16 gains them nothing) unless their speed.json says otherwise.
    assert resolve_dtype("auto", cpu, "tiny") == torch.float32
    small = tmp_path / "small"
    small.mkdir()
    (small / "model.safetensors").write_bytes(b"0" * 1024)
    assert resolve_dtype("auto", cpu, str(small)) == torch.float32
    (small / "speed.json").write_text('{"unguided_last_scales": 1}')
    assert resolve_dtype("auto", cpu, str(small)) == torch.float32
    (small / "speed.json").write_text('{"cpu_dtype": "bfloat16"}')
    assert resolve_dtype("auto", cpu, str(small)) == torch.bfloat16
    assert resolve_dtype("float32", cpu, str(small)) == torch.float32  # a given dtype wins
    (small / "speed.json").write_text('{"cpu_dtype": "float16"}')
    with pytest.raises(ValueError, match="cpu_dtype"):
        resolve_dtype("auto", cpu, str(small))
    if (PACKAGED_WEIGHTS / "emoji-64").is_dir():  # the embedded model was measured in bfloat16
        for embedded in (None, "emoji-64", str(PACKAGED_WEIGHTS / "emoji-64")):
            assert resolve_dtype("auto", cpu, embedded) == torch.bfloat16, embedded
    monkeypatch.setattr(command_setup, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", cpu, "hart-0.7b-1024") == torch.float32
    assert resolve_dtype("auto", cpu, str(small.parent / "none")) == torch.float32
    (small / "speed.json").write_text('{"cpu_dtype": "bfloat16"}')
    assert resolve_dtype("auto", cpu, str(small)) == torch.float32  # emulated bf16 would be slower
    assert resolve_dtype("auto", cpu) == torch.float32
    assert resolve_dtype("auto", torch.device("mps")) == torch.bfloat16
    assert resolve_dtype("float32", torch.device("mps")) == torch.float32


def mapped_safetensors_ranges() -> list[tuple[int, int]]:
    """Address ranges of this process mapped from ``.safetensors`` files (Linux /proc/self/maps)."""
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[5].endswith(".safetensors"):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def tensors_in_file_mappings(module: torch.nn.Module) -> int:
    ranges = mapped_safetensors_ranges()
    count = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if getattr(tensor, "__tensor_flatten__", None) is not None:
            continue  # int8 subclasses: their data was made by the quantizer
        address = tensor.untyped_storage().data_ptr()
        count += any(start <= address < end for start, end in ranges)
    return count


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_int8_releases_the_text_encoders_file_mapping(caplog):
    """Quantizing leaves no weight on the memory-mapped safetensors file, so its pages can go.

    transformers loads emoji-64's MiniLM as views of the mapped file; one view left after
    quantizing (an embedding) kept a whole 3 GiB Qwen2 file resident in the laptop table.
    """
    require_torchao()
    pipe = HartPipeline.from_pretrained(PACKAGED_WEIGHTS / "emoji-64")
    if tensors_in_file_mappings(pipe.text_encoder) == 0:
        pytest.skip("this transformers version copies weights out of the file: nothing to release")
    pipe.quantize("int8")
    assert tensors_in_file_mappings(pipe.text_encoder) == 0
    assert tensors_in_file_mappings(pipe.transformer) == 0
    image = pipe("red apple emoji", generator=generators(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and image.std() > 0.01


def test_offloaded_int8_encoder_is_parked_in_a_file_not_quantized_again(monkeypatch):
    """An int8 encoder offloads to a file of its int8 weights, written once and mapped back: the
    images stay those of the resident int8 encoder, and no call quantizes it again."""
    require_torchao()
    import openhart.quantization as quantization

    pipe = HartPipeline.from_pretrained(PACKAGED_WEIGHTS / "emoji-64").quantize("int8")
    prompts = ["red apple emoji", "blue car"]
    reference = pipe(prompts, generator=generators(0, 1), output_type="pt").images
    resident_bytes = quantization.weight_bytes(pipe.text_encoder)

    def no_quantizing(module):
        raise AssertionError("the parked encoder was quantized again")

    monkeypatch.setattr(quantization, "quantize_linears_int8", no_quantizing)
    pipe.enable_text_encoder_offload()
    first = pipe(prompts, generator=generators(0, 1), output_type="pt").images
    parked = pipe._parked_text_encoder
    assert parked is not None and parked.written
    assert all(p.is_meta for p in pipe.text_encoder.parameters())  # freed after encoding
    written = parked.path.stat().st_mtime_ns
    second = pipe(prompts, generator=generators(0, 1), output_type="pt").images
    assert torch.equal(first, reference) and torch.equal(second, reference)
    assert parked.path.stat().st_mtime_ns == written  # the file is reused, not rewritten
    # int8 on disk too: the file holds what the resident int8 encoder held, plus a small header.
    assert resident_bytes <= parked.path.stat().st_size < 1.01 * resident_bytes

    pipe._reload_offloaded_text_encoder()
    assert quantization.weight_bytes(pipe.text_encoder) == resident_bytes
    folder = parked.path.parent
    del pipe, parked
    import gc

    gc.collect()
    assert not folder.exists()  # the parking folder goes with the pipeline


def test_an_int8_encoder_that_cannot_be_parked_stays_in_memory(tmp_path, caplog):
    """A parking folder that cannot be written (here: removed) loses nothing: one warning, the
    offload switched off, the same images."""
    require_torchao()
    import shutil

    from openhart.utils.parked_weights import ParkedWeights

    pipe = HartPipeline.from_pretrained(PACKAGED_WEIGHTS / "emoji-64").quantize("int8")
    reference = pipe("red apple emoji", generator=generators(0), output_type="pt").images
    pipe.enable_text_encoder_offload()
    pipe._parked_text_encoder = ParkedWeights(tmp_path)
    shutil.rmtree(pipe._parked_text_encoder.path.parent)
    with caplog.at_level("WARNING", logger="openhart"):
        image = pipe("red apple emoji", generator=generators(0), output_type="pt").images
    assert "offload switched off" in caplog.text
    assert torch.equal(image, reference)
    assert not any(p.is_meta for p in pipe.text_encoder.parameters())
    assert torch.equal(pipe("red apple emoji", generator=generators(0), output_type="pt").images, reference)
