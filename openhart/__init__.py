"""OpenHART: the open, trainable, device-agnostic Hybrid Autoregressive Transformer."""

__version__ = "0.1.0"

from openhart.loading import load
from openhart.models import HartPipeline, HartPipelineOutput  # after __version__, which they read

__all__ = ["HartPipeline", "HartPipelineOutput", "__version__", "load"]
