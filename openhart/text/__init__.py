"""Text encoders: prompts → (context (B, T, D), mask (B, T)) for the transformer."""

from openhart.text.encoders import (
    HashTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    TextEncoderConfig,
    TransformersTextEncoder,
    build_text_encoder,
    load_text_encoder,
)

__all__ = [
    "HashTextEncoder",
    "MiniLMTextEncoder",
    "TextEncoder",
    "TextEncoderConfig",
    "TransformersTextEncoder",
    "build_text_encoder",
    "load_text_encoder",
]
