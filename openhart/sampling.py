"""Scale-by-scale sampling of HART's token pyramid, with classifier-free guidance.

Legend: B images, S scales, pn side of scale k, l = pn² tokens of a scale, V codebook size,
Cz latent channels, C transformer width, P side of the last scale.

Guidance follows HART's convention: with guidance t, ``logits = (1 + t)·cond − t·uncond``, so t = 0
is conditional-only sampling. t is ramped over scales (coarse scales barely guided): see
:func:`guidance_per_scale`. Every HART-specific knob is an argument here with a documented default;
nothing overrides the caller.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from openhart.tokenizer import MultiScaleQuantizer
from openhart.transformer import HartTransformer
from openhart.transformer.graphs import CUDAGraphGenerator
from openhart.utils.config import Config, checked
from openhart.utils.random import GeneratorSpec, exponential_tensor, sample_categorical

GUIDANCE_RAMPS = ("linear", "hart", "constant")


def guidance_per_scale(guidance_scale: float, num_scales: int, ramp: str = "linear") -> list[float]:
    """Guidance t of each scale; the last entry also guides the residual diffusion head.

    * ``"linear"`` (default): t_k = g·k/(S−1), from 0 at the 1x1 scale to g at the last one.
    * ``"hart"``: the released sampler: t_k = g·min(k, S−2)/(S−1) (its last scale reuses the value
      of the scale before, so the last scale and the residual get g·(S−2)/(S−1)).
    * ``"constant"``: t_k = g at every scale.
    """
    if ramp not in GUIDANCE_RAMPS:
        raise ValueError(f"guidance_ramp must be one of {GUIDANCE_RAMPS}, got {ramp!r}")
    if num_scales == 1 or ramp == "constant":
        return [float(guidance_scale)] * num_scales
    steps = [min(k, num_scales - 2) if ramp == "hart" else k for k in range(num_scales)]
    return [guidance_scale * k / (num_scales - 1) for k in steps]


def sampler_batch_rows(
    batch_size: int, guidance_scale: float, guidance_ramp: str, num_scales: int, unguided_last_scales: int = 0
) -> int:
    """Rows the scale passes run: 2B with CFG (prompt rows, then unconditional ones), B when no
    scale before the unguided last ones is guided (the unconditional half is then skipped)."""
    guidance = guidance_per_scale(guidance_scale, num_scales, guidance_ramp)
    guided = any(t != 0 for t in guidance[: num_scales - unguided_last_scales])
    return 2 * batch_size if guided else batch_size


def soft_input_temperature(scale_index: int, num_scales: int, ramp: str) -> tuple[float, float]:
    """(ratio, τ) of the Gumbel-softmax next-scale inputs: τ = max(0.27·(1 − 0.95·ratio), 0.005).

    ratio = k/(S−1) (the ``"hart"`` ramp reuses the previous scale's ratio at the last scale, as
    the released sampler does).
    """
    if num_scales == 1:
        return 1.0, 0.005
    k = min(scale_index, num_scales - 2) if ramp == "hart" else scale_index
    ratio = k / (num_scales - 1)
    return ratio, max(0.27 * (1 - 0.95 * ratio), 0.005)


def gumbel_soft_probs(
    logits: torch.Tensor, exponentials: torch.Tensor, ratio: float, tau: float
) -> torch.Tensor:
    """Gumbel-softmax probabilities softmax((logits·(1 + ratio) − log E)/τ), E ~ Exp(1) (gumbel = −log E)."""
    return ((logits * (1 + ratio) - exponentials.log()) / tau).softmax(dim=-1)


def check_unguided_last_scales(value: object, num_scales: int) -> None:
    """ValueError unless ``value`` is an int in [0, num_scales] (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= num_scales:
        raise ValueError(f"unguided_last_scales: expected an int in [0, {num_scales}], got {value!r}")


def per_scale(value: object, num_scales: int, name: str) -> list:
    """Broadcast a scalar (or None) to one value per scale; check a sequence's length."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != num_scales:
            raise ValueError(f"{name}: a per-scale sequence needs {num_scales} entries, got {len(value)}")
        return list(value)
    return [value] * num_scales


# Codes ranked by a partial top-k before a nucleus is cut on a CPU: almost every trained model's
# nucleus lies within them, and ranking them costs a fifth of a full sort of 1,024 codes there. Rows
# whose nucleus reaches past them are sorted in full. Accelerators sort every row: their sorts are
# cheap, and finding the wide rows would stall the launch queue on a host read once per scale.
NUCLEUS_CANDIDATES = 64


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set logits outside the top-k (ties with the k-th kept) and outside the top-p nucleus to −inf.

    logits (..., V). ``top_k`` None or 0 and ``top_p`` None or ≥ 1 disable the respective filter.
    """
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p is not None and 0 < top_p < 1:
        logits = logits.masked_fill(nucleus_drop_mask(logits, top_p), -math.inf)
    return logits


def nucleus_drop_mask(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where a code lies outside the top-p nucleus of its row. logits (..., V).

    Codes are kept in order of probability until the ones kept hold ``top_p`` of it (so the most
    likely code always is), and codes tied with the last one kept are kept too, as top-k keeps ties
    with its k-th: the nucleus does not depend on how a sort orders equal logits, which are common
    in logits computed in bfloat16.
    """
    vocab = logits.shape[-1]
    probs = logits.reshape(-1, vocab).softmax(dim=-1)  # (N, V)
    partial = logits.device.type == "cpu" and vocab > NUCLEUS_CANDIDATES
    ranked = probs.topk(NUCLEUS_CANDIDATES, dim=-1).values if partial else _ranked(probs)  # descending
    threshold, ranked_mass = _last_kept(ranked, top_p)  # (N, 1) each
    if partial:
        # A code ranked past the candidates has all their mass above it: the rows where that mass
        # is short of top_p keep more codes than were ranked, and are sorted in full.
        wide = (ranked_mass < top_p).squeeze(1)  # (N,)
        if bool(wide.any()):
            rows = wide.nonzero().squeeze(1)
            threshold[rows] = _last_kept(_ranked(probs[rows]), top_p)[0]
    return (probs < threshold).view(logits.shape)


def _ranked(probs: torch.Tensor) -> torch.Tensor:
    return probs.sort(dim=-1, descending=True).values


def _last_kept(ranked: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """From (N, k) probabilities in descending order: the probability of the last code a nucleus
    keeps (a code is kept while the codes ranked above it hold less than top_p), and the mass of
    all k. Returns (N, 1) each."""
    cumulative = ranked.cumsum(dim=-1)
    mass_above = torch.nn.functional.pad(cumulative[:, :-1], (1, 0))  # (N, k), non-decreasing
    num_kept = (mass_above < top_p).sum(dim=-1, keepdim=True)  # ≥ 1: nothing is above the first
    return ranked.gather(-1, num_kept - 1), cumulative[:, -1:]


SAMPLER_SETTINGS_NAME = "sampler.json"


@dataclass(frozen=True)
class SamplerSettings(Config):
    """How a pipeline call draws its tokens and its residual: one value, checked once.

    A model may ship its own defaults (``sampler.json`` in its folder, see
    :meth:`HartPipeline.save_pretrained`); a call's ``sampler=`` and keyword arguments override
    them. :func:`openhart.compat.official_sampler_settings` returns the released sampler's.
    """

    field_prefix = "sampler."

    # CFG strength g ≥ 0 in HART's convention (0 = conditional only); the scales get a ramp of it.
    guidance_scale: float = checked(4.5, kind="number", ge=0)
    # "linear", "hart" (the release's) or "constant"; see guidance_per_scale.
    guidance_ramp: str = checked("linear", kind="choice", choices=GUIDANCE_RAMPS)
    # Keep the k most likely codes per token (None or 0: all); one value or one per scale.
    top_k: int | tuple[int | None, ...] | None = None
    # Nucleus filter in (0, 1] (None: off); one value or one per scale.
    top_p: float | tuple[float | None, ...] | None = None
    temperature: float = checked(1.0, kind="number", gt=0)  # divides the token logits
    # Gumbel-softmax soft embeddings as next-scale inputs (the release's ``more_smooth``).
    smooth_inputs: bool = checked(False, kind="bool")
    residual_temperature: float = checked(1.0, kind="number", ge=0)  # × the residual head's step noise
    # Denoising steps of the residual head (None: the head's config).
    num_inference_steps: int | None = checked(None, kind="int", ge=1, optional=True)

    def validate(self) -> None:
        for name, integer in (("top_k", True), ("top_p", False)):
            value = getattr(self, name)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, name, value)
            for item in value if isinstance(value, tuple) else (value,):
                if item is not None and not _filter_value_ok(item, integer):
                    expected = "an int >= 0 (0: no filter)" if integer else "a number in (0, 1]"
                    self.fail(name, f"{expected} or null, or one such value per scale", value)

    def check_scales(self, num_scales: int) -> None:
        """Per-scale ``top_k`` / ``top_p`` need one entry per scale of the model they sample."""
        for name in ("top_k", "top_p"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != num_scales:
                self.fail(name, f"one value per scale ({num_scales} entries)", value)


def _filter_value_ok(value: object, integer: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if integer:
        return isinstance(value, int) and value >= 0
    return math.isfinite(value) and 0 < value <= 1


@dataclass
class ForcedTokens:
    """Teacher-forced tokens of an edit: where ``keep`` is True a scale takes the given ids.

    Tokens are still drawn everywhere (the generator's stream stays the one of generation), then
    the kept positions are replaced by ``ids``; the running latent, the next scale's input and the
    KV cache follow the replaced tokens. ``residual`` is kept where the last scale's tokens are
    kept, and sampled by the head elsewhere. Built by :mod:`openhart.models.editing`.
    """

    ids: list[torch.Tensor]  # per scale (B, pn_k²) int64: the input image's ids
    keep: list[torch.Tensor]  # per scale (B, pn_k²) bool: True = forced to ``ids``, False = sampled
    residual: torch.Tensor  # (B, Cz, P, P): the input image's continuous residual

    def mix_residual(self, sampled: torch.Tensor) -> torch.Tensor:
        """Sampled residual (B, Cz, P, P) → the input's residual at kept tokens, the sample elsewhere."""
        B, _, P, _ = sampled.shape
        keep = self.keep[-1].to(sampled.device).view(B, 1, P, P)  # row-major tokens of the last scale
        return torch.where(keep, self.residual.to(device=sampled.device, dtype=sampled.dtype), sampled)


@dataclass
class TokenPyramid:
    """What the scale sampler hands to the residual head and the decoder."""

    ids: list[torch.Tensor]  # per scale (B, pn_k²) int64
    discrete_latent: torch.Tensor  # (B, Cz, P, P): Σ Φ(up(h_k)) + h_last, the discrete-only latent
    condition: torch.Tensor  # (B·P², C) residual-head condition of the prompt
    uncond_condition: torch.Tensor | None  # (B·P², C) same for the unconditional branch, None unguided
    residual_guidance: float  # guidance t for the residual head (the last scale's)


@torch.no_grad()
def sample_token_pyramid(
    transformer: HartTransformer,
    quantizer: MultiScaleQuantizer,
    context: torch.Tensor,
    context_mask: torch.Tensor,
    uncond_context: torch.Tensor,
    uncond_mask: torch.Tensor,
    *,
    guidance_scale: float = 4.5,
    guidance_ramp: str = "linear",
    top_k: int | Sequence[int | None] | None = None,
    top_p: float | Sequence[float | None] | None = None,
    temperature: float = 1.0,
    smooth_inputs: bool = False,
    generator: GeneratorSpec = None,
    on_scale: Callable[[int, torch.Tensor], None] | None = None,
    graphs: CUDAGraphGenerator | None = None,
    unguided_last_scales: int = 0,
    forced_tokens: ForcedTokens | None = None,
    # For the golden verifier (openhart/compat/verify.py) and the tests only; pipelines never pass them.
    skip_unguided_branch: bool = True,
    replay_ids: Sequence[torch.Tensor] | None = None,
) -> TokenPyramid:
    """Sample the ids of every scale, coarse to fine, with a KV cache.

    context/uncond_context (B, T, Dctx) with masks (B, T). ``top_k``/``top_p`` may be one value or
    one per scale. ``smooth_inputs`` feeds the next scale with Gumbel-softmax (soft) token
    embeddings instead of the sampled ones (the release's ``more_smooth``). ``on_scale(k, logits)``
    is called when scale k is done, with its guided logits (B, l, V) before temperature and
    filters. ``graphs`` (for the batch this call runs, CFG doubling included) replays captured CUDA
    graphs instead of running the scale passes eagerly.

    ``unguided_last_scales`` (a speed/quality knob, 0 = off): the last n scales run the prompt
    rows only, without CFG, which halves their transformer work (at 1024 px the last three scales
    are half of the whole call) and drops the residual head's CFG too. The earlier scales are
    unchanged (same logits, same draws). With ``graphs`` the guided scales replay their graphs and
    the unguided ones run eagerly on the prompt rows of the graphs' state.

    ``forced_tokens`` (editing): after each scale's draw, the kept positions take the input's ids
    (see :class:`ForcedTokens`); with no position kept the result is generation's, draw for draw.

    Verifier-only (the golden verifier compares against recorded official runs; no pipeline
    passes these): ``skip_unguided_branch=False`` computes the unconditional half even when every
    scale's guidance is 0, as the released sampler does (the result is the same; skipping only
    saves work); ``replay_ids`` (one (B, pn_k²) tensor per scale) replaces the token draws with
    recorded ones, to replay a recorded run exactly.
    """
    cfg = transformer.config
    S = cfg.num_scales
    B = context.shape[0]
    guidance = guidance_per_scale(guidance_scale, S, guidance_ramp)
    top_ks = per_scale(top_k, S, "top_k")
    top_ps = per_scale(top_p, S, "top_p")
    check_unguided_last_scales(unguided_last_scales, S)
    if forced_tokens is not None and (len(forced_tokens.ids) != S or forced_tokens.ids[0].shape[0] != B):
        raise ValueError(f"forced_tokens: expected ids of {S} scales for {B} images")
    first_unguided = S - unguided_last_scales  # scales k >= this run the prompt rows only
    guidance = [0.0 if k >= first_unguided else t for k, t in enumerate(guidance)]
    rows = sampler_batch_rows(B, guidance_scale, guidance_ramp, S, unguided_last_scales)
    guided = not skip_unguided_branch or rows == 2 * B

    # CFG doubles the batch: rows [0, B) see the prompt, rows [B, 2B) the unconditional context.
    if guided:
        context = torch.cat((context, uncond_context))
        context_mask = torch.cat((context_mask, uncond_mask))
    if graphs is not None:
        logits = graphs.prefill(context, context_mask)
        state = graphs.state  # refilled by the prompt pass; its cache length follows every replay
    else:
        state, logits = transformer.start_generation(context, context_mask)
    P = cfg.patch_nums[-1]
    dtype = quantizer.embedding.weight.dtype
    f_hat = torch.zeros(B, cfg.latent_channels, P, P, device=context.device, dtype=dtype)
    ids_per_scale: list[torch.Tensor] = []
    next_input: torch.Tensor | None = None
    hidden = logits  # replaced at every scale ≥ 1
    for k in range(S):
        if guided and k == first_unguided:
            # From here on only the prompt rows: their cached keys/values are the first B rows.
            state, guided = state.rows(B), False
            graphs = None  # captured for the CFG batch: the prompt rows' passes run eagerly
            if k == 0:
                logits = logits[:B]
        if k > 0:
            assert next_input is not None
            inputs = torch.cat((next_input, next_input)) if guided else next_input
            if graphs is not None:
                logits, hidden = graphs.step(k, inputs)
            else:
                logits, hidden = transformer.generation_step(state, k, inputs)
        logits = logits.float()
        if guided:
            t = guidance[k]
            logits = (1 + t) * logits[:B] - t * logits[B:]  # (B, l, V)
        guided_logits = logits
        logits = filter_logits(logits / temperature, top_ks[k], top_ps[k])
        if replay_ids is not None:
            ids = replay_ids[k].to(logits.device)
        else:
            ids = sample_categorical(logits.softmax(dim=-1), generator)  # (B, l)
        keep = None
        if forced_tokens is not None:
            keep = forced_tokens.keep[k].to(ids.device)  # (B, l)
            ids = torch.where(keep, forced_tokens.ids[k].to(ids.device), ids)
        ids_per_scale.append(ids)
        if smooth_inputs:
            ratio, tau = soft_input_temperature(k, S, guidance_ramp)
            exponentials = exponential_tensor(logits.shape, generator, device=logits.device)  # (B, l, V)
            soft = gumbel_soft_probs(logits, exponentials, ratio, tau)
            h = (soft @ quantizer.embedding.weight.float()).to(dtype)  # (B, l, Cz)
            if keep is not None:  # forced tokens enter as their hard code, as in teacher forcing
                h = torch.where(keep.unsqueeze(-1), quantizer.embed(ids, check=False), h)
        else:
            h = quantizer.embed(ids, check=replay_ids is not None)  # drawn ids are in range by construction
        f_hat, next_input = quantizer.next_scale_input(f_hat, h, k)
        if on_scale is not None:
            on_scale(k, guided_logits)

    token_latents = quantizer.embed(ids_per_scale[-1], check=False)  # (B, P², Cz), checked above
    if guided:
        token_latents = torch.cat((token_latents, token_latents))
    condition = transformer.diffusion_condition(hidden, token_latents)  # (B or 2B, P², C)
    condition = condition.reshape(-1, condition.shape[-1])
    rows = B * P * P
    return TokenPyramid(
        ids=ids_per_scale,
        discrete_latent=f_hat,
        condition=condition[:rows],
        uncond_condition=condition[rows:] if guided else None,
        residual_guidance=guidance[-1] if guided else 0.0,
    )


def residual_rows_to_latent(rows: torch.Tensor, batch_size: int, side: int) -> torch.Tensor:
    """(B·P², Cz) per-token residual rows (row-major tokens) → (B, Cz, P, P) map."""
    return rows.view(batch_size, side, side, -1).permute(0, 3, 1, 2)
