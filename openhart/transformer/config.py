"""Configuration of the scale-wise autoregressive transformer."""

from __future__ import annotations

from dataclasses import dataclass

from openhart.utils.config import Config

ADALN_MODES = ("block", "table", "none")
POOLING_MODES = ("max", "mean")
LEVEL_EMBEDDINGS = ("timestep", "table")
ROPE_2D_LAYOUTS = ("axial", "hart")


@dataclass(frozen=True)
class HartTransformerConfig(Config):
    """Sizes and switches of :class:`HartTransformer`.

    The switches cover the released HART variants (see ``openhart/compat``); the defaults are what
    we recommend for new models.
    """

    codebook_size: int  # V: the tokenizer's codebook, i.e. the logits' width
    latent_channels: int  # Cz: channels of the tokenizer latent (input tokens are latent vectors)
    patch_nums: tuple[int, ...]  # side of each scale's token map, coarse to fine; starts at 1
    context_dim: int  # Dctx: width of the text encoder's hidden states
    context_tokens: int  # T: prompt tokens the text encoder pads/truncates to
    width: int = 512  # C
    depth: int = 8
    num_heads: int = 8
    mlp_hidden: int | None = None  # None: round_up_256(int(C * mlp_ratio * 2/3)), Llama's SwiGLU rule
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-6
    # "block": per-block AdaLN, Linear(SiLU(pooled prompt)) → 6 vectors; "table": a learned (6, C) table per
    # block plus the pooled prompt (PixArt-style, the release's shared_aln); "none": plain pre-norm blocks.
    adaln: str = "block"
    block_pooling: str = "mean"  # how the prompt is pooled for block AdaLN: "mean" (masked) or "max"
    head_pooling: str = "mean"  # same for the AdaLN before the logits head (the release uses "max")
    level_embedding: str = "timestep"  # "timestep": sinusoid + MLP of the scale index; "table": nn.Embedding
    context_norm: bool = True  # RMSNorm on the text hidden states before projecting them
    attn_l2_norm: bool = False  # cosine attention: L2-normalised q, k with a learned per-head scale
    attn_scale: float | None = (
        None  # softmax scale; None = 1/sqrt(head_dim) (the release: 0.25/sqrt(head_dim))
    )
    rope_theta: float = 10000.0
    rope_2d: str = "axial"  # "axial" (true 2-D rotation) or "hart" (the released layout; see rope.py)
    mask_context_padding: bool = (
        True  # hide padded prompt tokens from attention (the release attends to them)
    )

    def __post_init__(self) -> None:
        positive = (
            "codebook_size",
            "latent_channels",
            "context_dim",
            "context_tokens",
            "width",
            "depth",
            "num_heads",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"HartTransformerConfig.{name} must be a positive int, got {value!r}")
        if not self.patch_nums or self.patch_nums[0] != 1:
            raise ValueError(f"HartTransformerConfig.patch_nums must start at 1, got {self.patch_nums!r}")
        if any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:], strict=False)):
            raise ValueError(
                f"HartTransformerConfig.patch_nums must increase strictly, got {self.patch_nums!r}"
            )
        if self.width % self.num_heads:
            raise ValueError(
                f"HartTransformerConfig.width {self.width} is not divisible by num_heads {self.num_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(
                f"HartTransformerConfig: head_dim {self.head_dim} must be divisible by 4 for 2-D RoPE"
            )
        choices = {
            "adaln": ADALN_MODES,
            "block_pooling": POOLING_MODES,
            "head_pooling": POOLING_MODES,
            "level_embedding": LEVEL_EMBEDDINGS,
            "rope_2d": ROPE_2D_LAYOUTS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"HartTransformerConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}"
                )

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def num_scales(self) -> int:
        return len(self.patch_nums)

    @property
    def ffn_hidden(self) -> int:
        if self.mlp_hidden is not None:
            return self.mlp_hidden
        hidden = int(self.width * self.mlp_ratio * 2 / 3)
        return 256 * ((hidden + 255) // 256)

    @property
    def num_image_tokens(self) -> int:
        """L: tokens over all scales (= logits positions of a teacher-forced pass)."""
        return sum(pn * pn for pn in self.patch_nums)

    @property
    def softmax_scale(self) -> float:
        if self.attn_l2_norm:
            return 1.0  # q and k are unit vectors; the learned per-head scale takes the role
        return self.attn_scale if self.attn_scale is not None else self.head_dim**-0.5
