"""OpenHART: the open, trainable, device-agnostic Hybrid Autoregressive Transformer."""

__version__ = "0.1.0"

from openhart.pipeline import HartPipeline, HartPipelineOutput  # after __version__, which it reads

__all__ = ["HartPipeline", "HartPipelineOutput", "__version__"]
