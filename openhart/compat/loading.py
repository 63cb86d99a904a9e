"""Build a HartPipeline from the released checkpoint layout, and write that layout back.

Legend: T prompt tokens (300 in the release), Dctx text width (1536).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save

from openhart.compat.official import (
    official_tokenizer_config,
    official_tokenizer_state,
    official_transformer_config,
    official_transformer_state,
    read_official_weights,
    split_official_transformer_state,
    transformer_configs_from_official,
)
from openhart.diffusion import ResidualDiffusionHead
from openhart.errors import ConfigError
from openhart.models.hart import HartPipeline
from openhart.text import TextEncoder, TextEncoderConfig, build_text_encoder
from openhart.tokenizer import HybridTokenizer, TokenizerConfig, official_tokenizer_state_dict
from openhart.transformer import HartTransformer
from openhart.utils.config import atomic_write_bytes, read_json, write_json
from openhart.utils.weights import load_state_exactly

# The system prompt the released CLI puts in front of every prompt (its ``use_llm_system_prompt``,
# on by default). Its 139 Qwen2 tokens are checked against the golden ids in the tests.
OFFICIAL_SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for '
    "image generation.\n\nExamples:\n- User Prompt: A cat sleeping -> A small, fluffy white cat curled up in a "
    "round shape, sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.\n- "
    "User Prompt: A busy city street -> A bustling city street scene at dusk, featuring glowing street lamps, a "
    "diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.\n\nPlease generate only the enhanced description for the prompt below and DO NOT include any "
    'additional sentences. Start your response with "Enhanced Prompt:".\n\nUser Prompt:\n'
)


def is_official_layout(path: str | os.PathLike[str]) -> bool:
    """A folder with ``llm/config.json`` and ``tokenizer/config.json`` (the released repository)."""
    root = Path(path)
    return (root / "llm" / "config.json").is_file() and (root / "tokenizer" / "config.json").is_file()


def official_text_encoder_config(
    model_path: str | os.PathLike[str],
    max_length: int = 300,
    hidden_size: int = 1536,
    use_system_prompt: bool = True,
) -> TextEncoderConfig:
    """The released prompt encoding: Qwen2 last hidden layer, right padding to 300, optional system prompt."""
    return TextEncoderConfig(
        kind="transformers",
        model_path=str(Path(model_path).resolve()),
        max_length=max_length,
        hidden_size=hidden_size,
        padding_side="right",
        system_prompt=OFFICIAL_SYSTEM_PROMPT if use_system_prompt else None,
    )


def load_official_pipeline(
    path: str | os.PathLike[str],
    text_encoder: TextEncoder | str | os.PathLike[str],
    *,
    prefer_ema: bool = True,
    use_system_prompt: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HartPipeline:
    """A HartPipeline from the official layout (``llm/`` + ``tokenizer/``).

    ``text_encoder`` is a ready :class:`TextEncoder` or the folder of the Qwen2 text model
    (``mit-han-lab/Qwen2-VL-1.5B-Instruct``), used as the release does. ``prefer_ema`` loads
    ``llm/ema_model.bin`` when present (the weights the official scripts use).
    """
    root = Path(path)
    if not is_official_layout(root):
        raise FileNotFoundError(
            f"{root}: not the official layout (needs llm/config.json and tokenizer/config.json)"
        )
    tokenizer = load_official_tokenizer(root / "tokenizer")
    transformer, head = load_official_transformer(root / "llm", tokenizer.config, prefer_ema=prefer_ema)
    transformer_config = transformer.config
    if not isinstance(text_encoder, TextEncoder):
        text_encoder = build_text_encoder(
            official_text_encoder_config(
                text_encoder,
                max_length=transformer_config.context_tokens,
                hidden_size=transformer_config.context_dim,
                use_system_prompt=use_system_prompt,
            )
        )
    return HartPipeline(text_encoder, tokenizer, transformer, head).eval().to(device=device, dtype=dtype)


def load_official_tokenizer(folder: str | os.PathLike[str]) -> HybridTokenizer:
    """The tokenizer of an official ``tokenizer/`` folder (the discriminator is ignored)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    with _naming_config(config_path):
        config = TokenizerConfig.from_official_config(read_json(config_path))
    with torch.device("meta"):  # skip random initialisation of weights that are loaded next
        tokenizer = HybridTokenizer(config)
    tokenizer = tokenizer.to_empty(device="cpu")
    state, source = read_official_weights(folder, prefer_ema=False)
    load_state_exactly(tokenizer, official_tokenizer_state_dict(state), str(source))
    return tokenizer


def load_official_transformer(
    folder: str | os.PathLike[str], tokenizer_config: TokenizerConfig, prefer_ema: bool = True
) -> tuple[HartTransformer, ResidualDiffusionHead]:
    """Transformer and residual head of an official ``llm/`` folder (EMA weights when present and preferred)."""
    folder = Path(folder)
    config_path = folder / "config.json"
    with _naming_config(config_path):
        transformer_config, head_config = transformer_configs_from_official(
            read_json(config_path), tokenizer_config.codebook_size, tokenizer_config.latent_channels
        )
    with torch.device("meta"):
        transformer = HartTransformer(transformer_config)
        head = ResidualDiffusionHead(head_config)
    transformer, head = transformer.to_empty(device="cpu"), head.to_empty(device="cpu")
    state, source = read_official_weights(folder, prefer_ema=prefer_ema)
    transformer_state, head_state = split_official_transformer_state(state)
    load_state_exactly(transformer, transformer_state, str(source))
    load_state_exactly(head, head_state, str(source))
    return transformer, head


@contextlib.contextmanager
def _naming_config(path: Path) -> Iterator[None]:
    """Turn what a malformed official config raises (a missing key, a wrong type) into a
    :class:`ConfigError` naming the file and the field."""
    try:
        yield
    except ConfigError as error:
        if str(path) in str(error):
            raise
        raise ConfigError(f"{path}: {error}") from error
    except KeyError as error:
        raise ConfigError(f"{path}: missing field {error.args[0]!r} of the released config") from error
    except (TypeError, ValueError, AttributeError) as error:
        raise ConfigError(f"{path}: unusable released config ({error})") from error


def save_official_layout(pipeline: HartPipeline, path: str | os.PathLike[str]) -> None:
    """Write ``llm/`` and ``tokenizer/`` as the release lays them out (safetensors, no EMA file).

    The 0/−inf training mask ``attn_bias_for_masking`` (9751² floats at 1024 px) and ``lvl_1L``
    are derivable and left out; the official loader recomputes missing buffers, ours ignores them.
    """
    root = Path(path)
    llm, tok = root / "llm", root / "tokenizer"
    write_json(
        llm / "config.json",
        official_transformer_config(pipeline.transformer.config, pipeline.diffusion_head.config),
    )
    state = official_transformer_state(pipeline.transformer, pipeline.diffusion_head)
    atomic_write_bytes(
        llm / "model.safetensors", save({k: v.detach().contiguous().cpu() for k, v in state.items()})
    )
    write_json(tok / "config.json", official_tokenizer_config(pipeline.tokenizer.config))
    state = official_tokenizer_state(pipeline.tokenizer)
    atomic_write_bytes(
        tok / "model.safetensors", save({k: v.detach().contiguous().cpu() for k, v in state.items()})
    )
