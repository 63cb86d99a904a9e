"""Building blocks of the HART transformer: RMSNorm, SwiGLU, attention with RoPE, AdaLN blocks.

Legend: B batch, L positions in this pass, Lk key positions (with the cache), C width, H heads,
d head dim (C / H), F SwiGLU hidden width.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from openhart.transformer.cache import KVCache
from openhart.transformer.config import HartTransformerConfig
from openhart.transformer.rope import Rope, apply_axial_rotary, apply_rotary


class RMSNorm(nn.Module):
    """RMSNorm with a weight; the normalisation is computed in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class SwiGLU(nn.Module):
    """Llama's gated MLP: down(silu(gate(x)) * up(x))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(width, hidden, bias=False)
        self.up_proj = nn.Linear(width, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class QKVProjection(nn.Linear):
    """The fused query/key/value projection; its bias comes with each call.

    The bias is not the layer's own parameter: the released layout stores a query and a value
    bias but no key bias, which ``Attention`` assembles. Taking it as an argument keeps one fused
    ``F.linear`` (the same numbers as before) while the projection stays a module call, so
    wrappers such as PEFT's LoRA layers, which add their term to the module's output, see it.
    """

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return F.linear(x, self.weight, bias)


class Attention(nn.Module):
    """Multi-head self-attention with a fused QKV projection, RoPE and an optional KV cache.

    The key projection has no bias (a key bias only shifts every logit of a query equally), so
    the fused projection carries learned query and value biases only.
    """

    def __init__(self, config: HartTransformerConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.scale = config.softmax_scale
        self.l2_norm = config.attn_l2_norm
        self.axial_rope = config.rope_2d == "axial"
        width = config.width
        self.qkv_proj = QKVProjection(width, 3 * width, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(width))
        self.v_bias = nn.Parameter(torch.zeros(width))
        self.proj = nn.Linear(width, width)
        if self.l2_norm:
            # Per-head temperature of cosine attention, stored as a log; capped at 100 when used.
            self.scale_mul_1H11 = nn.Parameter(torch.full((1, self.num_heads, 1, 1), math.log(4.0)))

    def forward(
        self,
        x: torch.Tensor,
        rope: Rope,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """x (B, L, C); attn_mask (B or 1, 1, L or 1, Lk) bool, True = may attend."""
        q, k, v = self.project(x, rope)
        return self.output(self.attend(q, k, v, attn_mask, cache, layer))

    def project(self, x: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, L, C) → rotated queries, rotated keys and values, each (B, H, L, d)."""
        B, L, _ = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = self.qkv_proj(x, bias).view(B, L, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, d)
        if self.l2_norm:
            # Normalise before RoPE: the rotation keeps unit length, the learned scale sets the temperature.
            q = F.normalize(q, dim=-1) * self.scale_mul_1H11.clamp(max=math.log(100.0)).exp()
            k = F.normalize(k, dim=-1)
        return self._rotate(q, rope), self._rotate(k, rope), v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        """Store k, v in the cache (if any) and attend over everything cached → (B, H, L, d)."""
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, H, Lk, d)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)

    def output(self, attended: torch.Tensor) -> torch.Tensor:
        """(B, H, L, d) → output projection (B, L, C)."""
        B, _, L, _ = attended.shape
        return self.proj(attended.transpose(1, 2).reshape(B, L, -1))

    def _rotate(self, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        if not self.axial_rope:
            return apply_rotary(x, rope.cos, rope.sin)
        # Context tokens (first in the sequence) take a 1-D rotation over all channels, image tokens the
        # axial 2-D one.
        n = rope.num_context
        if n == 0:
            return apply_axial_rotary(x, rope.cos, rope.sin)
        context = apply_rotary(x[:, :, :n], rope.cos[:, :n], rope.sin[:, :n])
        if n == x.shape[2]:
            return context
        image = apply_axial_rotary(x[:, :, n:], rope.cos[:, n:], rope.sin[:, n:])
        return torch.cat((context, image), dim=2)


class TransformerBlock(nn.Module):
    """Pre-norm Llama block; with AdaLN the pooled prompt scales, shifts and gates both sub-layers."""

    def __init__(self, config: HartTransformerConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.width, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.width, config.norm_eps)
        self.ffn = SwiGLU(config.width, config.ffn_hidden)
        self.adaln = config.adaln
        if self.adaln == "block":
            self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 6 * config.width))
        elif self.adaln == "table":
            self.scale_shift_table = nn.Parameter(torch.zeros(6, config.width))
        self.compiled_pieces = False

    def modulation(self, pooled: torch.Tensor) -> torch.Tensor | None:
        """pooled (B, C) → (B, 6, C) = [gamma1, gamma2, scale1, scale2, shift1, shift2], or None."""
        if self.adaln == "block":
            return self.ada_lin(pooled).view(pooled.shape[0], 6, -1)
        if self.adaln == "table":
            return self.scale_shift_table.unsqueeze(0) + pooled.unsqueeze(1)  # same pooled vector in all six
        return None

    def forward(
        self,
        x: torch.Tensor,
        modulation: torch.Tensor | None,
        rope: Rope,
        attn_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        # Everything but the cache write and the attention kernel is elementwise work around three
        # matmuls: two pure pieces that torch.compile can fuse (see ``compile_pieces``).
        attention_inputs, block_output = (
            _compiled_pieces() if self.compiled_pieces else (_attention_inputs, _block_output)
        )
        q, k, v = attention_inputs(self, x, modulation, rope)
        attended = self.attn.attend(q, k, v, attn_mask, cache, layer)
        return block_output(self, x, attended, modulation)

    def compile_pieces(self, enabled: bool = True) -> None:
        """Run the block's two pure pieces through torch.compile (one compiled artifact shared by
        every block: the parameters are inputs of the compiled graphs, the token count is dynamic).

        Eager, a block is dozens of small kernels, most of them elementwise (norms, AdaLN, RoPE,
        gates), which bound the coarse scales on a GPU; compiled, that work is a few fused kernels
        (the profile is in docs/performance.md). The cache write and the attention stay eager, so
        the compiled pieces see no Python state and every scale reuses the same compiled code.
        """
        self.compiled_pieces = enabled


def _modulated(norm: RMSNorm, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return norm(x) * (1 + scale) + shift


def _attention_inputs(
    block: TransformerBlock, x: torch.Tensor, modulation: torch.Tensor | None, rope: Rope
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Norm (and AdaLN) of the block input, then the attention's rotated q, k and v."""
    if modulation is None:
        return block.attn.project(block.attn_norm(x), rope)
    _, _, scale1, _, shift1, _ = modulation.unsqueeze(2).unbind(1)  # each (B, 1, C)
    return block.attn.project(_modulated(block.attn_norm, x, scale1, shift1), rope)


def _block_output(
    block: TransformerBlock, x: torch.Tensor, attended: torch.Tensor, modulation: torch.Tensor | None
) -> torch.Tensor:
    """Output projection and (gated) residual, then the (modulated) SwiGLU sub-layer."""
    if modulation is None:
        x = x + block.attn.output(attended)
        return x + block.ffn(block.ffn_norm(x))
    gamma1, gamma2, _, scale2, _, shift2 = modulation.unsqueeze(2).unbind(1)  # each (B, 1, C)
    x = x + gamma1 * block.attn.output(attended)
    return x + gamma2 * block.ffn(_modulated(block.ffn_norm, x, scale2, shift2))


@functools.cache
def _compiled_pieces() -> tuple[Callable, Callable]:
    # Compiled once per process; torch.compile inlines the block module, so its parameters are
    # graph inputs and all blocks (of any model with this structure) share the compiled code.
    return (
        torch.compile(_attention_inputs, dynamic=True),
        torch.compile(_block_output, dynamic=True),
    )


class AdaLNBeforeHead(nn.Module):
    """RMSNorm whose scale and shift come from the pooled prompt (always present, as in HART)."""

    def __init__(self, config: HartTransformerConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(config.width, config.norm_eps)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(config.width, 2 * config.width))

    def forward(self, x: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        scale, shift = self.ada_lin(pooled).view(pooled.shape[0], 2, -1).unsqueeze(2).unbind(1)  # (B, 1, C)
        return self.norm(x) * (1 + scale) + shift
