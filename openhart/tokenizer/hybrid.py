"""HybridTokenizer: images ⇄ latent ⇄ (discrete code ids per scale, continuous residual).

encode: image → encoder → quant_conv → latent. split: latent → multi-scale residual quantizer →
(ids per scale, residual). compose: ids (+ residual) → latent. decode: latent → post_quant_conv →
decoder → image clamped to [−1, 1]. Submodule and parameter names follow the official checkpoint
(``vae.`` prefix stripped), see ``official_tokenizer_state_dict``.

Dimension legend: B batch, Cz latent channels, H = W latent side (= patch_nums[-1]),
S scales, pn_k side of scale k, l = pn_k² tokens of one scale, L = Σ pn_k², V codebook size.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from openhart.tokenizer.autoencoder import GROUPNORM_GROUPS, Decoder, Encoder
from openhart.tokenizer.quantizer import MultiScaleQuantizer, phi_indices
from openhart.utils.config import Config, checked

RELEASE_PATCH_NUMS = (1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64)


@dataclasses.dataclass(frozen=True)
class TokenizerConfig(Config):
    """Sizes of the hybrid tokenizer. Defaults are the released 1024 px tokenizer."""

    field_prefix = "TokenizerConfig."

    in_channels: int = checked(3, kind="int", ge=1)
    # Width of the first level: GroupNorm's 32 groups must divide it.
    ch: int = checked(160, kind="int", ge=GROUPNORM_GROUPS, multiple_of=GROUPNORM_GROUPS)
    # Width multiplier per level; 2^(levels−1) downsampling.
    ch_mult: tuple[int, ...] = checked((1, 1, 2, 2, 4), kind="ints", ge=1)
    # Per encoder level; the decoder uses num_res_blocks + 1 (as VQGAN).
    num_res_blocks: int = checked(2, kind="int", ge=1)
    latent_channels: int = checked(32, kind="int", ge=1)  # Cz
    codebook_size: int = checked(4096, kind="int", ge=1)  # V
    # Side of each scale; the last is the latent side.
    patch_nums: tuple[int, ...] = checked(RELEASE_PATCH_NUMS, kind="ints", ge=1)
    # Kernel of quant_conv / post_quant_conv (1×1 in plain VQGAN); odd, so the conv keeps the size.
    quant_conv_kernel: int = checked(3, kind="int", ge=1)
    # Φ(h) = (1 − r)·h + r·conv3×3(h); 0.5 mixes the conv half-and-half.
    phi_ratio: float = checked(0.5, kind="number", ge=0, le=1)
    num_phi_convs: int = checked(
        4, kind="int", ge=1
    )  # Φ convs shared by all scales, picked by relative scale
    dropout: float = checked(0.0, kind="number", ge=0, lt=1)
    # Weight of the commitment term of the VQ training loss.
    commitment_beta: float = checked(0.25, kind="number", ge=0)
    # The decoder's own width and depth (None: ch and num_res_blocks, the symmetric VQGAN layout the
    # released tokenizer has). Tokens and residuals depend on the encoder side only, so a wider
    # decoder can be trained on a frozen encoder (a decoder-only recipe) under a trained generator.
    decoder_ch: int | None = checked(
        None, kind="int", ge=GROUPNORM_GROUPS, multiple_of=GROUPNORM_GROUPS, optional=True
    )
    decoder_num_res_blocks: int | None = checked(None, kind="int", ge=1, optional=True)

    def validate(self) -> None:
        if self.quant_conv_kernel % 2 != 1:
            self.fail("quant_conv_kernel", "an odd int (a same-size conv)", self.quant_conv_kernel)
        if not self.ch_mult:
            self.fail("ch_mult", "at least one level", self.ch_mult)
        pn = self.patch_nums
        if len(pn) < 2 or pn[0] != 1 or any(b <= a for a, b in itertools.pairwise(pn)):
            self.fail("patch_nums", "at least 2 strictly increasing sides starting at 1", pn)

    @property
    def decoder_width(self) -> int:
        """Width of the decoder's level 0 (its levels are decoder_width·ch_mult[i])."""
        return self.ch if self.decoder_ch is None else self.decoder_ch

    @property
    def decoder_blocks(self) -> int:
        """num_res_blocks of the decoder (each of its levels has one more ResNet block)."""
        return self.num_res_blocks if self.decoder_num_res_blocks is None else self.decoder_num_res_blocks

    @property
    def downsample_factor(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def image_size(self) -> int:
        return self.patch_nums[-1] * self.downsample_factor

    @property
    def latent_size(self) -> int:
        return self.patch_nums[-1]

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def num_tokens(self) -> int:
        """L = Σ pn_k² tokens over all scales."""
        return sum(p * p for p in self.patch_nums)

    @property
    def phi_index_per_scale(self) -> tuple[int, ...]:
        return phi_indices(self.num_phi_convs, self.num_scales)

    @classmethod
    def from_official_config(cls, official: Mapping[str, Any]) -> TokenizerConfig:
        """Map an official ``hart_autoencoder_with_disc`` config.json onto this config.

        Only the variant HART ships is supported (var_hybrid quantizer, shared Φ, no z-norm,
        single decoder); anything else raises ValueError naming the field.
        """
        expectations = {
            "quantizer_type": "var_hybrid",
            "using_znorm": False,
            "double_decoder": False,
            "disable_quant_resi": False,
        }
        for key, expected in expectations.items():
            if key in official and official[key] != expected:
                raise ValueError(
                    f"official config {key}={official[key]!r} is not supported (need {expected!r})"
                )
        share = int(official.get("share_quant_resi", 4))
        if share < 1:
            raise ValueError(f"official config share_quant_resi={share} (per-scale Φ) is not supported")
        return cls(
            ch=int(official["ch"]),
            ch_mult=tuple(int(m) for m in official["ch_mult"]),
            latent_channels=int(official["z_channels"]),
            codebook_size=int(official["vocab_size"]),
            patch_nums=tuple(int(p) for p in official["v_patch_nums"]),
            quant_conv_kernel=int(official.get("quant_conv_ks", 3)),
            phi_ratio=float(official.get("quant_resi", 0.5)),
            num_phi_convs=share,
            dropout=float(official.get("dropout", 0.0)),
            commitment_beta=float(official.get("beta", 0.25)),
        )


def official_tokenizer_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official tokenizer weights → ``HybridTokenizer`` keys.

    Strips the ``vae.`` prefix and drops the discriminator (``disc.*``, never used for inference)
    and the codebook-usage statistics (``quantize.ema_vocab_hit_SV``, training only).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("disc."):
            continue
        name = key[len("vae.") :] if key.startswith("vae.") else key
        if name == "quantize.ema_vocab_hit_SV":
            continue
        out[name] = value
    return out


class HybridTokenizer(nn.Module):
    """Conv autoencoder + multi-scale residual quantizer with a continuous residual."""

    def __init__(self, config: TokenizerConfig) -> None:
        super().__init__()
        if not isinstance(config, TokenizerConfig):
            raise TypeError(f"config: expected a TokenizerConfig, got {type(config).__name__}")
        self.config = config
        c = config
        self.encoder = Encoder(c.in_channels, c.ch, c.ch_mult, c.num_res_blocks, c.latent_channels, c.dropout)
        self.decoder = Decoder(
            c.in_channels, c.decoder_width, c.ch_mult, c.decoder_blocks, c.latent_channels, c.dropout
        )
        pad = c.quant_conv_kernel // 2
        self.quant_conv = nn.Conv2d(c.latent_channels, c.latent_channels, c.quant_conv_kernel, padding=pad)
        self.post_quant_conv = nn.Conv2d(
            c.latent_channels, c.latent_channels, c.quant_conv_kernel, padding=pad
        )
        self.quantize = MultiScaleQuantizer(
            c.codebook_size,
            c.latent_channels,
            c.patch_nums,
            phi_ratio=c.phi_ratio,
            num_phi_convs=c.num_phi_convs,
            commitment_beta=c.commitment_beta,
        )

    # ------------------------------------------------------------------ pixels ⇄ latent
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, image_size, image_size) in [−1, 1] → latent (B, Cz, H, W)."""
        self._check_images(images, "images")
        return self.quant_conv(self.encoder(images))

    def decode_unclamped(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, Cz, H, W) → images (B, 3, image_size, image_size), not clamped."""
        self.quantize.check_latent(latent, "latent")
        # Latents may arrive in float32 from the sampler (the residual head computes in ≥ float32).
        return self.decoder(self.post_quant_conv(latent.to(self.post_quant_conv.weight.dtype)))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent (B, Cz, H, W) → images clamped to [−1, 1]."""
        return self.decode_unclamped(latent).clamp(-1.0, 1.0)

    # ------------------------------------------------------------------ latent ⇄ tokens
    def split(self, latent: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Latent → (ids per scale [(B, pn_k²) int64], residual (B, Cz, H, W))."""
        return self.quantize.quantize(latent)

    def compose(self, ids: Sequence[torch.Tensor], residual: torch.Tensor | None = None) -> torch.Tensor:
        """(ids per scale, optional residual) → latent; discrete-only when residual is None."""
        return self.quantize.compose(ids, residual)

    def compose_var_style(self, ids: Sequence[torch.Tensor]) -> torch.Tensor:
        """VAR-style discrete latent (Φ also on the last scale, no residual)."""
        return self.quantize.compose_var_style(ids)

    # ------------------------------------------------------------------ round trips
    def reconstruct(self, images: torch.Tensor, hybrid: bool = True) -> torch.Tensor:
        """Encode, split, compose (with the residual when ``hybrid``), decode; clamped to [−1, 1]."""
        ids, residual = self.split(self.encode(images))
        return self.decode(self.compose(ids, residual if hybrid else None))

    def forward(
        self, images: torch.Tensor, use_residual: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """Training pass: (unclamped reconstruction, VQ loss, ids per scale).

        ``use_residual`` selects HART's continuous branch (decode the full latent) instead of the
        discrete one; tokenizer training alternates the two.
        """
        latent = self.encode(images)
        quantized, vq_loss, ids = self.quantize.training_forward(latent, use_residual=use_residual)
        return self.decoder(self.post_quant_conv(quantized)), vq_loss, ids

    # ------------------------------------------------------------------ checks
    def _check_images(self, images: torch.Tensor, name: str) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(images).__name__}")
        c, size = self.config.in_channels, self.config.image_size
        if images.dim() != 4:
            raise ValueError(
                f"{name}: expected rank 4 (B, {c}, {size}, {size}), got shape {tuple(images.shape)}"
            )
        if images.shape[1] != c:
            raise ValueError(
                f"{name}: expected {c} channels, got {images.shape[1]} (shape {tuple(images.shape)})"
            )
        if images.shape[2:] != (size, size):
            raise ValueError(
                f"{name}: expected spatial size {size}×{size} (config.image_size), got "
                f"{images.shape[2]}×{images.shape[3]}"
            )
        if not images.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {images.dtype}")


def with_decoder_of(tokenizer: HybridTokenizer, config: TokenizerConfig) -> HybridTokenizer:
    """A tokenizer of ``config`` holding ``tokenizer``'s weights everywhere but the decoder.

    ``config`` may differ from ``tokenizer.config`` in the decoder's fields only; the new decoder is
    left at its initialisation (drawn from the global RNG) for the caller to fill or train. Same
    device and dtype as ``tokenizer``, so token ids and residuals are unchanged.
    """
    reference = next(tokenizer.parameters())
    resized = HybridTokenizer(config).to(reference.device, reference.dtype)
    kept = {name: value for name, value in tokenizer.state_dict().items() if not name.startswith("decoder.")}
    missing, unexpected = resized.load_state_dict(kept, strict=False)
    # Only the new decoder may be left at its initialisation.
    if unexpected or any(not name.startswith("decoder.") for name in missing):
        raise RuntimeError(f"new decoder: unexpected {unexpected}, missing {missing}")
    return resized
