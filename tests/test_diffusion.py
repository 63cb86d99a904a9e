"""Residual diffusion head and schedule: respacing, official golden tensors, determinism, training."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch

from openhart.diffusion import DiffusionHeadConfig, DiffusionSchedule, ResidualDiffusionHead

logger = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HART_TINY = SHARED / "compat" / "hart-tiny"
TOL = 1e-5

SCHEDULE_ARRAYS = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
)


def tiny_head(seed: int = 0, **overrides) -> ResidualDiffusionHead:
    config = DiffusionHeadConfig(latent_channels=4, condition_dim=8, width=32, depth=2, **overrides)
    torch.manual_seed(seed)  # test-only: reproducible initial weights
    return ResidualDiffusionHead(config)


# -------------------------------------------------------------------------------------------------
# (a) schedule and respacing


def test_respaced_timesteps_for_8_steps():
    schedule = DiffusionSchedule(1000).respace(8)
    assert schedule.timestep_map.tolist() == [0, 143, 285, 428, 571, 714, 856, 999]
    assert schedule.num_steps == 8
    assert schedule.betas.dtype == torch.float64


def test_respacing_keeps_kept_marginals():
    full = DiffusionSchedule(1000)
    spaced = full.respace(8)
    kept = full.alphas_cumprod[spaced.timestep_map]
    # The last step keeps ᾱ ≈ 2e-9 through 1 − β with β ≈ 1, so expect ~1e-10 relative rounding there.
    torch.testing.assert_close(spaced.alphas_cumprod, kept, rtol=1e-9, atol=0)


def test_respacing_all_steps_equals_full_schedule():
    full = DiffusionSchedule(1000)
    same = full.respace(1000)
    assert same.timestep_map.tolist() == list(range(1000))
    for name in (*SCHEDULE_ARRAYS, "log_betas"):
        torch.testing.assert_close(getattr(same, name), getattr(full, name), rtol=1e-10, atol=1e-14, msg=name)


def test_cosine_schedule_shape():
    schedule = DiffusionSchedule(1000)

    # alpha_bar(t) = cos²((t/T + s)/(1 + s)·π/2) / alpha_bar(0): check one interior value.
    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    assert schedule.alphas_cumprod[499].item() == pytest.approx(alpha_bar(0.5) / alpha_bar(0.0), rel=1e-9)
    assert schedule.betas.max().item() == pytest.approx(0.999, abs=1e-9)
    assert (schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1]).all()


# -------------------------------------------------------------------------------------------------
# (b) official golden tensors


@pytest.fixture(scope="module")
def golden():
    if not SHARED.is_dir():
        pytest.skip(f"../shared not present: {SHARED}")
    from safetensors.torch import load_file

    tensors = load_file(str(HART_TINY / "golden" / "diff.safetensors"))
    weights = load_file(str(HART_TINY / "llm" / "model.safetensors"))
    prefix = "diffloss.net."
    state = {key[len(prefix) :]: value for key, value in weights.items() if key.startswith(prefix)}
    config = DiffusionHeadConfig(
        latent_channels=8, condition_dim=64, width=64, depth=2, learn_sigma=True, output_scale=0.6
    )
    head = ResidualDiffusionHead(config)
    head.load_state_dict(state, strict=True)
    return tensors, head.eval()


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


def test_golden_network_outputs(golden):
    tensors, head = golden
    with torch.no_grad():
        out = head(tensors["x_t"], tensors["t"], tensors["c"])
        out_cfg = head.forward_with_cfg(tensors["x_t"], tensors["t"], tensors["c"], 2.0)
    err, err_cfg = max_err(out, tensors["net_out"]), max_err(out_cfg, tensors["net_out_cfg2"])
    logger.info("net_out max abs err %.3g, net_out_cfg2 %.3g", err, err_cfg)
    assert err < TOL
    assert err_cfg < TOL


def test_golden_schedules(golden):
    tensors, head = golden
    schedules = {"train_": head.train_schedule, "gen_": head.schedule(8)}
    checked = 0
    for key, expected in tensors.items():
        for prefix, schedule in schedules.items():
            if not key.startswith(prefix):
                continue
            name = key[len(prefix) :]
            actual = getattr(schedule, name)
            if name == "timestep_map":
                assert actual.tolist() == expected.tolist()
            else:
                assert actual.dtype == torch.float64, key
                # Float64 down to numpy's libm: a few log values differ from the reference in the last bit.
                assert max_err(actual, expected) <= 1e-12 * max(1.0, expected.abs().max().item()), key
            checked += 1
    assert checked == 2 * len(SCHEDULE_ARRAYS) + 1


def test_golden_sample_replay(golden):
    tensors, head = golden
    z = tensors["sample_z"]  # (6, C): 3 cond rows then 3 uncond rows
    rows = z.shape[0] // 2
    trace = []
    out = head.sample(
        z[:rows],
        uncond_condition=z[rows:],
        guidance_scale=1.5,
        noise=(tensors["sample_noise_init"], list(tensors["sample_noise_steps"])),
        step_callback=lambda index, x, x0: trace.append((index, x.clone(), x0.clone())),
    )
    assert [index for index, _, _ in trace] == tensors["sample_trace_t"][:, 0].tolist()
    errs_x = [max_err(x, tensors["sample_trace_x_in"][k, :rows]) for k, (_, x, _) in enumerate(trace)]
    errs_x0 = [
        max_err(x0, tensors["sample_trace_pred_xstart"][k, :rows]) for k, (_, _, x0) in enumerate(trace)
    ]
    err_out = max_err(out, tensors["sample_out"][:rows])
    logger.info("replay max abs err: x_in %.3g, x0 %.3g, out %.3g", max(errs_x), max(errs_x0), err_out)
    assert max(errs_x) < TOL
    assert max(errs_x0) < TOL
    assert err_out < TOL

    # Per-step noises of N rows (the cond half only) give the same result.
    out_half = head.sample(
        z[:rows],
        uncond_condition=z[rows:],
        guidance_scale=1.5,
        noise=(tensors["sample_noise_init"], [n[:rows] for n in tensors["sample_noise_steps"]]),
    )
    torch.testing.assert_close(out_half, out, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# (c) randomness


def test_same_seed_same_sample_and_generator_lists():
    head = tiny_head()
    torch.manual_seed(123)  # test-only: a nontrivial condition
    condition = torch.randn(6, 8)
    uncond = torch.zeros(6, 8)

    def run(cond, unc, generator):
        return head.sample(cond, uncond_condition=unc, guidance_scale=2.0, generator=generator)

    first = run(condition, uncond, torch.Generator().manual_seed(5))
    second = run(condition, uncond, torch.Generator().manual_seed(5))
    other = run(condition, uncond, torch.Generator().manual_seed(6))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3
    assert first.shape == (6, 4)
    assert torch.isfinite(first).all()

    generators = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(22)]
    batched = run(condition, uncond, generators)
    alone0 = run(condition[:3], uncond[:3], torch.Generator().manual_seed(11))
    alone1 = run(condition[3:], uncond[3:], torch.Generator().manual_seed(22))
    torch.testing.assert_close(batched, torch.cat([alone0, alone1]), rtol=1e-6, atol=1e-6)


def test_zero_guidance_is_conditional_only_and_output_scale_applies():
    head = tiny_head()
    condition = torch.linspace(-1, 1, 16).reshape(2, 8)
    guided = head.sample(
        condition, uncond_condition=torch.ones(2, 8), generator=torch.Generator().manual_seed(1)
    )
    plain = head.sample(condition, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(guided, plain, rtol=0, atol=0)

    scaled_head = tiny_head(output_scale=0.5)
    scaled = scaled_head.sample(condition, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(scaled, 0.5 * plain, rtol=1e-6, atol=1e-7)


def test_temperature_zero_is_deterministic_in_steps():
    head = tiny_head()
    condition = torch.ones(2, 8)
    initial = torch.full((2, 4), 0.3)
    a = head.sample(condition, temperature=0.0, noise=initial, generator=torch.Generator().manual_seed(1))
    b = head.sample(condition, temperature=0.0, noise=initial, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# -------------------------------------------------------------------------------------------------
# (d) training


def test_training_loss_decreases():
    head = tiny_head(seed=1)
    torch.manual_seed(7)  # test-only: a fixed small data set
    condition = torch.randn(32, 8)
    targets = torch.tanh(condition[:, :4] * 1.5) * 0.8  # a learnable function of the condition
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    eval_generator_seed = 99

    def eval_loss() -> float:
        with torch.no_grad():
            losses = [
                head.loss(targets, condition, torch.Generator().manual_seed(eval_generator_seed + k)).item()
                for k in range(8)
            ]
        return sum(losses) / len(losses)

    before = eval_loss()
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        loss = head.loss(targets.repeat(4, 1), condition.repeat(4, 1), generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    logger.info("training loss %.4f -> %.4f", before, after)
    assert math.isfinite(after)
    assert after < 0.7 * before


def test_vlb_term_trains_only_the_variance():
    head = tiny_head(seed=2)
    # Make the output non-trivial so gradients flow everywhere.
    with torch.no_grad():
        head.final_layer.linear.weight.normal_(std=0.1)
    schedule = head.train_schedule
    x0 = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    condition = torch.randn(5, 8, generator=torch.Generator().manual_seed(4))
    timesteps = torch.tensor([0, 10, 200, 600, 999])
    noise = torch.randn(5, 4, generator=torch.Generator().manual_seed(5))

    # The eps rows of the final linear must get gradient from the MSE only (the VLB sees a frozen mean).
    head.zero_grad()
    schedule.training_loss(head, x0, condition, None, True, timesteps=timesteps, noise=noise).sum().backward()
    with_vlb = head.final_layer.linear.weight.grad[:4].clone()
    head.zero_grad()
    out = head(schedule.q_sample(x0, timesteps, noise), timesteps, condition)
    ((noise - out[:, :4]) ** 2).mean(dim=1).sum().backward()
    mse_grad = head.final_layer.linear.weight.grad[:4].clone()
    torch.testing.assert_close(with_vlb, mse_grad, rtol=1e-5, atol=1e-7)
    per_row = schedule.training_loss(head, x0, condition, None, True, timesteps=timesteps, noise=noise)
    assert per_row.shape == (5,)
    assert torch.isfinite(per_row).all()


# -------------------------------------------------------------------------------------------------
# (e) validation


def test_bad_config_values():
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionHeadConfig(latent_channels=4, condition_dim=8, num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionHeadConfig(latent_channels=4, condition_dim=8, num_inference_steps=1001)
    with pytest.raises(ValueError, match="output_scale"):
        DiffusionHeadConfig(latent_channels=4, condition_dim=8, output_scale=0.0)
    with pytest.raises(ValueError, match="width"):
        DiffusionHeadConfig(latent_channels=4, condition_dim=8, width=0)


def test_bad_inputs_raise_value_error():
    head = tiny_head()
    condition = torch.zeros(2, 8)
    with pytest.raises(ValueError, match="num_inference_steps"):
        head.sample(condition, num_inference_steps=0)
    with pytest.raises(ValueError, match="num_inference_steps"):
        head.sample(condition, num_inference_steps=1001)
    with pytest.raises(ValueError, match="num_inference_steps"):
        head.sample(condition, num_inference_steps=2.5)
    with pytest.raises(ValueError, match="guidance_scale"):
        head.sample(condition, uncond_condition=condition, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        head.sample(condition, uncond_condition=condition, guidance_scale=float("nan"))
    with pytest.raises(ValueError, match="condition"):
        head.sample(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="uncond_condition"):
        head.sample(condition, uncond_condition=torch.zeros(3, 8), guidance_scale=1.0)
    with pytest.raises(ValueError, match="noise"):
        head.sample(condition, noise=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="noise"):
        head.sample(condition, noise=(torch.zeros(2, 4), [torch.zeros(2, 4)] * 3))
    with pytest.raises(ValueError, match="x_t"):
        head(torch.zeros(2, 5), torch.zeros(2, dtype=torch.long), condition)
    with pytest.raises(ValueError, match="timesteps"):
        head(torch.zeros(2, 4), torch.zeros(3, dtype=torch.long), condition)
    with pytest.raises(ValueError, match="target"):
        head.loss(torch.zeros(2, 5), condition)
    with pytest.raises(ValueError, match="condition"):
        head.loss(torch.zeros(2, 4), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="num_inference_steps"):
        DiffusionSchedule(1000).respace(0)
