"""The inference fast paths give the reference path's outputs.

What runs here without a GPU: the residual sampler's pre-drawn noise (what its CUDA graph
replays) equals the eager draws, the schedule's cached device tables, the channels-last decoder.
The graphs themselves are checked on CUDA by ``benchmarks/gpu_check.py``.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import openhart.models.fast_path as fast_path_module
import openhart.models.hart as pipeline_module
from openhart.diffusion.graphs import CUDAGraphResidualSampler, draw_residual_noise
from openhart.errors import ConfigError
from openhart.models import HartPipeline, SpeedOptions
from openhart.sampling import SamplerSettings
from tests.conftest import generators, make_tiny_pipeline


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_predrawn_residual_noise_replays_the_eager_sampler(guidance):
    head = make_tiny_pipeline().diffusion_head
    rows, width = 6, head.config.condition_dim
    condition = torch.randn(rows, width, generator=torch.Generator().manual_seed(1))
    uncond = torch.randn(rows, width, generator=torch.Generator().manual_seed(2))
    # Per-image generators (what the pipeline passes): rows split across them in order.
    eager = head.sample(
        condition, uncond_condition=uncond, guidance_scale=guidance, generator=generators(5, 6)
    )
    steps = head.schedule().num_steps
    noise = draw_residual_noise(
        rows, head.config.latent_channels, steps, generators(5, 6), "cpu", torch.float32
    )
    replayed = head.sample(condition, uncond_condition=uncond, guidance_scale=guidance, noise=noise)
    assert torch.equal(eager, replayed)
    # The last step draws nothing: its entry is zeros, and the generators end where eager's do.
    assert len(noise[1]) == steps and not noise[1][-1].any()


def test_schedule_tables_are_copied_once_per_device_and_dtype():
    schedule = make_tiny_pipeline().diffusion_head.schedule()
    first = schedule.table(schedule.posterior_mean_coef1, torch.device("cpu"), torch.float32)
    assert schedule.table(schedule.posterior_mean_coef1, torch.device("cpu"), torch.float32) is first
    assert torch.equal(first, schedule.posterior_mean_coef1.float())
    assert (
        schedule.table(schedule.posterior_mean_coef1, torch.device("cpu"), torch.float64).dtype
        == torch.float64
    )


def test_channels_last_decoder_matches_the_contiguous_one():
    pipeline = make_tiny_pipeline()
    config = pipeline.tokenizer.config
    side = config.latent_size
    latent = torch.randn(2, config.latent_channels, side, side, generator=torch.Generator().manual_seed(0))
    pipeline.decoder_memory_format = torch.contiguous_format
    reference = pipeline.decode_latent(latent)
    assert pipeline.tokenizer.decoder.conv_in.weight.is_contiguous()
    pipeline.decoder_memory_format = None  # the CPU's choice: a channels-last input, weights untouched
    default = pipeline.decode_latent(latent)
    assert pipeline.tokenizer.decoder.conv_in.weight.is_contiguous()
    pipeline.decoder_memory_format = torch.channels_last
    fast = pipeline.decode_latent(latent)
    assert pipeline.tokenizer.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.is_contiguous() and fast.shape == reference.shape
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(default, fast, atol=1e-6, rtol=0)
    images = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    pipeline.decoder_memory_format = torch.contiguous_format
    again = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(images, again, atol=1e-5, rtol=1e-5)


def test_residual_graph_needs_cuda():
    head = make_tiny_pipeline().diffusion_head
    with pytest.raises(ValueError, match="CUDA"):
        CUDAGraphResidualSampler(
            head,
            4,
            torch.float32,
            torch.device("cpu"),
            guidance_scale=1.0,
            num_inference_steps=None,
            temperature=1.0,
            use_uncond=True,
        )


def test_compile_keeps_outputs_weights_and_saving(tmp_path):
    # The opt-in targets GPUs, but must stay correct wherever it runs.
    pytest.importorskip("torch._inductor")
    pipeline = make_tiny_pipeline()
    keys = set(pipeline.tokenizer.state_dict()) | set(pipeline.diffusion_head.state_dict())
    reference = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    pipeline.compile(decoder=True)  # None would leave a CPU's decoder eager (faster there)
    compiled = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(compiled, reference, atol=1e-4, rtol=1e-4)
    assert set(pipeline.tokenizer.state_dict()) | set(pipeline.diffusion_head.state_dict()) == keys
    pipeline.save_pretrained(tmp_path / "model")  # weights are saved under their usual names
    assert (tmp_path / "model" / "tokenizer" / "model.safetensors").is_file()


def test_unguided_last_scales_keep_the_guided_scales_and_halve_the_rest(monkeypatch):
    pipeline = make_tiny_pipeline()
    S = pipeline.transformer.config.num_scales
    pyramids = []
    original = pipeline_module.sample_token_pyramid

    def spy(*args, **kwargs):  # records the token pyramid each call samples
        pyramids.append(original(*args, **kwargs))
        return pyramids[-1]

    monkeypatch.setattr(pipeline_module, "sample_token_pyramid", spy)
    images = {}
    for n in (0, 2, S):
        images[n] = pipeline(
            ["a red circle", "a blue square"],
            guidance_scale=3.0,
            generator=generators(0, 1),
            output_type="pt",
            unguided_last_scales=n,
        ).images
    full, skipped = pyramids[0], pyramids[1]
    for k in range(S - 2):  # the guided scales see the same logits and draws
        assert torch.equal(full.ids[k], skipped.ids[k])
    assert skipped.uncond_condition is None and skipped.residual_guidance == 0.0
    assert not torch.equal(images[0], images[2])
    # All scales unguided is exactly the conditional-only call.
    unguided = pipeline(
        ["a red circle", "a blue square"], guidance_scale=0.0, generator=generators(0, 1), output_type="pt"
    ).images
    torch.testing.assert_close(images[S], unguided, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unguided_last_scales"):
        pipeline("a red circle", unguided_last_scales=S + 1)


def test_state_rows_give_the_same_logits_as_the_full_batch():
    transformer = make_tiny_pipeline().transformer
    cfg = transformer.config
    g = torch.Generator().manual_seed(3)
    context = torch.randn(4, cfg.context_tokens, cfg.context_dim, generator=g)
    mask = torch.ones(4, cfg.context_tokens, dtype=torch.bool)
    state, _ = transformer.start_generation(context, mask)
    for k in range(1, cfg.num_scales):
        inputs = torch.randn(4, cfg.patch_nums[k] ** 2, cfg.latent_channels, generator=g)
        narrowed = state.rows(2)
        first_rows, _ = transformer.generation_step(narrowed, k, inputs[:2])  # writes rows 0-1 only
        full, _ = transformer.generation_step(state, k, inputs)  # rewrites them with the same values
        torch.testing.assert_close(first_rows, full[:2], atol=1e-5, rtol=1e-5)
        assert narrowed.cache.length == state.cache.length


def _teacher_and_cached_logits(transformer, context, mask, inputs):
    cfg = transformer.config
    with torch.no_grad():
        teacher = transformer(context, mask, inputs).logits
    state, first = transformer.start_generation(context, mask)
    rows, start = [first], 0
    for k in range(1, cfg.num_scales):
        count = cfg.patch_nums[k] ** 2
        logits, _ = transformer.generation_step(state, k, inputs[:, start : start + count])
        rows.append(logits)
        start += count
    return teacher, torch.cat(rows, dim=1)


def test_compiled_blocks_match_the_eager_blocks_and_compile_once_for_every_layer():
    pytest.importorskip("torch._inductor")
    from torch._dynamo.utils import counters

    from openhart.transformer import HartTransformer

    pipeline = make_tiny_pipeline()
    config = dataclasses.replace(pipeline.transformer.config, depth=4)  # twice the tiny depth
    transformer = HartTransformer(config).eval()
    context, mask = pipeline.encode_prompt(["a red circle", "a blue square"])
    mask[1, 3:] = False  # a padded prompt
    inputs = torch.randn(2, config.num_image_tokens - 1, config.latent_channels)
    eager = _teacher_and_cached_logits(transformer, context, mask, inputs)
    torch._dynamo.reset()
    counters.clear()
    transformer.compile_blocks()
    compiled = _teacher_and_cached_logits(transformer, context, mask, inputs)
    for reference, fused in zip(eager, compiled, strict=True):
        torch.testing.assert_close(fused, reference, atol=1e-4, rtol=1e-4)
    # Two pieces × (teacher-forced, prompt pass, scale passes) at most: not one per layer or scale.
    assert 0 < counters["stats"]["unique_graphs"] <= 6
    transformer.compile_blocks(False)
    torch.testing.assert_close(_teacher_and_cached_logits(transformer, context, mask, inputs)[1], eager[1])


def test_the_last_scale_is_attended_without_being_stored():
    pipeline = make_tiny_pipeline()
    transformer, cfg = pipeline.transformer, pipeline.transformer.config
    context, mask = pipeline.encode_prompt(["a red circle"])
    inputs = torch.randn(1, cfg.num_image_tokens - 1, cfg.latent_channels)
    state, _ = transformer.start_generation(context, mask)
    last = cfg.patch_nums[-1] ** 2
    room = cfg.context_tokens + cfg.num_image_tokens - 1 - last
    assert state.cache.max_length == room and state.cache.keys[0].shape[2] == room
    start = 0
    for k in range(1, cfg.num_scales):
        count = cfg.patch_nums[k] ** 2
        transformer.generation_step(state, k, inputs[:, start : start + count])
        start += count
    assert state.cache.length == room + last
    with pytest.raises(ValueError, match="exceed"):  # nothing may come after the last pass
        transformer.generation_step(state, cfg.num_scales - 1, inputs[:, -last:])


@pytest.mark.parametrize("multiple", [8, 32])
def test_padded_filters_give_the_stored_filters_outputs(multiple):
    from openhart.tokenizer.autoencoder import conv_with_padded_filters

    pipeline = make_tiny_pipeline()
    decoder, config = pipeline.tokenizer.decoder, pipeline.tokenizer.config
    conv = decoder.conv_out  # 3 filters
    x = torch.randn(2, conv.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(conv_with_padded_filters(conv, x, multiple), conv(x), atol=1e-5, rtol=1e-5)
        latent = torch.randn(2, config.latent_channels, 4, 4, generator=torch.Generator().manual_seed(1))
        stored = decoder(latent)
        decoder.pad_output_filters(multiple)  # a CUDA kernel choice: the CPU decoder runs as stored
        assert torch.equal(decoder(latent), stored)
    with pytest.raises(ValueError, match="multiple"):
        decoder.pad_output_filters(0)


def _release_shaped_decoder():
    from openhart.tokenizer.autoencoder import Decoder

    # The released decoder's shape (widths 160·(1, 1, 2, 2, 4), 3 blocks per level), random weights.
    torch.manual_seed(0)
    return Decoder(
        out_channels=3, ch=160, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, latent_channels=32
    ).eval()


def test_eager_decoder_keeps_three_full_size_feature_maps_alive_and_the_same_numbers():
    from tests.live_memory import LiveTensorBytes

    decoder = _release_shaped_decoder()
    latent = torch.randn(1, 32, 4, 4, generator=torch.Generator().manual_seed(0))
    # One feature map at full resolution (64² here, 1024² for the release): 160 channels.
    feature_map = 160 * 64 * 64 * 4
    with torch.no_grad(), LiveTensorBytes() as live:
        images = decoder(latent)
    # In-place SiLU and skip, and no level input held by the caller: three maps (was five).
    assert live.peak <= 3.05 * feature_map, live.peak / feature_map
    with torch.enable_grad():  # the out-of-place path autograd needs: the very same numbers
        assert torch.equal(decoder(latent), images)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_group_norm_from_channel_sums_matches_float64(memory_format):
    from openhart.tokenizer.autoencoder import group_norm_from_channel_sums

    g = torch.Generator().manual_seed(0)
    # A mean far from zero per channel: the shifted sums must not cancel the variance away.
    x = torch.randn(2, 64, 12, 10, generator=g, dtype=torch.float64) * 3 + 200 * torch.randn(
        1, 64, 1, 1, generator=g, dtype=torch.float64
    )
    weight, bias = (
        torch.randn(64, generator=g, dtype=torch.float64),
        torch.randn(64, generator=g, dtype=torch.float64),
    )
    expected = torch.nn.functional.group_norm(x, 32, weight, bias, 1e-6)
    got = group_norm_from_channel_sums(
        x.float().contiguous(memory_format=memory_format), 32, weight.float(), bias.float(), 1e-6
    )
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=1e-4)
    plain = group_norm_from_channel_sums(x.float(), 32, None, None, 1e-6).double()
    torch.testing.assert_close(plain, torch.nn.functional.group_norm(x, 32, eps=1e-6), atol=2e-4, rtol=1e-4)


def test_decoder_with_channel_sum_statistics_gives_the_same_images():
    decoder = _release_shaped_decoder()
    latent = torch.randn(2, 32, 2, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = decoder(latent)
        decoder.use_channel_sum_statistics(True)
        summed = decoder(latent.contiguous(memory_format=torch.channels_last))
        decoder.use_channel_sum_statistics(False)
        assert torch.equal(decoder(latent), reference)
    torch.testing.assert_close(summed, reference, atol=1e-4, rtol=1e-4)


def test_storing_the_last_scale_gives_the_same_images():
    pipeline = make_tiny_pipeline()
    reference = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    pipeline.transformer.store_last_scale_keys = True
    cfg = pipeline.transformer.config
    state = pipeline.transformer.new_generation_state(1, torch.device("cpu"), torch.float32)
    assert state.cache.max_length == cfg.context_tokens + cfg.num_image_tokens - 1  # room for every pass
    stored = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    torch.testing.assert_close(stored, reference, atol=1e-6, rtol=0)


def test_pil_images_are_the_quantised_float_images():
    import numpy as np

    pipeline = make_tiny_pipeline()
    images = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    pil = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pil").images
    array = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="np").images
    expected = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(np.stack([np.asarray(image) for image in pil]), expected)
    assert array.dtype == np.float32 and np.array_equal(array, images.permute(0, 2, 3, 1).numpy())


def test_graphs_are_rebuilt_when_the_cache_size_setting_changes(monkeypatch):
    class StateOnly:
        """What the pipeline keeps of a CUDAGraphGenerator to decide on reuse (graphs need CUDA)."""

        def __init__(self, transformer, rows, device, dtype):
            self.state = transformer.new_generation_state(rows, device, dtype)

    monkeypatch.setattr(fast_path_module, "CUDAGraphGenerator", StateOnly)
    pipeline = make_tiny_pipeline()
    settings = SamplerSettings(guidance_ramp="constant")
    first = pipeline._graph_generator(1, settings, use_cuda_graphs=True)
    assert pipeline._graph_generator(1, settings, use_cuda_graphs=True) is first
    pipeline.transformer.store_last_scale_keys = True  # a bigger cache: the captured graphs can't serve
    stored = pipeline._graph_generator(1, settings, use_cuda_graphs=True)
    assert stored is not first and stored.state.cache.max_length == pipeline.transformer.cache_room()
    assert stored.state.cache.max_length > first.state.cache.max_length
    assert len(pipeline._graph_generators) == 1  # replaced, not kept beside the old one


def test_speed_options_are_one_checked_value_and_the_image_changing_one_is_saved(tmp_path):
    pipeline = make_tiny_pipeline()
    S = pipeline.transformer.config.num_scales
    assert pipeline.speed == SpeedOptions()
    reference = pipeline("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    # The options object and the per-call keyword give the same images.
    pipeline.set_speed_options(unguided_last_scales=2, store_last_scale_keys=True)
    assert pipeline.transformer.store_last_scale_keys  # the transformer's cache follows the options
    from_options = pipeline(
        "a red circle", generator=torch.Generator().manual_seed(0), output_type="pt"
    ).images
    pipeline.speed = SpeedOptions()
    from_call = pipeline(
        "a red circle", generator=torch.Generator().manual_seed(0), output_type="pt", unguided_last_scales=2
    ).images
    assert torch.equal(from_options, from_call) and not torch.equal(from_options, reference)
    # Saved with the model: the field that changes images, and nothing about this machine.
    pipeline.set_speed_options(unguided_last_scales=2, cuda_graphs=False)
    pipeline.save_pretrained(tmp_path / "saved")
    loaded = HartPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.speed == SpeedOptions(unguided_last_scales=2)
    again = loaded("a red circle", generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(again, from_call)
    # Checked once, when made or set.
    with pytest.raises(ConfigError, match=r"speed\.unguided_last_scales"):
        pipeline.speed = SpeedOptions(unguided_last_scales=S + 1)
    with pytest.raises(ConfigError, match=r"speed\.cuda_graphs"):
        SpeedOptions(cuda_graphs="yes")
    with pytest.raises(ConfigError, match=r"speed\.decoder_memory_format"):
        SpeedOptions(decoder_memory_format="preserve_format")
    with pytest.raises(TypeError, match="SpeedOptions"):
        pipeline.speed = {"cuda_graphs": False}
    pipeline.decoder_memory_format = torch.channels_last  # the attribute is sugar for the option
    assert pipeline.speed.decoder_memory_format == "channels_last"
