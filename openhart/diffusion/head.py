"""Residual diffusion head: a small AdaLN MLP that denoises one latent token per row.

HART's transformer predicts discrete tokens; what the codebook cannot express (the residual) is
sampled per token by this head, conditioned on the transformer's last hidden state. The network
follows MAR's ``SimpleMLPAdaLN``; submodule names match the official checkpoint after stripping
``diffloss.net.``.

Dimension legend: N rows (tokens), Cz latent channels, C condition width, W head width,
S sampling steps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from openhart.diffusion.schedule import DiffusionSchedule, StepCallback
from openhart.utils.config import Config, checked
from openhart.utils.embeddings import TimestepEmbedder
from openhart.utils.random import GeneratorSpec, randn_tensor


@dataclass(frozen=True)
class DiffusionHeadConfig(Config):
    field_prefix = "DiffusionHeadConfig."

    # Cz: channels of one latent token (the residual being sampled).
    latent_channels: int = checked(kind="int", ge=1)
    # C: width of the per-token condition (the transformer's width).
    condition_dim: int = checked(kind="int", ge=1)
    width: int = checked(1024, kind="int", ge=1)  # W: hidden width of the MLP
    depth: int = checked(6, kind="int", ge=1)  # number of AdaLN residual blocks
    # Predict [eps | v] (learned-range variance) instead of eps only.
    learn_sigma: bool = checked(True, kind="bool")
    num_train_timesteps: int = checked(1000, kind="int", ge=1)
    num_inference_steps: int = checked(8, kind="int", ge=1)  # default respacing for sampling
    # Residuals are sampled in units of 1/output_scale: the sample is multiplied by it and training
    # targets are divided by it (the official release uses 0.6, its "vae_scale").
    output_scale: float = checked(1.0, kind="number", gt=0)

    def validate(self) -> None:
        if self.num_inference_steps > self.num_train_timesteps:
            self.fail(
                "num_inference_steps",
                f"an int in [1, num_train_timesteps={self.num_train_timesteps}]",
                self.num_inference_steps,
            )


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    """x + gate·MLP(LN(x)·(1+scale)+shift), with (shift, scale, gate) from the conditioning vector."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)  # 3 x (N, W)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """Linear(LN(x)·(1+scale)+shift), LayerNorm without affine parameters."""

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_channels)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)  # 2 x (N, W)
        return self.linear(modulate(self.norm_final(x), shift, scale))


NoiseSpec = torch.Tensor | tuple[torch.Tensor | None, Sequence[torch.Tensor] | None] | None


class ResidualDiffusionHead(nn.Module):
    """Per-token diffusion model: ``forward`` predicts [eps | v]; ``sample`` and ``loss`` wrap it."""

    def __init__(self, config: DiffusionHeadConfig) -> None:
        super().__init__()
        self.config = config
        width, latent = config.width, config.latent_channels
        self.out_channels = 2 * latent if config.learn_sigma else latent
        self.input_proj = nn.Linear(latent, width)
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(config.condition_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(config.depth))
        self.final_layer = FinalLayer(width, self.out_channels)
        self.train_schedule = DiffusionSchedule(config.num_train_timesteps)
        self._respaced: dict[int, DiffusionSchedule] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DiT/MAR initialisation: xavier linears, small timestep MLP, zeroed gates and output.

        Zeroed modulation makes every block start as the identity and the output start at zero,
        which keeps early training stable; gradients still reach everything through the final linear.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        for block in self.res_blocks:
            nn.init.zeros_(block.adaLN_modulation[1].weight)
            nn.init.zeros_(block.adaLN_modulation[1].bias)
        for layer in (self.final_layer.adaLN_modulation[1], self.final_layer.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def schedule(self, num_inference_steps: int | None = None) -> DiffusionSchedule:
        """The respaced sampling schedule (cached per step count)."""
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise ValueError(f"num_inference_steps: expected an int, got {steps!r}")
        if not 1 <= steps <= self.config.num_train_timesteps:
            raise ValueError(
                f"num_inference_steps: must be in [1, {self.config.num_train_timesteps}], got {steps}"
            )
        if steps not in self._respaced:
            self._respaced[steps] = self.train_schedule.respace(steps)
        return self._respaced[steps]

    # ----------------------------------------------------------------------------------------------
    # network

    def _check_inputs(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> None:
        latent, cond_dim = self.config.latent_channels, self.config.condition_dim
        if x_t.ndim != 2 or x_t.shape[1] != latent:
            raise ValueError(f"x_t: expected (N, {latent}), got shape {tuple(x_t.shape)}")
        rows = x_t.shape[0]
        if timesteps.shape != (rows,):
            raise ValueError(f"timesteps: expected shape ({rows},), got {tuple(timesteps.shape)}")
        if condition.shape != (rows, cond_dim):
            raise ValueError(f"condition: expected shape ({rows}, {cond_dim}), got {tuple(condition.shape)}")

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        """x_t (N, Cz), ORIGINAL timesteps (N,), condition (N, C) -> (N, 2Cz) [eps | v] or (N, Cz) eps."""
        self._check_inputs(x_t, timesteps, condition)
        x = self.input_proj(x_t)  # (N, W)
        y = self.time_embed(timesteps) + self.cond_embed(condition)  # (N, W)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)

    def forward_with_cfg(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, condition: torch.Tensor, guidance_scale: float
    ) -> torch.Tensor:
        """Classifier-free guided prediction for a doubled batch (2N rows: cond half, uncond half).

        The first half of x_t is used for both halves; eps = cond·(1+s) − s·uncond (HART's
        convention: s = 0 is conditional only) is returned for both halves, while the variance
        part stays per half. Returns (2N, out_channels).
        """
        _check_guidance_scale(guidance_scale)
        if x_t.ndim != 2 or x_t.shape[0] % 2:
            raise ValueError(f"x_t: expected (2N, Cz) with an even number of rows, got {tuple(x_t.shape)}")
        half = x_t[: x_t.shape[0] // 2]
        output = self(torch.cat([half, half]), timesteps, condition)  # (2N, out)
        latent = self.config.latent_channels
        eps, rest = output[:, :latent], output[:, latent:]
        cond_eps, uncond_eps = eps.chunk(2)
        guided = cond_eps * (1 + guidance_scale) - uncond_eps * guidance_scale  # (N, Cz)
        return torch.cat([torch.cat([guided, guided]), rest], dim=1)

    # ----------------------------------------------------------------------------------------------
    # sampling and training

    @torch.no_grad()
    def sample(
        self,
        condition: torch.Tensor,
        *,
        uncond_condition: torch.Tensor | None = None,
        guidance_scale: float = 0.0,
        num_inference_steps: int | None = None,
        generator: GeneratorSpec = None,
        temperature: float = 1.0,
        noise: NoiseSpec = None,
        step_callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """Sample one residual token per condition row: (N, C) -> (N, Cz), already × output_scale.

        With ``uncond_condition`` and ``guidance_scale > 0`` every step runs the doubled batch and
        guides eps (the uncond half starts from the same initial noise). ``guidance_scale == 0``
        is conditional only, so the uncond pass is skipped. ``temperature`` multiplies the
        per-step noise std. ``noise`` replays recorded draws: an initial (N, Cz) tensor, or a pair
        (initial or None, list of S per-step tensors in loop order or None); per-step tensors may
        have N rows or, under guidance, 2N rows (the uncond half of x never reaches the output,
        so only the first N rows are used). Missing parts are drawn from ``generator``: first the
        initial noise, then one (N, Cz) draw per step with index > 0. ``step_callback(index, x,
        x0)`` sees the cond rows entering each step and their clamped x0 prediction.
        The network runs in its parameters' dtype, the sampler arithmetic (and the result) in the
        condition's dtype promoted to at least float32.
        """
        config = self.config
        if (
            not isinstance(condition, torch.Tensor)
            or condition.ndim != 2
            or condition.shape[1] != config.condition_dim
        ):
            shape = (
                tuple(condition.shape) if isinstance(condition, torch.Tensor) else type(condition).__name__
            )
            raise ValueError(f"condition: expected (N, {config.condition_dim}), got {shape}")
        rows = condition.shape[0]
        if uncond_condition is not None and uncond_condition.shape != condition.shape:
            raise ValueError(
                f"uncond_condition: expected shape {tuple(condition.shape)}, got {tuple(uncond_condition.shape)}"
            )
        _check_guidance_scale(guidance_scale)
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, (int, float))
            or not math.isfinite(temperature)
            or temperature < 0
        ):
            raise ValueError(f"temperature: must be a finite number >= 0, got {temperature!r}")
        schedule = self.schedule(num_inference_steps)
        use_cfg = uncond_condition is not None and guidance_scale > 0

        device = condition.device
        # The sampler arithmetic runs in at least float32 whatever the network's dtype.
        compute_dtype = torch.promote_types(condition.dtype, torch.float32)
        param_dtype = self.input_proj.weight.dtype
        initial, step_noises = _split_noise(noise)
        latent_shape = (rows, config.latent_channels)
        if initial is None:
            initial = randn_tensor(latent_shape, generator, device=device, dtype=compute_dtype)
        elif initial.shape != latent_shape:
            raise ValueError(
                f"noise: initial noise must have shape {latent_shape}, got {tuple(initial.shape)}"
            )
        if step_noises is not None:
            if len(step_noises) != schedule.num_steps:
                raise ValueError(
                    f"noise: expected {schedule.num_steps} per-step tensors, got {len(step_noises)}"
                )
            allowed = {latent_shape, (2 * rows, config.latent_channels)} if use_cfg else {latent_shape}
            for k, step_noise in enumerate(step_noises):
                if tuple(step_noise.shape) not in allowed:
                    raise ValueError(
                        f"noise: per-step tensor {k} has shape {tuple(step_noise.shape)}, expected {latent_shape}"
                    )
            step_noises = [n[:rows].to(device=device, dtype=compute_dtype) for n in step_noises]

        if use_cfg:
            both_conditions = torch.cat([condition, uncond_condition]).to(param_dtype)  # (2N, C)

            def model_fn(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
                doubled = torch.cat([x, x]).to(param_dtype)  # (2N, Cz): the uncond half reuses x
                out = self.forward_with_cfg(
                    doubled, torch.cat([timesteps, timesteps]), both_conditions, guidance_scale
                )
                return out[:rows].to(compute_dtype)  # cond half: guided eps, its own variance
        else:
            cond = condition.to(param_dtype)

            def model_fn(x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
                return self(x.to(param_dtype), timesteps, cond).to(compute_dtype)

        residual = schedule.sample_loop(
            model_fn,
            initial.to(device=device, dtype=compute_dtype),
            step_noises=step_noises,
            generator=generator,
            temperature=float(temperature),
            on_step=step_callback,
        )
        return residual * config.output_scale

    def loss(
        self,
        target: torch.Tensor,
        condition: torch.Tensor,
        generator: GeneratorSpec = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Diffusion loss for residual tokens ``target`` (N, Cz) given ``condition`` (N, C): a scalar.

        Timesteps are uniform in [0, num_train_timesteps) and noise standard normal, both from
        ``generator``. ``mask`` (N,), optional, weights rows (mean over the rows it selects).
        """
        latent = self.config.latent_channels
        if target.ndim != 2 or target.shape[1] != latent:
            raise ValueError(f"target: expected (N, {latent}), got shape {tuple(target.shape)}")
        if condition.shape != (target.shape[0], self.config.condition_dim):
            raise ValueError(
                f"condition: expected shape ({target.shape[0]}, {self.config.condition_dim}), "
                f"got {tuple(condition.shape)}"
            )
        per_row = self.train_schedule.training_loss(
            self, target / self.config.output_scale, condition, generator, self.config.learn_sigma
        )
        if mask is None:
            return per_row.mean()
        if mask.shape != per_row.shape:
            raise ValueError(f"mask: expected shape {tuple(per_row.shape)}, got {tuple(mask.shape)}")
        mask = mask.to(per_row.dtype)
        return (per_row * mask).sum() / mask.sum().clamp(min=1)


def _check_guidance_scale(guidance_scale: float) -> None:
    if (
        isinstance(guidance_scale, bool)
        or not isinstance(guidance_scale, (int, float))
        or not math.isfinite(guidance_scale)
        or guidance_scale < 0
    ):
        raise ValueError(f"guidance_scale: must be a finite number >= 0, got {guidance_scale!r}")


def _split_noise(noise: NoiseSpec) -> tuple[torch.Tensor | None, Sequence[torch.Tensor] | None]:
    if noise is None:
        return None, None
    if isinstance(noise, torch.Tensor):
        return noise, None
    if isinstance(noise, (tuple, list)) and len(noise) == 2:
        initial, steps = noise
        if initial is not None and not isinstance(initial, torch.Tensor):
            raise TypeError("noise: the initial noise must be a tensor or None")
        if steps is not None and not all(isinstance(s, torch.Tensor) for s in steps):
            raise TypeError("noise: the per-step noises must be tensors")
        return initial, (list(steps) if steps is not None else None)
    raise TypeError("noise: expected None, a tensor, or a pair (initial, per-step list)")
