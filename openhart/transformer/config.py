"""Configuration of the scale-wise autoregressive transformer."""

from __future__ import annotations

from dataclasses import dataclass

from openhart.utils.config import Config, checked

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

    field_prefix = "HartTransformerConfig."

    codebook_size: int = checked(kind="int", ge=1)  # V: the tokenizer's codebook, i.e. the logits' width
    # Cz: channels of the tokenizer latent (input tokens are latent vectors).
    latent_channels: int = checked(kind="int", ge=1)
    # Side of each scale's token map, coarse to fine; starts at 1.
    patch_nums: tuple[int, ...] = checked(kind="ints", ge=1)
    context_dim: int = checked(kind="int", ge=1)  # Dctx: width of the text encoder's hidden states
    context_tokens: int = checked(kind="int", ge=1)  # T: prompt tokens the text encoder pads/truncates to
    width: int = checked(512, kind="int", ge=1)  # C
    depth: int = checked(8, kind="int", ge=1)
    num_heads: int = checked(8, kind="int", ge=1)
    # None: round_up_256(int(C * mlp_ratio * 2/3)), Llama's SwiGLU rule.
    mlp_hidden: int | None = checked(None, kind="int", ge=1, optional=True)
    mlp_ratio: float = checked(4.0, kind="number", gt=0)
    norm_eps: float = checked(1e-6, kind="number", gt=0)
    # "block": per-block AdaLN, Linear(SiLU(pooled prompt)) → 6 vectors; "table": a learned (6, C) table per
    # block plus the pooled prompt (PixArt-style, the release's shared_aln); "none": plain pre-norm blocks.
    adaln: str = checked("block", kind="choice", choices=ADALN_MODES)
    # How the prompt is pooled for block AdaLN: "mean" (masked) or "max".
    block_pooling: str = checked("mean", kind="choice", choices=POOLING_MODES)
    # Same for the AdaLN before the logits head (the release uses "max").
    head_pooling: str = checked("mean", kind="choice", choices=POOLING_MODES)
    # "timestep": sinusoid + MLP of the scale index; "table": nn.Embedding.
    level_embedding: str = checked("timestep", kind="choice", choices=LEVEL_EMBEDDINGS)
    context_norm: bool = checked(
        True, kind="bool"
    )  # RMSNorm on the text hidden states before projecting them
    # Cosine attention: L2-normalised q, k with a learned per-head scale.
    attn_l2_norm: bool = checked(False, kind="bool")
    # Softmax scale; None = 1/sqrt(head_dim) (the release: 0.25/sqrt(head_dim)).
    attn_scale: float | None = checked(None, kind="number", gt=0, optional=True)
    rope_theta: float = checked(10000.0, kind="number", gt=0)
    # "axial" (true 2-D rotation) or "hart" (the released layout; see rope.py).
    rope_2d: str = checked("axial", kind="choice", choices=ROPE_2D_LAYOUTS)
    # Hide padded prompt tokens from attention (the release attends to them).
    mask_context_padding: bool = checked(True, kind="bool")

    def validate(self) -> None:
        if not self.patch_nums or self.patch_nums[0] != 1:
            self.fail("patch_nums", "sides starting at 1", self.patch_nums)
        if any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:], strict=False)):
            self.fail("patch_nums", "strictly increasing sides", self.patch_nums)
        if self.width % self.num_heads:
            self.fail("width", f"a multiple of num_heads={self.num_heads}", self.width)
        if self.head_dim % 4:
            self.fail("num_heads", "a divisor of width giving head_dim % 4 == 0 (2-D RoPE)", self.num_heads)

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
