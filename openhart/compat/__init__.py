"""Compatibility with the released HART checkpoints (official on-disk layout and sampler)."""

from openhart.compat.loading import (
    OFFICIAL_SYSTEM_PROMPT,
    is_official_layout,
    load_official_pipeline,
    official_text_encoder_config,
    save_official_layout,
)
from openhart.compat.official import UnsupportedOfficialConfig
from openhart.compat.sampler import official_sampler_settings

__all__ = [
    "OFFICIAL_SYSTEM_PROMPT",
    "UnsupportedOfficialConfig",
    "is_official_layout",
    "load_official_pipeline",
    "official_sampler_settings",
    "official_text_encoder_config",
    "save_official_layout",
]
