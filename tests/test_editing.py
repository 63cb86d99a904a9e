"""Editing (inpainting, outpainting, variations): the forced tokens, the paste-back, the API's inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import generators
from PIL import Image

from openhart.models.editing import (
    EditInputError,
    HartEditPipeline,
    feathered_weights,
    forced_tokens_for_edit,
    outpaint_canvas,
    sampled_token_masks,
    strength_to_forced_scales,
)
from openhart.sampling import sample_token_pyramid

PROMPT = "a red fox in the snow"


@pytest.fixture(scope="module")
def source(tiny_pipeline) -> torch.Tensor:
    """An input image (3, N, N) in [0, 1]: a generation of the tiny model, quantised to 8 bits as a file would be."""
    image = tiny_pipeline("a blue car", generator=generators(5), output_type="pt").images[0]
    return (image * 255).round() / 255


def _box_mask(size: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[top:bottom, left:right] = 1
    return mask


def _reconstruction(pipe, image: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (pipe.tokenizer.reconstruct(image[None] * 2 - 1) + 1) / 2  # (1, 3, N, N)


def _sample(pipe, forced, generator, **kwargs):
    B = forced.ids[0].shape[0]
    context, mask = pipe.encode_prompt([PROMPT] * B)
    uncond, uncond_mask = pipe.empty_context(B)
    return sample_token_pyramid(
        pipe.transformer,
        pipe.tokenizer.quantize,
        context,
        mask,
        uncond,
        uncond_mask,
        generator=generator,
        forced_tokens=forced,
        **kwargs,
    )


# ---------------------------------------------------------------------- the method in the sampler
@pytest.mark.parametrize("smooth_inputs", [False, True])
def test_tokens_outside_the_mask_are_the_inputs(tiny_pipeline, source, smooth_inputs):
    N = tiny_pipeline.image_size
    mask = _box_mask(N, 4, 8, 28, 24)[None, None]
    forced = forced_tokens_for_edit(tiny_pipeline.tokenizer, source[None], mask)
    ids, _ = tiny_pipeline.tokenizer.split(tiny_pipeline.tokenizer.encode(source[None] * 2 - 1))
    pyramid = _sample(tiny_pipeline, forced, generators(3), smooth_inputs=smooth_inputs, top_k=50)
    changed = 0
    for k, keep in enumerate(forced.keep):
        assert torch.equal(forced.ids[k], ids[k])
        assert torch.equal(pyramid.ids[k][keep], ids[k][keep]), f"scale {k}"
        changed += int((pyramid.ids[k] != ids[k]).sum())
    assert changed > 0  # the masked tokens were sampled, not copied
    assert not forced.keep[-1].all() and forced.keep[-1].any()


def test_downsampled_mask_threshold():
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, :, :3] = 1  # 3/8 of the image, the left columns
    sampled = sampled_token_masks(mask, (1, 2, 4, 8), threshold=0.5)
    assert sampled[0].tolist() == [[False]]  # 37.5% ≤ 50%
    assert sampled[1].view(2, 2).tolist() == [[True, False], [True, False]]  # 75% of the left tokens
    assert sampled[3].view(8, 8)[0].tolist() == [True] * 3 + [False] * 5
    assert sampled_token_masks(mask, (1,), threshold=0.3)[0].tolist() == [[True]]


@pytest.mark.parametrize(("strength", "forced_scales"), [(1.0, 0), (0.0, 6), (0.5, 3), (0.25, 5), (0.75, 2)])
def test_strength_forces_the_first_scales(tiny_pipeline, source, strength, forced_scales):
    S = tiny_pipeline.transformer.config.num_scales
    assert S == 6
    assert strength_to_forced_scales(strength, S) == forced_scales
    ones = torch.ones(1, 1, tiny_pipeline.image_size, tiny_pipeline.image_size)
    forced = forced_tokens_for_edit(tiny_pipeline.tokenizer, source[None], ones, strength=strength)
    pyramid = _sample(tiny_pipeline, forced, generators(4))
    for k in range(S):
        assert bool(forced.keep[k].all()) == (k < forced_scales)
        if k < forced_scales:
            assert torch.equal(pyramid.ids[k], forced.ids[k]), f"scale {k}"
    if forced_scales < S:  # the first sampled scale draws its own tokens
        assert not torch.equal(pyramid.ids[-1], forced.ids[-1])


# ---------------------------------------------------------------------- the invariants, end to end
def test_black_mask_gives_the_reconstruction(tiny_pipeline, source):
    N = tiny_pipeline.image_size
    black = torch.zeros(N, N)
    raw = tiny_pipeline.edit(
        PROMPT, source, black, paste_back=False, generator=generators(1), output_type="pt"
    )
    assert torch.allclose(raw.images, _reconstruction(tiny_pipeline, source), atol=1e-6, rtol=0)
    assert not torch.allclose(raw.images[0], source, atol=1e-2)  # the reconstruction is not the input
    pasted = tiny_pipeline.edit(PROMPT, source, black, generator=generators(1), output_type="pt")
    assert torch.equal(pasted.images[0], source)
    # strength 0 forces every scale, with or without a mask; smooth inputs enter forced tokens hard.
    s0 = tiny_pipeline.edit(
        PROMPT,
        source,
        strength=0.0,
        paste_back=False,
        smooth_inputs=True,
        generator=generators(2),
        output_type="pt",
    )
    assert torch.allclose(s0.images, raw.images, atol=1e-6, rtol=0)


@pytest.mark.parametrize("how", ["white mask", "strength 1, no mask"])
def test_nothing_forced_equals_generation(tiny_pipeline, source, how):
    mask = torch.ones(tiny_pipeline.image_size, tiny_pipeline.image_size) if how == "white mask" else None
    options = {"guidance_scale": 3.0, "guidance_ramp": "hart", "top_k": 40, "top_p": 0.9}
    edit = tiny_pipeline.edit(
        [PROMPT, "a cat"], source, mask, generator=generators(7, 8), output_type="pt", **options
    ).images
    generated = tiny_pipeline(
        [PROMPT, "a cat"], generator=generators(7, 8), output_type="pt", **options
    ).images
    assert torch.equal(edit, generated)


def test_inpainting_changes_the_mask_with_the_seed_and_keeps_the_rest(tiny_pipeline, source):
    N = tiny_pipeline.image_size
    mask = _box_mask(N, 8, 8, 24, 24)
    edits = tiny_pipeline.edit(PROMPT, source, mask, generator=generators(0, 1), num_images_per_prompt=2)
    once, again = (
        tiny_pipeline.edit(PROMPT, source, mask, generator=generators(0)).images[0] for _ in range(2)
    )
    radius = 1  # the default feather: 1% of 32 px, at least 1
    away = feathered_weights(mask[None, None], radius)[0, 0] == 0  # outside the mask and its seam
    inside = mask.bool()
    a, b = (torch.from_numpy(np.array(x)).float() / 255 for x in edits.images)  # (N, N, 3)
    source_hwc = source.permute(1, 2, 0)
    for image in (a, b):
        assert torch.equal(image[away], source_hwc[away])  # bit-identical to the input
    assert (a[inside] - b[inside]).abs().max() > 0.05  # two seeds, two edits of the masked region
    assert np.array_equal(np.asarray(once), np.asarray(again))  # same seed, same edit
    assert np.abs(np.asarray(once, dtype=int) - np.asarray(edits.images[0], dtype=int)).max() <= 1  # batch


def test_batch_equals_single_calls(tiny_pipeline, source):
    N = tiny_pipeline.image_size
    other = torch.flip(source, dims=(2,))
    masks = [_box_mask(N, 0, 0, 16, 32), _box_mask(N, 10, 4, 30, 20)]
    prompts = [PROMPT, "a green tree"]
    batch = tiny_pipeline.edit(
        prompts, [source, other], masks, generator=generators(3, 4), output_type="pt", strength=0.8
    ).images
    for i in range(2):
        single = tiny_pipeline.edit(
            prompts[i],
            [source, other][i],
            masks[i],
            generator=generators(3 + i),
            output_type="pt",
            strength=0.8,
        ).images
        assert (batch[i] - single[0]).abs().max() <= 1e-4


def test_other_sizes_are_resized_and_restored(tiny_pipeline, source):
    picture = Image.fromarray((source.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize(
        (50, 40)
    )
    mask = Image.new("L", (50, 40), 0)
    mask.paste(255, (20, 10, 35, 30))
    result = HartEditPipeline(tiny_pipeline)(PROMPT, picture, mask, generator=generators(2)).images[0]
    assert result.size == (50, 40) and result.mode == "RGB"
    m = torch.from_numpy(np.array(mask)).float()[None, None] / 255
    away = (feathered_weights(m, 1)[0, 0] == 0).numpy()
    assert np.array_equal(np.asarray(result)[away], np.asarray(picture)[away])
    assert not np.array_equal(np.asarray(result)[~away], np.asarray(picture)[~away])


def test_outpainting_keeps_the_input_and_fills_the_border(tiny_pipeline, source):
    small = torch.nn.functional.interpolate(source[None], size=(24, 20), mode="area")[0]
    small = (small * 255).round() / 255
    canvas, mask = outpaint_canvas(small, left=8, top=4, right=4, bottom=4)
    assert canvas.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    assert torch.equal(canvas[:, 4:28, 8:28], small)
    assert mask.sum() == 32 * 32 - 24 * 20 and mask[0, 4:28, 8:28].sum() == 0
    result = tiny_pipeline.edit(PROMPT, canvas, mask, generator=generators(6), output_type="pt").images[0]
    assert torch.equal(result[:, 5:27, 9:27], small[:, 1:-1, 1:-1])  # away from the 1 px seam
    assert (result[:, :, :7] - canvas[:, :, :7]).abs().max() > 0.05  # the new border was painted


def test_input_types_agree(tiny_pipeline, source):
    array = (source.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    mask = _box_mask(32, 0, 0, 32, 16)
    results = [
        tiny_pipeline.edit(PROMPT, image, m, generator=generators(9), output_type="np").images[0]
        for image, m in (
            (source, mask),
            (array, (mask.numpy() * 255).astype(np.uint8)),
            (Image.fromarray(array), Image.fromarray((mask.numpy() * 255).astype(np.uint8))),
            (array.astype(np.float32) / 255, mask.bool().numpy()),
        )
    ]
    for other in results[1:]:
        assert np.allclose(other, results[0], atol=1e-6)


# ---------------------------------------------------------------------- bad input
BAD_INPUTS = [
    ({"image": "in.png"}, "image"),
    ({"image": np.zeros((8, 8, 2), np.uint8)}, "image"),
    ({"image": np.full((8, 8, 3), 2.0)}, "image"),
    ({"image": np.zeros((8, 8, 3), np.int32)}, "image"),
    ({"image": torch.zeros(8, 8, 3)}, "image"),
    ({"image": torch.zeros(3, 8, 8, dtype=torch.uint8)}, "image"),
    ({"image": torch.full((3, 8, 8), float("nan"))}, "image"),
    ({"image": Image.new("CMYK", (8, 8))}, "image"),
    (
        {"prompt": ["a", "b"], "image": [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)]},
        "image[1]",
    ),
    ({"mask_image": np.zeros((9, 8))}, "mask_image"),
    ({"mask_image": torch.zeros(2, 8, 8)}, "mask_image"),
    ({"mask_image": np.full((8, 8), -1.0)}, "mask_image"),
    ({"mask_image": [np.zeros((8, 8))] * 3}, "mask_image"),
    ({"strength": 1.5}, "strength"),
    ({"strength": "high"}, "strength"),
    ({"mask_threshold": 1.0}, "mask_threshold"),
    ({"feather_radius": -1}, "feather_radius"),
    ({"paste_back": "yes"}, "paste_back"),
    ({"output_type": "jpeg"}, "output_type"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"prompt": []}, "prompt"),
    ({"forced_tokens": None}, "forced_tokens"),
]


@pytest.mark.parametrize(("change", "field"), BAD_INPUTS, ids=[f for _, f in BAD_INPUTS])
def test_bad_input_names_the_field(tiny_pipeline, change, field):
    arguments = {"prompt": PROMPT, "image": np.zeros((8, 8, 3), np.uint8), "mask_image": None, **change}
    with pytest.raises(EditInputError) as raised:
        tiny_pipeline.edit(**arguments)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")


@pytest.mark.parametrize(("sides", "field"), [({}, "outpaint"), ({"left": -4}, "outpaint.left")])
def test_bad_outpaint_names_the_side(sides, field):
    with pytest.raises(EditInputError) as raised:
        outpaint_canvas(np.zeros((8, 8, 3), np.uint8), **sides)
    assert raised.value.field == field


# ---------------------------------------------------------------------- the default model
def test_default_model_black_is_reconstruction_and_white_is_generation():
    from openhart.loading import PACKAGED_WEIGHTS
    from openhart.models.hart import HartPipeline

    folder = PACKAGED_WEIGHTS / "emoji-64"
    if not folder.is_dir():
        pytest.skip(f"the default model is not shipped in {folder}")
    pipe = HartPipeline.from_pretrained(folder)
    prompt = "red apple emoji, noto style"
    image = pipe(prompt, generator=generators(0), output_type="pt").images[0]
    image = (image * 255).round() / 255
    N = pipe.image_size
    black = pipe.edit(
        "a blue car", image, torch.zeros(N, N), paste_back=False, generator=generators(1), output_type="pt"
    ).images
    assert torch.allclose(black, _reconstruction(pipe, image), atol=1e-6, rtol=0)
    white = pipe.edit("a blue car", image, torch.ones(N, N), generator=generators(2), output_type="pt").images
    assert torch.equal(white, pipe("a blue car", generator=generators(2), output_type="pt").images)
