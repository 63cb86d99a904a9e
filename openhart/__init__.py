"""OpenHART: the open, trainable, device-agnostic Hybrid Autoregressive Transformer."""

from openhart.loading import load
from openhart.models import HartPipeline, HartPipelineOutput
from openhart.version import __version__

__all__ = ["HartPipeline", "HartPipelineOutput", "__version__", "load"]
