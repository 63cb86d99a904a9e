"""The models wing: HART and the baselines it is measured against, as peer pipelines.

- :mod:`.hart`: :class:`HartPipeline`, prompt → images with HART.
- :mod:`.var_only`: the VAR-only baseline, HART without its residual head.
- :mod:`.latent_diffusion`: a latent-diffusion transformer on HART's tokenizer and text encoder.
- :mod:`.fast_path`: HART's speed options (:class:`SpeedOptions`), CUDA graphs, compiling.
- :mod:`.base`: what the pipelines share (components, device and dtype, prompts, the saved index);
  :mod:`.pipeline_io`: the checks of a call's inputs and its output types.

Load any of them by name or folder with :func:`openhart.load`.
"""

from openhart.models.base import PipelineBase
from openhart.models.fast_path import SpeedOptions
from openhart.models.hart import HartPipeline, HartPipelineOutput
from openhart.models.latent_diffusion import (
    DIFFUSION_BASELINE_SIZES,
    LatentDiffusionConfig,
    LatentDiffusionPipeline,
    diffusion_baseline_config,
    is_latent_diffusion_folder,
)
from openhart.models.var_only import VarOnlyPipeline, var_only

__all__ = [
    "DIFFUSION_BASELINE_SIZES",
    "HartPipeline",
    "HartPipelineOutput",
    "LatentDiffusionConfig",
    "LatentDiffusionPipeline",
    "PipelineBase",
    "SpeedOptions",
    "VarOnlyPipeline",
    "diffusion_baseline_config",
    "is_latent_diffusion_folder",
    "var_only",
]
