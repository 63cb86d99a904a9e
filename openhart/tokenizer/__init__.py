"""Hybrid tokenizer: conv autoencoder + multi-scale residual quantizer with a continuous residual."""

from openhart.tokenizer.hybrid import HybridTokenizer, TokenizerConfig, official_tokenizer_state_dict
from openhart.tokenizer.quantizer import MultiScaleQuantizer

__all__ = ["HybridTokenizer", "MultiScaleQuantizer", "TokenizerConfig", "official_tokenizer_state_dict"]
