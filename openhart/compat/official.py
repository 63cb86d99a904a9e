"""The released HART checkpoints' on-disk layout, mapped onto OpenHART's modules (both directions).

Official layout (``mit-han-lab/hart-0.7b-1024px``)::

    llm/config.json        hart_transformer_t2i: transformer + residual diffusion head ("diffloss.net.*")
    llm/model.safetensors | llm/pytorch_model.bin
    llm/ema_model.bin      EMA weights, the ones the official scripts load
    tokenizer/config.json  hart_autoencoder_with_disc ("vae.*" + an unused discriminator "disc.*")
    tokenizer/model.safetensors | tokenizer/pytorch_model.bin

Differences in naming, all handled here: one RMSNorm weight per block (``ln_wo_grad``) serves both
sub-layers (ours has ``attn_norm`` and ``ffn_norm``); the head's norm is ``head_nm.ln_wo_grad``;
the diffusion head lives under ``diffloss.net.``; derivable buffers (``lvl_1L``,
``attn_bias_for_masking``, ``zero_k_bias``) are ignored on load.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from openhart.diffusion import DiffusionHeadConfig, ResidualDiffusionHead
from openhart.errors import ConfigError, ModelLoadError
from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.transformer import HartTransformer, HartTransformerConfig

TRANSFORMER_MODEL_TYPE = "hart_transformer_t2i"
TOKENIZER_MODEL_TYPE = "hart_autoencoder_with_disc"
RESIDUAL_SCALE = 0.6  # the release multiplies sampled residuals by this ("vae_scale")
DERIVED_BUFFERS = ("lvl_1L", "attn_bias_for_masking")

# Fields that only matter for training or for the official code's kernels: read and ignored.
_IGNORED_FIELDS = {
    "architectures", "model_type", "torch_dtype", "transformers_version", "vae_path",
    "attn_drop_rate", "drop_rate", "drop_path_rate", "cond_drop_rate", "diffusion_batch_mul",
    "diffusion_head_repeats", "flash_if_available", "fused_if_available",
}  # fmt: skip
# Fields whose value must be exactly this (no other variant exists in the release).
_REQUIRED_VALUES = {"attn_type": "llama", "mlp_type": "llama", "use_cross_attn": False, "sampler": "iddpm"}


class UnsupportedOfficialConfig(ConfigError):
    """An official config uses a field or value OpenHART cannot map (the message names it)."""


def transformer_configs_from_official(
    official: Mapping[str, Any], codebook_size: int, latent_channels: int
) -> tuple[HartTransformerConfig, DiffusionHeadConfig]:
    """Official ``llm/config.json`` (+ the tokenizer's codebook sizes) → our transformer and head configs."""
    if official.get("model_type", TRANSFORMER_MODEL_TYPE) != TRANSFORMER_MODEL_TYPE:
        raise UnsupportedOfficialConfig(
            f"llm config model_type={official['model_type']!r}, expected {TRANSFORMER_MODEL_TYPE!r}"
        )
    known = _IGNORED_FIELDS | set(_REQUIRED_VALUES) | {
        "attn_l2_norm", "context_dim", "context_norm_scale", "context_token", "depth", "diff_depth", "diff_width",
        "disable_aln", "embed_dim", "mlp_ratio", "norm_eps", "num_heads", "num_sampling_steps", "patch_nums",
        "sep_aln_pooling_mode", "shared_aln", "use_context_norm", "use_timestep_embed",
    }  # fmt: skip
    unknown = sorted(set(official) - known)
    if unknown:
        raise UnsupportedOfficialConfig(f"llm config has fields OpenHART does not know: {unknown}")
    for field, value in _REQUIRED_VALUES.items():
        if field in official and official[field] != value:
            raise UnsupportedOfficialConfig(
                f"llm config {field}={official[field]!r} is not supported (only {value!r})"
            )
    if float(official.get("context_norm_scale", 1.0)) != 1.0:
        raise UnsupportedOfficialConfig(
            f"llm config context_norm_scale={official['context_norm_scale']!r} (only 1.0)"
        )

    disable_aln, shared_aln = (
        bool(official.get("disable_aln", False)),
        bool(official.get("shared_aln", False)),
    )
    if not disable_aln and shared_aln:
        raise UnsupportedOfficialConfig("llm config shared_aln=true with disable_aln=false is not supported")
    pooling = {"max": "max", "avg": "mean"}.get(official.get("sep_aln_pooling_mode", "max"))
    if pooling is None:
        raise UnsupportedOfficialConfig(
            f"llm config sep_aln_pooling_mode={official['sep_aln_pooling_mode']!r}"
        )
    if disable_aln and shared_aln:
        adaln, pooling = "table", "mean"  # the table variant always pools with the masked mean
    else:
        adaln = "none" if disable_aln else "block"
    width, heads = int(official["embed_dim"]), int(official["num_heads"])
    transformer = HartTransformerConfig(
        codebook_size=codebook_size,
        latent_channels=latent_channels,
        patch_nums=tuple(int(p) for p in official["patch_nums"]),
        context_dim=int(official["context_dim"]),
        context_tokens=int(official["context_token"]),
        width=width,
        depth=int(official["depth"]),
        num_heads=heads,
        mlp_ratio=float(official.get("mlp_ratio", 4.0)),
        norm_eps=float(official.get("norm_eps", 1e-6)),
        adaln=adaln,
        block_pooling=pooling,
        head_pooling="max",  # the head always max-pools in the release
        level_embedding="timestep" if official.get("use_timestep_embed", False) else "table",
        context_norm=bool(official.get("use_context_norm", False)),
        attn_l2_norm=bool(official.get("attn_l2_norm", False)),
        attn_scale=0.25 / math.sqrt(width // heads),
        rope_2d="hart",
        mask_context_padding=False,
    )
    head = DiffusionHeadConfig(
        latent_channels=latent_channels,
        condition_dim=width,
        width=int(official["diff_width"]),
        depth=int(official["diff_depth"]),
        learn_sigma=True,
        num_inference_steps=int(str(official.get("num_sampling_steps", "8"))),
        output_scale=RESIDUAL_SCALE,
    )
    return transformer, head


def official_transformer_config(
    transformer: HartTransformerConfig, head: DiffusionHeadConfig
) -> dict[str, Any]:
    """Our configs → an official ``llm/config.json`` (only for configs the release can express)."""
    expected = {
        "head_pooling": "max",
        "rope_2d": "hart",
        "mask_context_padding": False,
        "attn_scale": 0.25 / math.sqrt(transformer.head_dim),
        "mlp_hidden": None,
    }
    for field, value in expected.items():
        if getattr(transformer, field) != value:
            raise UnsupportedOfficialConfig(
                f"transformer {field}={getattr(transformer, field)!r} has no official form"
            )
    if head.output_scale != RESIDUAL_SCALE or not head.learn_sigma:
        raise UnsupportedOfficialConfig("the official head needs output_scale 0.6 and a learned variance")
    return {
        "architectures": ["HARTForT2I"],
        "model_type": TRANSFORMER_MODEL_TYPE,
        "attn_type": "llama",
        "mlp_type": "llama",
        "use_cross_attn": False,
        "sampler": "iddpm",
        "context_norm_scale": 1.0,
        "attn_l2_norm": transformer.attn_l2_norm,
        "context_dim": transformer.context_dim,
        "context_token": transformer.context_tokens,
        "depth": transformer.depth,
        "diff_depth": head.depth,
        "diff_width": head.width,
        "disable_aln": transformer.adaln != "block",
        "shared_aln": transformer.adaln == "table",
        "embed_dim": transformer.width,
        "mlp_ratio": transformer.mlp_ratio,
        "norm_eps": transformer.norm_eps,
        "num_heads": transformer.num_heads,
        "num_sampling_steps": str(head.num_inference_steps),
        "patch_nums": list(transformer.patch_nums),
        "sep_aln_pooling_mode": "max" if transformer.block_pooling == "max" else "avg",
        "use_context_norm": transformer.context_norm,
        "use_timestep_embed": transformer.level_embedding == "timestep",
    }


def split_official_transformer_state(
    state: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Official llm weights → (transformer state dict, diffusion head state dict) in our names."""
    transformer: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in DERIVED_BUFFERS or name.endswith(".zero_k_bias"):
            continue
        if name.startswith("diffloss.net."):
            head[name.removeprefix("diffloss.net.")] = tensor
        elif name == "head_nm.ln_wo_grad.weight":
            transformer["head_nm.norm.weight"] = tensor
        elif name.endswith(".ln_wo_grad.weight"):  # one weight for both sub-layers of a block
            prefix = name.removesuffix("ln_wo_grad.weight")
            transformer[prefix + "attn_norm.weight"] = tensor
            transformer[prefix + "ffn_norm.weight"] = tensor
        else:
            transformer[name] = tensor
    return transformer, head


def official_transformer_state(
    transformer: HartTransformer, head: ResidualDiffusionHead
) -> dict[str, torch.Tensor]:
    """Our transformer + head → official llm weights (the blocks' two norm weights must be equal)."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in transformer.state_dict().items():
        if name.endswith(".ffn_norm.weight"):
            continue
        if name.endswith(".attn_norm.weight"):
            twin = transformer.state_dict()[name.replace("attn_norm", "ffn_norm")]
            if not torch.equal(tensor, twin):
                raise UnsupportedOfficialConfig(f"{name} and its ffn_norm differ: the release ties them")
            name = name.replace("attn_norm", "ln_wo_grad")
        elif name == "head_nm.norm.weight":
            name = "head_nm.ln_wo_grad.weight"
        state[name] = tensor
    for index, block in enumerate(transformer.blocks):
        state[f"blocks.{index}.attn.zero_k_bias"] = torch.zeros_like(block.attn.q_bias)
    for name, tensor in head.state_dict().items():
        state[f"diffloss.net.{name}"] = tensor
    return state


def official_tokenizer_config(config: TokenizerConfig) -> dict[str, Any]:
    """Our tokenizer config → an official ``tokenizer/config.json``."""
    if config.num_res_blocks != 2 or config.in_channels != 3:
        raise UnsupportedOfficialConfig(
            "the official tokenizer has 3 input channels and 2 ResNet blocks per level"
        )
    if (config.decoder_width, config.decoder_blocks) != (config.ch, config.num_res_blocks):
        raise UnsupportedOfficialConfig("the official tokenizer's decoder has the encoder's width and depth")
    return {
        "architectures": ["HARTAutoEncoderWithDisc"],
        "model_type": TOKENIZER_MODEL_TYPE,
        "vocab_size": config.codebook_size,
        "z_channels": config.latent_channels,
        "ch": config.ch,
        "ch_mult": list(config.ch_mult),
        "dropout": config.dropout,
        "beta": config.commitment_beta,
        "using_znorm": False,
        "quant_conv_ks": config.quant_conv_kernel,
        "quant_resi": config.phi_ratio,
        "share_quant_resi": config.num_phi_convs,
        "default_qresi_counts": 0,
        "v_patch_nums": list(config.patch_nums),
        "quantizer_type": "var_hybrid",
        "hybrid": True,
        "disable_quant_resi": False,
        "freeze_codebook_for_hybrid": True,
        "double_decoder": False,
        "test_mode": False,
        "levels": [8, 8, 8, 6, 5],
    }


def official_tokenizer_state(tokenizer: HybridTokenizer) -> dict[str, torch.Tensor]:
    state = {f"vae.{name}": tensor for name, tensor in tokenizer.state_dict().items()}
    # Training statistics the official class keeps as a buffer; zeros are what a fresh model has.
    state["vae.quantize.ema_vocab_hit_SV"] = torch.zeros(
        len(tokenizer.config.patch_nums), tokenizer.config.codebook_size
    )
    return state


def read_official_weights(folder: Path, prefer_ema: bool = True) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights of one official component folder, and the file they came from.

    Order: ``ema_model.bin`` (when ``prefer_ema``; the release's scripts use the EMA weights),
    ``model.safetensors``, ``pytorch_model.bin``. Pickles are read with ``weights_only=True``.
    """
    candidates = (["ema_model.bin"] if prefer_ema else []) + ["model.safetensors", "pytorch_model.bin"]
    for name in candidates:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if path.suffix == ".safetensors":
                return load_file(str(path)), path
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            # weights_only refuses any pickle that would run code or build non-tensor objects.
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else "refused"
            raise ModelLoadError(
                f"{path}: refused to unpickle ({first_line}); only plain tensor checkpoints load"
            ) from error
        except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as error:
            raise ModelLoadError(
                f"{path}: not a readable weights file ({' '.join(str(error).split())})"
            ) from error
        # EMA files may wrap the state dict one level deep (e.g. {"ema": {...}}).
        if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
            state = next(iter(state.values()))
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UnsupportedOfficialConfig(f"{path}: not a state dict of tensors")
        return state, path
    raise FileNotFoundError(f"{folder}: none of {candidates} found")
