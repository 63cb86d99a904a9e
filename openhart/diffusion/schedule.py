"""Gaussian diffusion over per-token residuals: cosine schedule, respacing, training loss, sampler.

This is the improved-DDPM (Nichol & Dhariwal 2021) machinery that HART's residual diffusion head
uses: a 1000-step cosine schedule for training, respaced to a handful of steps for sampling, an
epsilon-predicting network with an optional learned-range variance.

Dimension legend: N rows (one row per token to denoise), Cz latent channels,
S number of steps of a (possibly respaced) schedule, T number of training timesteps.

Every schedule array is float64, as the official implementation keeps them; they are gathered at
the step's index and cast to the compute dtype (at least float32) just before use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from openhart.utils.random import GeneratorSpec, rand_tensor, randn_tensor

# model_fn(x_t (N, Cz), original timesteps (N,) int64) -> (N, Cz) eps or (N, 2Cz) [eps | v].
SamplerModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# model_fn(x_t (N, Cz), original timesteps (N,) int64, condition (N, C)) -> (N, Cz) or (N, 2Cz).
TrainModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# on_step(index, x entering the step (N, Cz), clamped x0 prediction (N, Cz)).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]

_MAX_BETA = 0.999  # iDDPM clips the cosine betas: the last ones would otherwise reach 1 (no signal left).
_COSINE_OFFSET = 0.008  # the "s" of iDDPM: keeps beta_0 from being vanishingly small.


def _cosine_alpha_bar(t: float) -> float:
    return math.cos((t + _COSINE_OFFSET) / (1 + _COSINE_OFFSET) * math.pi / 2) ** 2


def cosine_betas(num_timesteps: int) -> np.ndarray:
    """betas_i = min(1 − ᾱ((i+1)/T)/ᾱ(i/T), 0.999) for the improved-DDPM cosine ᾱ (float64, (T,))."""
    betas = [
        min(1 - _cosine_alpha_bar((i + 1) / num_timesteps) / _cosine_alpha_bar(i / num_timesteps), _MAX_BETA)
        for i in range(num_timesteps)
    ]
    return np.array(betas, dtype=np.float64)


def spaced_timesteps(num_timesteps: int, num_steps: int) -> list[int]:
    """The iDDPM choice of ``num_steps`` original timesteps out of ``num_timesteps`` (one section).

    Stride (T−1)/(S−1), each position rounded with Python's ``round`` (half to even) as the
    reference does: 8 of 1000 gives [0, 143, 285, 428, 571, 714, 856, 999].
    """
    if num_steps > num_timesteps:
        raise ValueError(f"num_steps: cannot take {num_steps} steps out of {num_timesteps}")
    frac_stride = 1.0 if num_steps <= 1 else (num_timesteps - 1) / (num_steps - 1)
    taken, position = [], 0.0
    for _ in range(num_steps):
        taken.append(round(position))
        position += frac_stride
    return sorted(set(taken))


def betas_from_kept_alphas_cumprod(alphas_cumprod: np.ndarray, kept: Sequence[int]) -> np.ndarray:
    """β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_(k−1)} (ᾱ before the first kept step = 1): the betas of a chain that
    visits only the ``kept`` timesteps with their marginals q(x_t | x0) unchanged (float64)."""
    new_betas, last = [], 1.0
    for index in kept:
        new_betas.append(1.0 - alphas_cumprod[index] / last)
        last = alphas_cumprod[index]
    return np.array(new_betas, dtype=np.float64)


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (
        -1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """−log N(x; mean, e^logvar) elementwise, in nats (a continuous density, see ``training_loss``)."""
    return 0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 * torch.exp(-logvar))


class DiffusionSchedule:
    """A discrete Gaussian diffusion defined by its betas, with the iDDPM derived arrays.

    ``DiffusionSchedule(1000)`` is the cosine training schedule; ``respace(8)`` gives the sampling
    schedule whose index i stands for original timestep ``timestep_map[i]``. The network is always
    called with original timesteps, so one network serves every respacing.
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        *,
        betas: np.ndarray | None = None,
        timestep_map: Sequence[int] | None = None,
    ) -> None:
        if not isinstance(num_train_timesteps, int) or isinstance(num_train_timesteps, bool):
            raise TypeError(f"num_train_timesteps: expected an int, got {type(num_train_timesteps).__name__}")
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps: must be >= 1, got {num_train_timesteps}")
        self.num_train_timesteps = num_train_timesteps
        if betas is None:
            # The reference wraps even its training diffusion in the respacing class (keeping all
            # steps), so its betas are recomputed from the cumulative product; that differs from
            # the raw cosine betas in the last bit of a few hundred entries. Do the same.
            raw = cosine_betas(num_train_timesteps)
            betas_np = betas_from_kept_alphas_cumprod(np.cumprod(1.0 - raw), range(num_train_timesteps))
        else:
            betas_np = np.asarray(betas, dtype=np.float64)
        if betas_np.ndim != 1 or len(betas_np) == 0 or not ((betas_np > 0) & (betas_np <= 1)).all():
            raise ValueError("betas: expected a non-empty 1-D array with values in (0, 1]")
        if timestep_map is None:
            timestep_map = range(len(betas_np))
        if len(timestep_map) != len(betas_np):
            raise ValueError(f"timestep_map: length {len(timestep_map)} != number of betas {len(betas_np)}")

        # Derived arrays, computed in numpy float64 exactly as the reference computes them.
        alphas = 1.0 - betas_np
        alphas_cumprod = np.cumprod(alphas, axis=0)
        alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
        posterior_variance = betas_np * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        # posterior_variance[0] is 0 (x0 is known exactly at step 0); its log is clipped by reusing
        # the value of step 1 so the learned-range interpolation stays finite.
        if len(posterior_variance) > 1:
            log_var_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
        else:
            log_var_clipped = np.log(betas_np)  # a one-step chain: only the prior variance is defined
        arrays = {
            "betas": betas_np,
            "log_betas": np.log(betas_np),
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1),
            "posterior_variance": posterior_variance,
            "posterior_log_variance_clipped": log_var_clipped,
            "posterior_mean_coef1": betas_np * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
            "posterior_mean_coef2": (1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
            # Variance used when the network does not learn one ("fixed large" of iDDPM).
            "fixed_large_log_variance": np.log(np.append(posterior_variance[1:2], betas_np[1:])),
        }
        for name, value in arrays.items():
            setattr(self, name, torch.from_numpy(value))  # float64 CPU tensors, (S,)
        self.timestep_map = torch.tensor(
            list(timestep_map), dtype=torch.int64, device="cpu"
        )  # (S,) original timesteps
        self._tables: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    # Declared for type checkers and readers; assigned in __init__.
    betas: torch.Tensor
    log_betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    sqrt_recip_alphas_cumprod: torch.Tensor
    sqrt_recipm1_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    fixed_large_log_variance: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.betas)

    def __repr__(self) -> str:
        return (
            f"DiffusionSchedule(num_steps={self.num_steps}, num_train_timesteps={self.num_train_timesteps})"
        )

    def respace(self, num_inference_steps: int) -> DiffusionSchedule:
        """The schedule that keeps ``num_inference_steps`` evenly spaced timesteps of this one.

        New betas come from consecutive kept ᾱ (β'_k = 1 − ᾱ_{t_k}/ᾱ_{t_{k−1}}), so the marginal
        q(x_t | x0) of every kept timestep is unchanged; all other arrays are rederived from them.
        """
        if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
            raise TypeError(f"num_inference_steps: expected an int, got {type(num_inference_steps).__name__}")
        if not 1 <= num_inference_steps <= self.num_steps:
            raise ValueError(
                f"num_inference_steps: must be in [1, {self.num_steps}], got {num_inference_steps}"
            )
        kept = spaced_timesteps(self.num_steps, num_inference_steps)
        betas = betas_from_kept_alphas_cumprod(self.alphas_cumprod.numpy(), kept)
        timestep_map = [int(self.timestep_map[index]) for index in kept]
        return DiffusionSchedule(self.num_train_timesteps, betas=betas, timestep_map=timestep_map)

    # ----------------------------------------------------------------------------------------------
    # helpers

    def table(self, array: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """One of the float64 CPU arrays cast to ``dtype`` and moved to ``device``, cached.

        The copy is made once per (array, device, dtype): a sampling step then reads the tables
        without a host-to-device transfer, which is also what lets the whole loop be captured in
        a CUDA graph (see ``diffusion/graphs.py``).
        """
        key = (id(array), torch.device(device), dtype)
        cached = self._tables.get(key)
        if cached is None:
            # Cast on the CPU before moving: float64 does not exist on every accelerator (e.g. MPS).
            cached = array.to(dtype=dtype).to(device)
            self._tables[key] = cached
        return cached

    def _gather(self, array: torch.Tensor, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """array[index] cast to like's dtype/device, shaped (N, 1, ...) to broadcast against ``like``."""
        values = self.table(array, like.device, like.dtype)[index.to(like.device)]
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def _check_index(self, index: torch.Tensor, rows: int, name: str) -> torch.Tensor:
        if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name}: expected an int64 tensor of step indices")
        if index.shape != (rows,):
            raise ValueError(f"{name}: expected shape ({rows},), got {tuple(index.shape)}")
        if rows and (int(index.min()) < 0 or int(index.max()) >= self.num_steps):
            raise ValueError(f"{name}: step indices must lie in [0, {self.num_steps})")
        return index.long()

    # ----------------------------------------------------------------------------------------------
    # forward process and training

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise for step indices ``t`` (N,) of this schedule."""
        if noise.shape != x0.shape:
            raise ValueError(f"noise: shape {tuple(noise.shape)} != x0 shape {tuple(x0.shape)}")
        t = self._check_index(t, x0.shape[0], "t")
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log variance of q(x_{t−1} | x_t, x0)."""
        mean = (
            self._gather(self.posterior_mean_coef1, t, x_t) * x0
            + self._gather(self.posterior_mean_coef2, t, x_t) * x_t
        )
        return mean, self._gather(self.posterior_log_variance_clipped, t, x_t)

    def model_log_variance(
        self, var_values: torch.Tensor, t: torch.Tensor, like: torch.Tensor
    ) -> torch.Tensor:
        """Learned-range log variance: v ∈ [−1, 1] interpolates between log σ²_post and log β."""
        frac = (var_values + 1) / 2
        max_log = self._gather(self.log_betas, t, like)
        min_log = self._gather(self.posterior_log_variance_clipped, t, like)
        return frac * max_log + (1 - frac) * min_log

    def training_loss(
        self,
        model_fn: TrainModelFn,
        x0: torch.Tensor,
        condition: torch.Tensor,
        generator: GeneratorSpec = None,
        learn_sigma: bool = True,
        *,
        timesteps: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-row loss (N,): ε-MSE, plus the variational bound term when the variance is learned.

        Timesteps are uniform over this schedule's steps and the noise standard normal, both drawn
        from ``generator`` unless given. As in iDDPM, the VLB term sees the predicted mean with its
        gradient stopped, so it trains only the variance (the MSE trains the mean); it is a KL in
        bits per dimension against the true posterior for t > 0. At t = 0 iDDPM uses a discretised
        Gaussian likelihood that assumes 8-bit pixel data; residual latents are continuous, so here
        it is the continuous Gaussian negative log-likelihood of x0 under the predicted
        distribution (also in bits per dimension). Meant for the full (un-respaced) schedule.
        """
        if x0.ndim != 2:
            raise ValueError(f"x0: expected (N, Cz), got shape {tuple(x0.shape)}")
        rows, channels = x0.shape
        if condition.shape[0] != rows:
            raise ValueError(f"condition: {condition.shape[0]} rows != {rows} rows of x0")
        if timesteps is None:
            uniform = rand_tensor((rows,), generator, device=x0.device)
            timesteps = (uniform * self.num_steps).long().clamp_(max=self.num_steps - 1)
        timesteps = self._check_index(timesteps, rows, "timesteps")
        if noise is None:
            noise = randn_tensor(x0.shape, generator, device=x0.device, dtype=x0.dtype)
        x_t = self.q_sample(x0, timesteps, noise)
        output = model_fn(x_t, self.timestep_map.to(x0.device)[timesteps], condition)
        expected = 2 * channels if learn_sigma else channels
        if output.shape != (rows, expected):
            raise ValueError(f"model_fn: expected output shape {(rows, expected)}, got {tuple(output.shape)}")
        eps = output[:, :channels]
        loss = ((noise - eps) ** 2).mean(dim=1)
        if not learn_sigma:
            return loss

        frozen_eps = eps.detach()  # the VLB must not move the mean, only the variance
        x0_pred = (
            self._gather(self.sqrt_recip_alphas_cumprod, timesteps, x_t) * x_t
            - self._gather(self.sqrt_recipm1_alphas_cumprod, timesteps, x_t) * frozen_eps
        )
        model_mean, _ = self.q_posterior(x0_pred, x_t, timesteps)
        model_log_var = self.model_log_variance(output[:, channels:], timesteps, x_t)
        true_mean, true_log_var = self.q_posterior(x0, x_t, timesteps)
        kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).mean(dim=1) / math.log(2.0)
        nll = gaussian_nll(x0, model_mean, model_log_var).mean(dim=1) / math.log(2.0)
        vb = torch.where(timesteps.to(x0.device) == 0, nll, kl)
        return loss + vb

    # ----------------------------------------------------------------------------------------------
    # reverse process

    def p_sample(
        self,
        model_output: torch.Tensor,
        x: torch.Tensor,
        index: int,
        noise: torch.Tensor | None,
        *,
        temperature: float = 1.0,
        clip_denoised: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step at step ``index`` of this schedule; returns (x_{index−1}, clamped x0).

        ``model_output`` is (N, Cz) ε (fixed "large" variance) or (N, 2Cz) [ε | v] (learned range).
        x0 = clamp(√(1/ᾱ)·x − √(1/ᾱ−1)·ε, −1, 1); mean = c1·x0 + c2·x; x' = mean + σ·temperature·noise,
        with no noise at index 0. The arithmetic runs in x's dtype (at least float32: the
        √(1/ᾱ) of the last steps is ~2e4 and would overflow half precision); the float64
        coefficients are cast to it.
        """
        if not 0 <= index < self.num_steps:
            raise ValueError(f"index: must be in [0, {self.num_steps}), got {index}")
        rows, channels = x.shape
        if model_output.shape not in ((rows, channels), (rows, 2 * channels)):
            raise ValueError(
                f"model_output: expected shape {(rows, channels)} or {(rows, 2 * channels)}, "
                f"got {tuple(model_output.shape)}"
            )
        model_output = model_output.to(x.dtype)
        t = torch.full((rows,), index, dtype=torch.int64, device=x.device)
        eps = model_output[:, :channels]
        if model_output.shape[1] == 2 * channels:
            log_variance = self.model_log_variance(model_output[:, channels:], t, x)
        else:
            log_variance = self._gather(self.fixed_large_log_variance, t, x)
        x0 = (
            self._gather(self.sqrt_recip_alphas_cumprod, t, x) * x
            - self._gather(self.sqrt_recipm1_alphas_cumprod, t, x) * eps
        )
        if clip_denoised:
            x0 = x0.clamp(-1, 1)
        mean, _ = self.q_posterior(x0, x, t)
        if index == 0:
            return mean, x0
        if noise is None or noise.shape != x.shape:
            raise ValueError(f"noise: expected shape {tuple(x.shape)} at index {index}")
        return mean + torch.exp(0.5 * log_variance) * temperature * noise.to(x), x0

    def sample_loop(
        self,
        model_fn: SamplerModelFn,
        initial_noise: torch.Tensor,
        *,
        step_noises: Sequence[torch.Tensor | None] | None = None,
        generator: GeneratorSpec = None,
        temperature: float = 1.0,
        clip_denoised: bool = True,
        on_step: StepCallback | None = None,
    ) -> torch.Tensor:
        """Run indices S−1..0 from ``initial_noise`` (N, Cz); the network sees ORIGINAL timesteps.

        ``step_noises[k]`` is the noise of the k-th step in loop order (index S−1−k), for replaying
        recorded draws; otherwise each step with index > 0 draws (N, Cz) from ``generator``
        (index 0 adds no noise, so nothing is drawn for it).
        """
        if initial_noise.ndim != 2:
            raise ValueError(f"initial_noise: expected (N, Cz), got shape {tuple(initial_noise.shape)}")
        if step_noises is not None and len(step_noises) != self.num_steps:
            raise ValueError(f"step_noises: expected {self.num_steps} tensors, got {len(step_noises)}")
        x = initial_noise
        rows = x.shape[0]
        timestep_map = self.table(self.timestep_map, x.device, torch.int64)
        for k, index in enumerate(range(self.num_steps - 1, -1, -1)):
            timesteps = timestep_map[index].expand(rows)  # (N,) original timestep of this step
            output = model_fn(x, timesteps)
            if index == 0:
                noise = None
            elif step_noises is not None:
                noise = step_noises[k]
            else:
                noise = randn_tensor(x.shape, generator, device=x.device, dtype=x.dtype)
            x_next, x0 = self.p_sample(
                output, x, index, noise, temperature=temperature, clip_denoised=clip_denoised
            )
            if on_step is not None:
                on_step(index, x, x0)
            x = x_next
        return x
