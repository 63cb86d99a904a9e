"""HartPipeline invariants: determinism, batch == singles, CFG, save/load, output types, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from openhart.models.hart import HartPipeline
from openhart.presets import build_pipeline
from openhart.sampling import guidance_per_scale, sample_token_pyramid
from openhart.utils.weights import WeightsMismatchError
from tests.conftest import generators, make_tiny_pipeline

PROMPTS = ["a red fox in the snow", "a blue car", "an astronaut riding a horse"]


def _images(pipeline, prompts, seeds, **kwargs) -> torch.Tensor:
    return pipeline(prompts, generator=generators(*seeds), output_type="pt", **kwargs).images


def test_same_seed_same_images_and_different_seeds_differ(tiny_pipeline):
    a = _images(tiny_pipeline, PROMPTS[:2], [1, 2])
    b = _images(tiny_pipeline, PROMPTS[:2], [1, 2])
    c = _images(tiny_pipeline, PROMPTS[:2], [3, 4])
    assert torch.equal(a, b)
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 1e-3
    assert a.shape == (2, 3, 32, 32) and torch.isfinite(a).all()


def test_batch_equals_single_calls(tiny_pipeline):
    batch = _images(tiny_pipeline, PROMPTS, [10, 11, 12])
    for i, prompt in enumerate(PROMPTS):
        single = _images(tiny_pipeline, [prompt], [10 + i])
        assert (batch[i] - single[0]).abs().max() <= 1e-4


def test_num_images_per_prompt_matches_repeated_prompts(tiny_pipeline):
    a = _images(tiny_pipeline, PROMPTS[:2], [0, 1, 2, 3], num_images_per_prompt=2)
    b = _images(tiny_pipeline, [PROMPTS[0], PROMPTS[0], PROMPTS[1], PROMPTS[1]], [0, 1, 2, 3])
    assert (a - b).abs().max() <= 1e-5


def test_guidance_zero_is_conditional_only(tiny_pipeline):
    """At g = 0 the unconditional branch must not matter: running it (doubled batch) or not gives one result."""
    pipe = tiny_pipeline
    context, mask = pipe.encode_prompt(PROMPTS[:2])
    uncond, uncond_mask = pipe.encode_prompt(["something else entirely", "ugly"])
    results = [
        sample_token_pyramid(
            pipe.transformer,
            pipe.tokenizer.quantize,
            context,
            mask,
            uncond,
            uncond_mask,
            guidance_scale=0.0,
            generator=generators(5, 6),
            skip_unguided_branch=skip,
        )
        for skip in (True, False)
    ]
    for a, b in zip(results[0].ids, results[1].ids, strict=True):
        assert torch.equal(a, b)
    assert (results[0].discrete_latent - results[1].discrete_latent).abs().max() <= 1e-5
    assert (results[0].condition - results[1].condition).abs().max() <= 1e-5
    # Through the pipeline: with g = 0 a negative prompt changes nothing; with g > 0 guidance changes the images.
    plain = _images(pipe, PROMPTS[:2], [5, 6], guidance_scale=0.0)
    negative = _images(pipe, PROMPTS[:2], [5, 6], guidance_scale=0.0, negative_prompt="ugly")
    guided = _images(pipe, PROMPTS[:2], [5, 6], guidance_scale=4.5)
    assert (plain - negative).abs().max() <= 1e-5
    assert (plain - guided).abs().max() > 1e-2


def test_guidance_ramps():
    assert guidance_per_scale(4.5, 6, "linear") == pytest.approx([0, 0.9, 1.8, 2.7, 3.6, 4.5])
    # The released sampler's values recorded in the golden set: the last scale reuses 3.6.
    assert guidance_per_scale(4.5, 6, "hart") == pytest.approx([0, 0.9, 1.8, 2.7, 3.6, 3.6])
    assert guidance_per_scale(2.0, 3, "constant") == [2.0, 2.0, 2.0]
    with pytest.raises(ValueError, match="guidance_ramp"):
        guidance_per_scale(1.0, 3, "cosine")


def test_greedy_sampling_agrees_with_teacher_forcing(tiny_pipeline):
    """top_k=1 sampling with the KV cache picks, at every scale, the argmax of the teacher-forced logits."""
    pipe = tiny_pipeline
    context, mask = pipe.encode_prompt(PROMPTS)
    uncond, uncond_mask = pipe.empty_context(3)
    pyramid = sample_token_pyramid(
        pipe.transformer, pipe.tokenizer.quantize, context, mask, uncond, uncond_mask,
        guidance_scale=0.0, top_k=1, generator=generators(0, 1, 2),
    )  # fmt: skip
    inputs = pipe.tokenizer.quantize.teacher_forcing_inputs(pyramid.ids)
    with torch.no_grad():
        logits = pipe.transformer(context, mask, inputs).logits
    assert torch.equal(logits.argmax(dim=-1), torch.cat(pyramid.ids, dim=1))


def test_sampling_options_change_outputs_and_stay_finite(tiny_pipeline):
    base = _images(tiny_pipeline, PROMPTS[:1], [0])
    for kwargs in (
        {"smooth_inputs": True},
        {"top_k": 5},
        {"top_p": 0.5},
        {"top_k": [None, 4, 4, 8, 8, 16]},
        {"temperature": 0.5},
        {"guidance_ramp": "hart"},
        {"sample_residual": False},
        {"num_inference_steps": 3},
    ):
        other = _images(tiny_pipeline, PROMPTS[:1], [0], **kwargs)
        assert torch.isfinite(other).all(), kwargs
        assert (other - base).abs().max() > 1e-4, kwargs


def test_output_types(tiny_pipeline):
    pil = tiny_pipeline(PROMPTS[0], generator=generators(0)).images
    assert isinstance(pil, list) and isinstance(pil[0], Image.Image) and pil[0].size == (32, 32)
    array = tiny_pipeline(PROMPTS[0], generator=generators(0), output_type="np").images
    assert isinstance(array, np.ndarray) and array.shape == (1, 32, 32, 3)
    assert array.min() >= 0.0 and array.max() <= 1.0
    bare = tiny_pipeline(PROMPTS[0], generator=generators(0), output_type="pt", return_dict=False)
    assert torch.is_tensor(bare) and bare.shape == (1, 3, 32, 32)
    assert np.abs(np.asarray(pil[0], dtype=np.float32) / 255 - array[0]).max() <= 0.5 / 255 + 1e-6


def test_bfloat16_pipeline_runs(tiny_pipeline):
    pipe = make_tiny_pipeline().to(dtype=torch.bfloat16)
    images = _images(pipe, PROMPTS[:2], [0, 1])
    assert images.dtype == torch.float32 and torch.isfinite(images).all()
    reference = _images(tiny_pipeline, PROMPTS[:2], [0, 1], sample_residual=False, top_k=1)
    low = _images(pipe, PROMPTS[:2], [0, 1], sample_residual=False, top_k=1)
    assert (reference - low).abs().mean() < 0.1  # same greedy model, bf16 rounding only


def test_save_load_round_trip_is_exact(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    loaded = HartPipeline.from_pretrained(tmp_path / "model")
    for name, module in tiny_pipeline.components.items():
        original, restored = module.state_dict(), loaded.components[name].state_dict()
        assert original.keys() == restored.keys(), name
        for key in original:
            assert torch.equal(original[key], restored[key]), f"{name}.{key}"
        assert module.config == loaded.components[name].config
    assert torch.equal(_images(tiny_pipeline, PROMPTS[:2], [7, 8]), _images(loaded, PROMPTS[:2], [7, 8]))


def test_loading_missing_or_mismatched_tensor_names_it(tiny_pipeline, tmp_path):
    tiny_pipeline.save_pretrained(tmp_path / "model")
    weights = tmp_path / "model" / "transformer" / "model.safetensors"
    state = load_file(str(weights))
    state.pop("blocks.1.attn.proj.weight")
    save_file(state, str(weights))
    with pytest.raises(WeightsMismatchError, match=r"blocks\.1\.attn\.proj\.weight"):
        HartPipeline.from_pretrained(tmp_path / "model")
    state["blocks.1.attn.proj.weight"] = torch.zeros(3, 3)
    save_file(state, str(weights))
    with pytest.raises(WeightsMismatchError, match=r"blocks\.1\.attn\.proj\.weight.*\(3, 3\)"):
        HartPipeline.from_pretrained(tmp_path / "model")


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        HartPipeline.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        HartPipeline.from_pretrained(tmp_path / "empty")


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"prompt": []}, ValueError, "prompt"),
        ({"prompt": 3}, TypeError, "prompt"),
        ({"prompt": ["ok", None]}, TypeError, r"prompt\[1\]"),
        ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, ValueError, "num_inference_steps"),
        ({"guidance_scale": -1.0}, ValueError, "guidance_scale"),
        ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
        ({"guidance_scale": "high"}, ValueError, "guidance_scale"),
        ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
        ({"output_type": "jpg"}, ValueError, "output_type"),
        ({"top_k": -1}, ValueError, "top_k"),
        ({"top_k": [1, 2]}, ValueError, "top_k"),
        ({"top_p": 1.5}, ValueError, "top_p"),
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"guidance_ramp": "cosine"}, ValueError, "guidance_ramp"),
        ({"negative_prompt": ["a", "b", "c"]}, ValueError, "negative_prompt"),
        ({"generator": generators(0, 1, 2)}, ValueError, "generator"),
        ({"generator": 42}, TypeError, "generator"),
    ],
)
def test_bad_arguments_raise_named_errors(tiny_pipeline, kwargs, error, name):
    call = {"prompt": ["a cat", "a dog"], **kwargs}
    with pytest.raises(error, match=name):
        tiny_pipeline(**call)


def test_bad_preset_and_seed():
    with pytest.raises(ValueError, match="unknown preset"):
        build_pipeline("hart-9b")
    with pytest.raises(ValueError, match="seed"):
        build_pipeline("tiny", seed=-1)


def test_loaders_return_eval_mode_and_the_constructor_leaves_modes_alone(tmp_path):
    pipe = make_tiny_pipeline()
    assert not any(module.training for module in pipe.components.values())
    pipe.transformer.train()  # as a trainer's network is
    rebuilt = HartPipeline(pipe.text_encoder, pipe.tokenizer, pipe.transformer, pipe.diffusion_head)
    assert rebuilt.transformer.training
    assert rebuilt.eval() is rebuilt and not rebuilt.transformer.training
    rebuilt.save_pretrained(tmp_path)
    loaded = HartPipeline.from_pretrained(tmp_path)
    assert not any(module.training for module in loaded.components.values())
