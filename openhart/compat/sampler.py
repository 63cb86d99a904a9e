"""The released sampler's choices as one :class:`~openhart.sampling.SamplerSettings` value.

The official ``autoregressive_infer_cfg`` hard-codes them; here they are named settings::

    pipe(prompt, sampler=official_sampler_settings(pipe.transformer.config.num_scales))

* top-k 600 for scales 0..6 and 300 from scale 7 on, no top-p;
* the guidance ramp t_k = g·k/(S−1) whose last scale (and the residual head) reuse the value of
  scale S−2 (``guidance_ramp="hart"``);
* Gumbel-softmax soft next-scale inputs (``smooth_inputs``; the official CLI's ``more_smooth``,
  on by default there).
"""

from __future__ import annotations

from openhart.sampling import SamplerSettings


def official_top_k(num_scales: int) -> list[int]:
    return [600 if k < 7 else 300 for k in range(num_scales)]


def official_sampler_settings(
    num_scales: int, more_smooth: bool = True, guidance_scale: float = 4.5
) -> SamplerSettings:
    """The released sampler's settings for a model of ``num_scales`` scales."""
    return SamplerSettings(
        guidance_scale=guidance_scale,
        guidance_ramp="hart",
        top_k=tuple(official_top_k(num_scales)),
        top_p=None,
        smooth_inputs=more_smooth,
    )
