"""The VAR-only baseline: a trained HART pipeline sampled without its residual diffusion head.

It is not a separate model: the same weights, ``sample_residual=False`` on every call, decoding
the discrete-only latent. Its transformer was trained with the HART recipe; the paper's VAR
baseline also trains the tokenizer without the continuous branch, which this wrapper does not
undo (the tokenizer is shared on purpose: it isolates what the residual head adds at sampling
time).
"""

from __future__ import annotations

from typing import Any

from openhart.models.hart import HartPipeline


def var_only(pipeline: HartPipeline) -> VarOnlyPipeline:
    """The VAR-only baseline of a HART pipeline: same weights, ``sample_residual=False`` on every call."""
    return VarOnlyPipeline(pipeline)


class VarOnlyPipeline:
    """A HartPipeline whose calls decode the discrete-only latent (no residual head).

    Everything else (attributes, ``save_pretrained``, devices) is the wrapped pipeline's.
    """

    def __init__(self, pipeline: HartPipeline) -> None:
        if not isinstance(pipeline, HartPipeline):
            raise TypeError(f"pipeline: expected a HartPipeline, got {type(pipeline).__name__}")
        self.pipeline = pipeline

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("sample_residual", False):
            raise ValueError("sample_residual: the VAR-only baseline never samples the residual")
        kwargs["sample_residual"] = False
        return self.pipeline(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this wrapper lacks; "pipeline" itself missing (e.g. during
        # unpickling) must not recurse.
        if name == "pipeline":
            raise AttributeError(name)
        return getattr(self.pipeline, name)
