"""Convolutional encoder and decoder of the hybrid tokenizer (the VQGAN / VAR conv stacks).

Pixels (B, 3, H_img, W_img) ⇄ latent (B, Cz, H, W) with H = H_img / 2^(levels-1). The parameter
names (``conv_in``, ``down.<level>.block.<j>``, ``mid.attn_1``, ``up.<level>.upsample.conv``, ...) are
the official ones, so an official state dict loads after stripping its ``vae.`` prefix.

Dimension legend: B batch, C channels of a feature map, Cz latent channels, H/W spatial sides,
N = H·W positions of a feature map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUPNORM_GROUPS = 32
GROUPNORM_EPS = 1e-6


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that can take its statistics from per-channel sums instead.

    With ``statistics_from_channel_sums`` set (see :meth:`Decoder.use_channel_sum_statistics`) the
    forward is :func:`group_norm_from_channel_sums`: the same function, formulated for
    torch.compile on channels-last feature maps. Parameters and state-dict keys are nn.GroupNorm's.
    """

    statistics_from_channel_sums = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.statistics_from_channel_sums:
            return super().forward(x)
        return group_norm_from_channel_sums(x, self.num_groups, self.weight, self.bias, self.eps)


def group_norm(channels: int) -> GroupNorm:
    """The tokenizer's only normalisation: GroupNorm(32 groups, eps 1e-6, affine)."""
    return GroupNorm(num_groups=GROUPNORM_GROUPS, num_channels=channels, eps=GROUPNORM_EPS, affine=True)


def group_norm_from_channel_sums(
    x: torch.Tensor, groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    """GroupNorm of x (B, C, H, W), its statistics reduced per channel first, in float32.

    Why: in channels-last memory a group's channels are a few adjacent values of every pixel, so a
    reduction per group strides through the whole map (the compiled kernels measured ~0.4 TB/s on
    an H200). Per-channel sums over H·W read whole pixels, coalesced; the groups are then summed
    from B·C numbers. The variance comes from E[(x−s)²] − E[x−s]², with s each group's value at
    the first pixel, so a mean far from zero cannot cancel the variance away.
    """
    B, C, H, W = x.shape
    per_group = C // groups
    values = x.float()
    # s: one shift per (row, group), broadcast to its channels, (B, C, 1, 1).
    shift = values[:, :, 0, 0].reshape(B, groups, per_group).mean(dim=2, keepdim=True)
    shift = shift.expand(B, groups, per_group).reshape(B, C, 1, 1)
    centered = values - shift
    count = per_group * H * W
    sums = centered.sum(dim=(2, 3)).reshape(B, groups, per_group).sum(dim=2)  # (B, G)
    squares = centered.square().sum(dim=(2, 3)).reshape(B, groups, per_group).sum(dim=2)
    centered_mean = sums / count
    variance = (squares / count - centered_mean.square()).clamp_min(0.0)
    rstd = torch.rsqrt(variance + eps).repeat_interleave(per_group, dim=1)  # (B, C)
    mean = shift.reshape(B, C) + centered_mean.repeat_interleave(per_group, dim=1)
    scale = rstd if weight is None else rstd * weight.float()
    offset = -mean * scale if bias is None else bias.float() - mean * scale
    return (values * scale[:, :, None, None] + offset[:, :, None, None]).to(x.dtype)


class ResnetBlock(nn.Module):
    """norm → SiLU → conv3×3 → norm → SiLU → dropout → conv3×3, added to a (projected) skip."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        # The skip needs a 1×1 projection only where the width changes (official name: nin_shortcut).
        self.nin_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Without autograd, SiLU runs in place on the norm's output and the skip is added into the
        # second conv's output: each copy avoided is a whole feature map (335 MB in bf16 at
        # 1024 px), and the eager decoder's peak is three of them instead of five. Same numbers.
        inplace = not torch.is_grad_enabled()
        h = F.silu(self.norm1(x), inplace=inplace)
        h = self.conv1(h)
        h = F.silu(self.norm2(h), inplace=inplace)
        h = self.conv2(self.dropout(h))
        skip = x if self.nin_shortcut is None else self.nin_shortcut(x)
        if inplace and h.dtype == skip.dtype:
            return h.add_(skip)
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions of a feature map, with a residual connection.

    One 1×1 conv ``qkv`` produces 3C channels, split in channel order into q, k, v;
    weights = softmax(qᵀk / √C).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W)  # (B, 3, C, N)
        # (B, 1, N, C) each: one head whose width is all C channels.
        q, k, v = (t.transpose(1, 2).unsqueeze(1) for t in qkv.unbind(dim=1))
        out = F.scaled_dot_product_attention(q, k, v)  # scale defaults to 1/√C
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    """Halve the side: pad one zero row/column at the bottom/right, then a 3×3 stride-2 conv.

    The asymmetric pad (rather than padding=1) is what the official weights were trained with.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    """Double the side: nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: ResNet blocks, optional attention after each, optional resampling.

    ``downsample`` / ``upsample`` is the official attribute name of the resampler (only one exists).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        with_attention: bool,
        resample: str | None,
        dropout: float,
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()
        channels = in_channels
        for _ in range(num_blocks):
            self.block.append(ResnetBlock(channels, out_channels, dropout))
            channels = out_channels
            if with_attention:
                self.attn.append(AttnBlock(out_channels))
        if resample == "down":
            self.downsample = Downsample(out_channels)
        elif resample == "up":
            self.upsample = Upsample(out_channels)
        self._resample = resample

    def steps(self) -> list[nn.Module]:
        """The level's modules in the order they run: block, (attention,) block, ..., resampler."""
        steps: list[nn.Module] = []
        for index, block in enumerate(self.block):
            steps.append(block)
            if len(self.attn) > 0:
                steps.append(self.attn[index])
        if self._resample == "down":
            steps.append(self.downsample)
        elif self._resample == "up":
            steps.append(self.upsample)
        return steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.steps():
            x = step(x)
        return x


class _Middle(nn.Module):
    """ResNet block → attention → ResNet block at the lowest resolution."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, dropout)
        self.attn_1 = AttnBlock(channels)
        self.block_2 = ResnetBlock(channels, channels, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    """Image (B, in_channels, H_img, W_img) → features (B, Cz, H_img / 2^(levels-1), ...).

    Level i has ``num_res_blocks`` ResNet blocks of width ch·ch_mult[i]; every level but the last
    ends with a 2× downsample; attention follows each block of the last (lowest-resolution) level.
    """

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)
        self.down = nn.ModuleList()
        channels = ch
        for level, mult in enumerate(ch_mult):
            is_last = level == num_levels - 1
            self.down.append(
                _Level(
                    channels,
                    ch * mult,
                    num_res_blocks,
                    with_attention=is_last,
                    resample=None if is_last else "down",
                    dropout=dropout,
                )
            )
            channels = ch * mult
        self.mid = _Middle(channels, dropout)
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, latent_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(images)
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, Cz, H, W) → image (B, out_channels, H·2^(levels-1), W·2^(levels-1)), unclamped.

    ``up.<level>`` is indexed by resolution level like the encoder's ``down.<level>``; the decoder
    runs them from the last (lowest resolution, width ch·ch_mult[-1]) to level 0. Each level has
    ``num_res_blocks + 1`` ResNet blocks; every level but 0 ends with a 2× upsample.
    """

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_levels = len(ch_mult)
        channels = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(latent_channels, channels, kernel_size=3, stride=1, padding=1)
        self.mid = _Middle(channels, dropout)
        levels: list[_Level] = []
        for level in reversed(range(num_levels)):
            levels.append(
                _Level(
                    channels,
                    ch * ch_mult[level],
                    num_res_blocks + 1,
                    with_attention=level == num_levels - 1,
                    resample=None if level == 0 else "up",
                    dropout=dropout,
                )
            )
            channels = ch * ch_mult[level]
        # Built from the lowest resolution up, stored by level index (official layout).
        self.up = nn.ModuleList(reversed(levels))
        self.norm_out = group_norm(channels)
        self.conv_out = nn.Conv2d(channels, out_channels, kernel_size=3, stride=1, padding=1)
        # conv_out's filter count is rounded up to a multiple of this (extra filters zero, their
        # outputs dropped); 1 runs it as stored. See :meth:`pad_output_filters`.
        self.output_filter_multiple = 1

    def pad_output_filters(self, multiple: int = 32) -> None:
        """Run conv_out with its 3 filters padded by zero filters to a multiple of ``multiple``.

        In channels-last bf16 on an H200, a 160 → 3 (or 8, or 16) filter 3x3 convolution at
        1024² takes a generic cuDNN kernel (6.2 ms); with 32 filters it takes a tensor-core one
        (0.47 ms, ``benchmarks/decoder_probe.py``). The kept channels are the same sums, up to
        the kernel's accumulation order. Applies on CUDA devices only: elsewhere it would just be
        ``multiple / 3`` times the work.
        """
        if multiple < 1:
            raise ValueError(f"multiple must be >= 1, got {multiple}")
        self.output_filter_multiple = multiple

    def use_channel_sum_statistics(self, enabled: bool = True) -> None:
        """Compute every GroupNorm's statistics from per-channel sums (:func:`group_norm_from_channel_sums`).

        For the compiled channels-last decoder; the same normalisation up to float32 rounding.
        """
        for module in self.modules():
            if isinstance(module, GroupNorm):
                module.statistics_from_channel_sums = enabled

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(latent))
        # The levels' modules run from here rather than through ``level(h)``: that call would keep
        # the level's input (a full-resolution map for level 0) referenced until the level ends.
        for level in reversed(self.up):
            for step in level.steps():
                h = step(h)
        h = F.silu(self.norm_out(h), inplace=not torch.is_grad_enabled())
        if self.output_filter_multiple == 1 or not h.is_cuda:
            return self.conv_out(h)
        return conv_with_padded_filters(self.conv_out, h, self.output_filter_multiple)


def conv_with_padded_filters(conv: nn.Conv2d, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """``conv(x)``, computed with zero filters appended up to a multiple of ``multiple`` and dropped."""
    filters = conv.out_channels
    extra = -filters % multiple
    weight = F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, extra))
    bias = None if conv.bias is None else F.pad(conv.bias, (0, extra))
    out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out[:, :filters]
