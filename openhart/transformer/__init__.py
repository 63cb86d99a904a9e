"""The scale-wise autoregressive transformer of HART."""

from openhart.transformer.config import HartTransformerConfig
from openhart.transformer.model import GenerationState, HartTransformer, TransformerOutput

__all__ = ["GenerationState", "HartTransformer", "HartTransformerConfig", "TransformerOutput"]
