"""HartTransformer: prompt context + coarser scales → logits of the next scale's codebook ids.

Legend: B batch, T prompt tokens, Dctx text width, C width, S scales, pn side of a scale,
L = Σ pn² image tokens over all scales, l tokens of one scale, V codebook size, Cz latent channels.

Sequence layout (teacher forcing): ``[prompt tokens (T); tokens of scales 1..S-1]``. The prompt
tokens are the projected text states; the token of scale k ≥ 1 is ``word_embed`` of the running
discrete latent area-downsampled to that scale. Logit row 0 is read at the *last prompt token* and
predicts scale 0 (1x1); the rows of scale k's tokens predict scale k. So ``logits`` is (B, L, V).

Attention is block-causal by scale ("level"): a token sees every token of its own and coarser
levels, the prompt being level 0. At inference the same thing happens scale by scale with a KV
cache: each pass appends one scale and attends to everything cached, so no mask is needed beyond
the prompt's padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from openhart.transformer.blocks import AdaLNBeforeHead, RMSNorm, TransformerBlock
from openhart.transformer.cache import KVCache
from openhart.transformer.config import HartTransformerConfig
from openhart.transformer.rope import Rope, rope_1d_angles, rope_2d_angles, scale_grid
from openhart.utils.embeddings import TimestepEmbedder


@dataclass
class TransformerOutput:
    logits: torch.Tensor  # (B, L, V), or (B, L', V) with the last scale subsampled
    last_scale_hidden: torch.Tensor  # (B, l_last, C): last block's output at the last scale's tokens
    hidden_states: torch.Tensor  # (B, T + L − 1, C): last block's output at every position, prompt first


@dataclass
class GenerationState:
    """What one sampling call carries from scale to scale."""

    cache: KVCache
    modulations: list[torch.Tensor | None]  # per block (B, 6, C) AdaLN parameters, fixed for the call
    head_pooled: torch.Tensor  # (B, C) pooled prompt for the head's AdaLN
    rope_offset: torch.Tensor  # (B,) position id of the last prompt token
    key_valid: torch.Tensor | None  # (B, 1, 1, T + L) False at padded prompt tokens, None when unmasked
    level_table: torch.Tensor  # (S, C) level embedding of every scale

    def rows(self, count: int) -> GenerationState:
        """The state of the first ``count`` rows (views: nothing is copied)."""
        return GenerationState(
            cache=self.cache.rows(count),
            modulations=[None if m is None else m[:count] for m in self.modulations],
            head_pooled=self.head_pooled[:count],
            rope_offset=self.rope_offset[:count],
            key_valid=None if self.key_valid is None else self.key_valid[:count],
            level_table=self.level_table,
        )


def _rope_tables(angles: torch.Tensor, dtype: torch.dtype, num_context: int) -> Rope:
    # Cast once per pass rather than in every layer (the rotation runs in the activations' dtype).
    return Rope(angles.cos().to(dtype), angles.sin().to(dtype), num_context)


def check_context_mask(context_mask: torch.Tensor) -> None:
    """ValueError unless every row of the (B, T) bool mask has at least one valid token."""
    if not bool(context_mask.any(dim=1).all()):
        raise ValueError("context_mask: every row needs at least one valid token")


class HartTransformer(nn.Module):
    """Scale-wise autoregressive transformer of HART (see the module docstring for the layout)."""

    def __init__(self, config: HartTransformerConfig) -> None:
        super().__init__()
        self.config = config
        C = config.width
        self.context_norm = (
            RMSNorm(config.context_dim, config.norm_eps) if config.context_norm else nn.Identity()
        )
        self.context_embed = nn.Linear(config.context_dim, C)
        self.word_embed = nn.Linear(config.latent_channels, C)
        if config.level_embedding == "timestep":
            self.lvl_embed: nn.Module = TimestepEmbedder(C)  # scale index as a "timestep"
        else:
            self.lvl_embed = nn.Embedding(config.num_scales, C)
        self.blocks = nn.ModuleList(TransformerBlock(config) for _ in range(config.depth))
        self.head_nm = AdaLNBeforeHead(config)
        self.head = nn.Linear(C, config.codebook_size)
        # Normalises (last hidden state + embedding of the sampled token): the diffusion head's condition.
        self.decoder_norm = RMSNorm(C, config.norm_eps)
        # Generation states sized to store the last scale's keys and values too: more memory (the
        # cache is 42% smaller without them at 1024 px), no copy of the cached prefix in the last
        # pass (transformer/cache.py). Read by new_generation_state.
        self.store_last_scale_keys = False
        # Teacher-forced passes with autograd recompute each block's activations in the backward
        # pass instead of keeping them: about one block's activations in memory instead of all,
        # for one more forward pass of compute. Set by trainers (e.g. LoRA's gradient_checkpointing).
        self.gradient_checkpointing = False
        self.reset_parameters()

    # ------------------------------------------------------------------ initialisation
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2-style init: N(0, 0.02) weights, residual outputs scaled by 1/sqrt(2·depth).

        The block AdaLN starts as a plain pre-norm block (gates 1, scales and shifts 0) so that
        a freshly initialised model is a working transformer (benchmarks and tests rely on it).
        ``generator`` draws the weights (default: torch's global generator).
        """
        std = 0.02
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        residual_std = std / (2 * self.config.depth) ** 0.5
        C = self.config.width
        for block in self.blocks:
            nn.init.trunc_normal_(
                block.attn.proj.weight,
                std=residual_std,
                a=-2 * residual_std,
                b=2 * residual_std,
                generator=generator,
            )
            nn.init.trunc_normal_(
                block.ffn.down_proj.weight,
                std=residual_std,
                a=-2 * residual_std,
                b=2 * residual_std,
                generator=generator,
            )
            nn.init.zeros_(block.attn.q_bias)
            nn.init.zeros_(block.attn.v_bias)
            with torch.no_grad():
                if block.adaln == "block":
                    block.ada_lin[1].bias[: 2 * C].fill_(1.0)  # gamma1, gamma2
                elif block.adaln == "table":
                    block.scale_shift_table.normal_(std=std, generator=generator)
                    block.scale_shift_table[:2].add_(1.0)

    def compile_blocks(self, enabled: bool = True) -> HartTransformer:
        """Fuse the blocks' elementwise work with torch.compile (see ``TransformerBlock.compile_pieces``).

        Compiles on the first call (seconds, once per process); numerics then differ from the eager
        blocks by bf16 rounding (fused kernels keep float32 intermediates). Returns self.
        """
        for block in self.blocks:
            block.compile_pieces(enabled)
        return self

    # ------------------------------------------------------------------ shared pieces
    def embed_context(
        self, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """context (B, T, Dctx), mask (B, T) → prompt tokens (B, T, C), block pooled (B, C), head pooled (B, C)."""
        cfg = self.config
        if context.ndim != 3 or context.shape[1:] != (cfg.context_tokens, cfg.context_dim):
            raise ValueError(
                f"context must be (B, {cfg.context_tokens}, {cfg.context_dim}), got {tuple(context.shape)}"
            )
        if context_mask.shape != context.shape[:2] or context_mask.dtype != torch.bool:
            raise ValueError(
                f"context_mask must be a bool (B, T) tensor, got {context_mask.dtype} {tuple(context_mask.shape)}"
            )
        # The check reads the mask on the host: skipped while a CUDA graph records this pass
        # (the replaying caller checks each call's mask instead, see transformer/graphs.py).
        if not (context_mask.is_cuda and torch.cuda.is_current_stream_capturing()):
            check_context_mask(context_mask)
        dtype = self.context_embed.weight.dtype
        if cfg.mask_context_padding:
            # Padded positions still run as queries (the last one predicts scale 0 under right
            # padding), so blank their inputs: whatever the text encoder left there is irrelevant.
            context = context.masked_fill(~context_mask.unsqueeze(-1), 0.0)
        tokens = self.context_embed(self.context_norm(context.to(dtype)))  # (B, T, C)
        return (
            tokens,
            self._pool(tokens, context_mask, cfg.block_pooling),
            self._pool(tokens, context_mask, cfg.head_pooling),
        )

    @staticmethod
    def _pool(tokens: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
        if mode == "max":
            return tokens.max(dim=1).values  # over all T tokens, padding included (as the release does)
        weights = mask.to(tokens.dtype).unsqueeze(-1)  # (B, T, 1)
        return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    def level_table(self, device: torch.device) -> torch.Tensor:
        """(S, C) embedding of every level (level 0 = the prompt and scale 0)."""
        return self.lvl_embed(torch.arange(self.config.num_scales, device=device))

    @staticmethod
    def context_position_ids(context_mask: torch.Tensor) -> torch.Tensor:
        """Position ids of prompt tokens: cumsum(mask) − 1, so right padding repeats the last id."""
        return context_mask.long().cumsum(dim=1) - 1

    def _image_angles(self, scales: list[int], offset: torch.Tensor) -> torch.Tensor:
        rows, cols = scale_grid(self.config.patch_nums, scales, offset.device)
        return rope_2d_angles(rows, cols, offset, self.config.head_dim, self.config.rope_theta)  # (B, l, d)

    def _modulations(self, pooled: torch.Tensor) -> list[torch.Tensor | None]:
        return [block.modulation(pooled) for block in self.blocks]

    def diffusion_condition(
        self, last_scale_hidden: torch.Tensor, token_latents: torch.Tensor
    ) -> torch.Tensor:
        """Per-token condition of the residual head: norm(hidden + word_embed(codebook vector of the sampled id)).

        last_scale_hidden (B, l, C); token_latents (B, l, Cz) → (B, l, C).
        """
        return self.decoder_norm(
            last_scale_hidden + self.word_embed(token_latents.to(last_scale_hidden.dtype))
        )

    # ------------------------------------------------------------------ teacher forcing (training)
    def forward(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        scale_inputs: torch.Tensor,
        last_scale_positions: torch.Tensor | None = None,
    ) -> TransformerOutput:
        """Teacher-forced pass over all scales at once.

        context (B, T, Dctx); context_mask (B, T) bool; scale_inputs (B, L − 1, Cz): the tokenizer's
        teacher-forcing inputs of scales 1..S−1. ``last_scale_positions`` (B, k) int64, optional:
        keep only these tokens of the last scale (HART's token subsampling, to save compute);
        the logits then hold the last scale's kept rows only, in the given order.
        """
        cfg = self.config
        B, T = context.shape[0], cfg.context_tokens
        expected = (B, cfg.num_image_tokens - 1, cfg.latent_channels)
        if scale_inputs.shape != expected:
            raise ValueError(f"scale_inputs must be {expected}, got {tuple(scale_inputs.shape)}")
        prompt, block_pooled, head_pooled = self.embed_context(context, context_mask)
        device = prompt.device
        levels_table = self.level_table(device).to(prompt.dtype)  # (S, C)

        # Level id of every image position (scales 1..S−1), and their 2-D rotary angles.
        image_scales = list(range(1, cfg.num_scales))
        image_levels = torch.cat(
            [torch.full((cfg.patch_nums[k] ** 2,), k, device=device, dtype=torch.long) for k in image_scales]
        )  # (L − 1,)
        position_ids = self.context_position_ids(context_mask)  # (B, T)
        offset = position_ids[:, -1]
        image_angles = self._image_angles(image_scales, offset)  # (B, L − 1, d)
        tokens = self.word_embed(scale_inputs.to(prompt.dtype))  # (B, L − 1, C)

        if last_scale_positions is not None:
            tokens, image_angles, image_levels = self._subsample_last_scale(
                tokens, image_angles, image_levels, last_scale_positions
            )
        num_image = tokens.shape[1]
        x = torch.cat(
            (prompt + levels_table[0], tokens + levels_table[image_levels]), dim=1
        )  # (B, T + L', C)
        angles = torch.cat((rope_1d_angles(position_ids, cfg.head_dim, cfg.rope_theta), image_angles), dim=1)
        rope = _rope_tables(angles, x.dtype, T)

        # Block-causal mask over levels; the prompt is level 0 and fully bidirectional.
        seq_levels = torch.cat((torch.zeros(T, device=device, dtype=torch.long), image_levels))
        attn_mask = (seq_levels.unsqueeze(0) <= seq_levels.unsqueeze(1)).view(
            1, 1, T + num_image, T + num_image
        )
        if cfg.mask_context_padding:
            key_valid = torch.cat((context_mask, context_mask.new_ones(B, num_image)), dim=1)
            attn_mask = attn_mask & key_valid.view(B, 1, 1, -1)

        checkpointing = self.gradient_checkpointing and torch.is_grad_enabled()
        for block, modulation in zip(self.blocks, self._modulations(block_pooled), strict=True):
            if checkpointing:
                x = checkpoint(block, x, modulation, rope, attn_mask, use_reentrant=False)
            else:
                x = block(x, modulation, rope, attn_mask)

        logit_rows = x[:, T - 1 :]  # last prompt token predicts scale 0, then one row per image token
        logits = self.head(self.head_nm(logit_rows, head_pooled))
        last_count = (
            cfg.patch_nums[-1] ** 2 if last_scale_positions is None else last_scale_positions.shape[1]
        )
        return TransformerOutput(logits=logits, last_scale_hidden=x[:, -last_count:], hidden_states=x)

    def _subsample_last_scale(
        self,
        tokens: torch.Tensor,
        angles: torch.Tensor,
        levels: torch.Tensor,
        positions: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        last = cfg.patch_nums[-1] ** 2
        B = tokens.shape[0]
        if positions.ndim != 2 or positions.shape[0] != B or positions.dtype != torch.long:
            raise ValueError(
                f"last_scale_positions must be an int64 (B, k) tensor, got {positions.dtype} {tuple(positions.shape)}"
            )
        if positions.numel() and (int(positions.min()) < 0 or int(positions.max()) >= last):
            raise ValueError(f"last_scale_positions must lie in [0, {last})")
        start = tokens.shape[1] - last
        index = positions.unsqueeze(-1)  # (B, k, 1)
        kept_tokens = tokens[:, start:].gather(1, index.expand(-1, -1, tokens.shape[-1]))
        kept_angles = angles[:, start:].gather(1, index.expand(-1, -1, angles.shape[-1]))
        tokens = torch.cat((tokens[:, :start], kept_tokens), dim=1)
        angles = torch.cat((angles[:, :start], kept_angles), dim=1)
        levels = torch.cat((levels[:start], levels.new_full((positions.shape[1],), cfg.num_scales - 1)))
        return tokens, angles, levels

    # ------------------------------------------------------------------ scale-by-scale sampling
    def cache_room(self) -> int:
        """Positions the KV cache of a new generation state holds.

        All of them but the last scale's, whose keys are not stored unless
        ``store_last_scale_keys`` (see transformer/cache.py); scale 0 has no pass.
        """
        cfg = self.config
        max_length = cfg.context_tokens + cfg.num_image_tokens - 1
        if self.store_last_scale_keys or cfg.num_scales == 1:
            return max_length
        return max_length - cfg.patch_nums[-1] ** 2

    def new_generation_state(
        self, batch_size: int, device: torch.device, dtype: torch.dtype
    ) -> GenerationState:
        """Buffers for one sampling call of ``batch_size`` rows; :meth:`prefill` fills them.

        A state can be refilled for call after call: its tensors keep their addresses, which is
        what lets CUDA graphs captured on it be replayed (see ``transformer/graphs.py``).
        """
        cfg = self.config
        max_length = cfg.context_tokens + cfg.num_image_tokens - 1
        shape = (batch_size, 6, cfg.width)
        room = self.cache_room()
        return GenerationState(
            cache=KVCache(cfg.depth, batch_size, cfg.num_heads, room, cfg.head_dim, device, dtype),
            modulations=[
                None if block.adaln == "none" else torch.zeros(shape, device=device, dtype=dtype)
                for block in self.blocks
            ],
            head_pooled=torch.zeros(batch_size, cfg.width, device=device, dtype=dtype),
            rope_offset=torch.zeros(batch_size, device=device, dtype=torch.long),
            key_valid=(
                torch.ones(batch_size, 1, 1, max_length, device=device, dtype=torch.bool)
                if cfg.mask_context_padding
                else None
            ),
            level_table=torch.zeros(cfg.num_scales, cfg.width, device=device, dtype=dtype),
        )

    @torch.no_grad()
    def prefill(
        self, state: GenerationState, context: torch.Tensor, context_mask: torch.Tensor
    ) -> torch.Tensor:
        """Fill ``state`` from the prompt and run the prompt pass; returns the scale-0 logits (B, 1, V)."""
        cfg = self.config
        prompt, block_pooled, head_pooled = self.embed_context(context, context_mask)
        T = prompt.shape[1]
        if state.head_pooled.shape[0] != prompt.shape[0]:
            raise ValueError(f"state holds {state.head_pooled.shape[0]} rows, the context {prompt.shape[0]}")
        for buffer, modulation in zip(state.modulations, self._modulations(block_pooled), strict=True):
            if buffer is not None:
                buffer.copy_(modulation)
        state.head_pooled.copy_(head_pooled)
        position_ids = self.context_position_ids(context_mask)
        state.rope_offset.copy_(position_ids[:, -1])
        if state.key_valid is not None:
            state.key_valid[:, 0, 0, :T] = context_mask
        state.level_table.copy_(self.level_table(prompt.device))
        state.cache.length = 0
        angles = rope_1d_angles(position_ids, cfg.head_dim, cfg.rope_theta)
        x = self._cached_pass(state, prompt + state.level_table[0], _rope_tables(angles, prompt.dtype, T))
        return self.head(self.head_nm(x[:, -1:], state.head_pooled))

    @torch.no_grad()
    def start_generation(
        self, context: torch.Tensor, context_mask: torch.Tensor
    ) -> tuple[GenerationState, torch.Tensor]:
        """Run the prompt pass; returns the state for later scales and the scale-0 logits (B, 1, V)."""
        dtype = self.context_embed.weight.dtype
        state = self.new_generation_state(context.shape[0], context.device, dtype)
        return state, self.prefill(state, context, context_mask)

    @torch.no_grad()
    def generation_step(
        self, state: GenerationState, scale_index: int, scale_inputs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One scale k ≥ 1: scale_inputs (B, pn_k², Cz) → logits (B, pn_k², V), hidden (B, pn_k², C)."""
        cfg = self.config
        if not 1 <= scale_index < cfg.num_scales:
            raise ValueError(f"scale_index must be in [1, {cfg.num_scales}), got {scale_index}")
        num_tokens = cfg.patch_nums[scale_index] ** 2
        B = state.head_pooled.shape[0]
        if scale_inputs.shape != (B, num_tokens, cfg.latent_channels):
            raise ValueError(
                f"scale_inputs must be {(B, num_tokens, cfg.latent_channels)}, got {tuple(scale_inputs.shape)}"
            )
        dtype = state.level_table.dtype
        x = self.word_embed(scale_inputs.to(dtype)) + state.level_table[scale_index]
        angles = self._image_angles([scale_index], state.rope_offset)
        x = self._cached_pass(state, x, _rope_tables(angles, x.dtype, 0))
        return self.head(self.head_nm(x, state.head_pooled)), x

    def _cached_pass(self, state: GenerationState, x: torch.Tensor, rope: Rope) -> torch.Tensor:
        end = state.cache.length + x.shape[1]
        attn_mask = None if state.key_valid is None else state.key_valid[..., :end]
        for layer, (block, modulation) in enumerate(zip(self.blocks, state.modulations, strict=True)):
            x = block(x, modulation, rope, attn_mask, state.cache, layer)
        state.cache.advance(x.shape[1])
        return x
