"""Generator training: the transformer and the residual diffusion head on a frozen trained tokenizer.

One step (teacher forcing, as HART trains):

1. images → frozen tokenizer → latent → ``split`` → ids per scale + continuous residual;
   ``teacher_forcing_inputs(ids)`` are the transformer's inputs of scales 1..S−1. With
   ``loss.self_correction`` some earlier-scale tokens are replaced by near codes (or, with
   ``self_correction_source: model``, by the model's own teacher-forced draws) and the later
   scales' targets re-quantized to correct them (``self_correction.py``).
2. captions → frozen text encoder → context; each image's context is replaced by the
   unconditional (empty) context with probability ``loss.condition_dropout`` (for CFG).
3. Optional token subsampling of the last scale: a random fraction in [drop_min, drop_max] of its
   tokens is dropped (the same count for the batch, positions per image, at least ``min_keep``
   kept); the transformer then runs on the kept positions only.
4. transformer → logits (B, L', V): cross-entropy against the ids of every scale.
5. From the last scale's logits the model samples its *own* token per position; the diffusion head
   learns target = (last-scale latent) − codebook[sampled id], the residual the sampled token
   leaves, conditioned on ``diffusion_condition(hidden, codebook[sampled id])``. Each row is seen
   ``loss.diffusion_batch_mul`` times with independent timesteps and noise.
6. loss = CE + diffusion_weight · diffusion; AdamW; EMA of both networks (what gets saved).
   ``diffusion_weight: 0`` is the VAR-only baseline: steps 5–6 train the transformer on CE alone,
   the head stays at its initialisation, and the model is sampled with ``sample_residual=False``.

Dimension legend: B images, T prompt tokens, Dctx text width, C width, S scales, L = Σ pn² tokens,
l = P² tokens of the last scale, k kept last-scale tokens, V codebook size, Cz latent channels,
M = diffusion_batch_mul.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from openhart.diffusion import ResidualDiffusionHead
from openhart.loading import load
from openhart.models.hart import HartPipeline
from openhart.text import TextEncoder
from openhart.tokenizer import HybridTokenizer
from openhart.training.batches import Batch
from openhart.training.checkpoint import MODEL_DIR
from openhart.training.loop import Trainer
from openhart.training.recipe import GeneratorLossRecipe, GeneratorRecipe
from openhart.training.sample_grid import write_sample_grid
from openhart.training.self_correction import corrupted_split
from openhart.training.text_features import TextContexts, TextEncoderFromRecipe
from openhart.training.tokenizer_trainer import load_tokenizer
from openhart.transformer import HartTransformer
from openhart.utils.distributed import step_generator
from openhart.utils.random import GeneratorSpec, rand_tensor, sample_categorical

logger = logging.getLogger(__name__)


class GeneratorModel(nn.Module):
    """The trained pair, with HART's training loss as ``forward`` (one module for DDP and the EMA)."""

    def __init__(self, transformer: HartTransformer, diffusion_head: ResidualDiffusionHead) -> None:
        super().__init__()
        self.transformer = transformer
        self.diffusion_head = diffusion_head

    def forward(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        scale_inputs: torch.Tensor,
        target_ids: torch.Tensor,
        last_scale_latent: torch.Tensor,
        codebook: torch.Tensor,
        loss_recipe: GeneratorLossRecipe,
        generator: GeneratorSpec = None,
        last_scale_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, metrics) of one batch.

        context (B, T, Dctx), context_mask (B, T); scale_inputs (B, L − 1, Cz); target_ids (B, L')
        the ids the logits must predict (the last scale's at the kept positions); last_scale_latent
        (B, k, Cz) the latent of the last scale (residual + its code) at the kept positions;
        codebook (V, Cz) the frozen tokenizer's; last_scale_positions (B, k) or None (all kept).
        """
        out = self.transformer(context, context_mask, scale_inputs, last_scale_positions=last_scale_positions)
        logits = out.logits.float()  # (B, L', V)
        ce = F.cross_entropy(
            logits.flatten(0, 1), target_ids.flatten(), label_smoothing=loss_recipe.label_smoothing
        )
        kept = last_scale_latent.shape[1]
        last_logits = logits[:, -kept:]  # (B, k, V)
        if loss_recipe.diffusion_weight == 0:
            # VAR-only (the baseline): tokens only; the head is neither run nor trained.
            with torch.no_grad():
                hits = logits.argmax(dim=-1) == target_ids  # (B, L')
                metrics = {
                    "ce": ce.item(),
                    "diffusion": 0.0,
                    "token_accuracy": hits.float().mean().item(),
                    "last_scale_accuracy": hits[:, -kept:].float().mean().item(),
                    "sampled_matches_target": 0.0,  # nothing is sampled without the head's loss
                }
            return ce, metrics
        with torch.no_grad():
            # HART learns the residual the model's own token leaves, not the one the true token leaves:
            # at sampling time the head only ever completes sampled tokens.
            sampled = sample_categorical(last_logits.softmax(dim=-1), generator)  # (B, k)
            token_latents = F.embedding(sampled, codebook)  # (B, k, Cz)
            target = (last_scale_latent - token_latents).float()  # (B, k, Cz)
        condition = self.transformer.diffusion_condition(out.last_scale_hidden, token_latents)  # (B, k, C)
        repeats = loss_recipe.diffusion_batch_mul
        target_rows = target.reshape(-1, target.shape[-1]).repeat(repeats, 1)  # (M·B·k, Cz)
        condition_rows = condition.reshape(-1, condition.shape[-1]).repeat(repeats, 1)  # (M·B·k, C)
        diffusion = self.diffusion_head.loss(target_rows, condition_rows, generator).float()
        loss = ce + loss_recipe.diffusion_weight * diffusion

        with torch.no_grad():
            hits = logits.argmax(dim=-1) == target_ids  # (B, L')
            metrics = {
                "ce": ce.item(),
                "diffusion": diffusion.item(),
                "token_accuracy": hits.float().mean().item(),
                "last_scale_accuracy": hits[:, -kept:].float().mean().item(),
                "sampled_matches_target": (sampled == target_ids[:, -kept:]).float().mean().item(),
            }
        return loss, metrics


@torch.no_grad()
def teacher_forced_losses(
    model: GeneratorModel,
    tokenizer: HybridTokenizer,
    latents: torch.Tensor,
    context: torch.Tensor,
    mask: torch.Tensor,
    loss_recipe: GeneratorLossRecipe,
    seed: int = 0,
) -> dict[str, float]:
    """HART's training losses of ``model`` on tokenizer latents (B, Cz, H, W), with fixed draws.

    No condition dropout and no token subsampling: the numbers of a held-out set (the same images
    give the same losses). ``model`` is used in whatever mode it is in.
    """
    quantize = tokenizer.quantize
    ids, residual = tokenizer.split(latents)  # [(B, pn²)], (B, Cz, P, P)
    last_latent = quantize.last_scale_target(ids, residual).flatten(2).transpose(1, 2)  # (B, l, Cz)
    loss, metrics = model(
        context,
        mask,
        quantize.teacher_forcing_inputs(ids),
        torch.cat(ids, dim=1),
        last_latent,
        quantize.embedding.weight,
        loss_recipe,
        torch.Generator().manual_seed(seed),
    )
    return {"loss": loss.item(), **metrics}


class GeneratorTrainer(TextEncoderFromRecipe, Trainer):
    """``openhart train generator``: transformer + residual head of a preset on a trained tokenizer."""

    recipe_kind = "generator"
    metric_names = (
        "loss",
        "ce",
        "diffusion",
        "token_accuracy",
        "last_scale_accuracy",
        "sampled_matches_target",
        "kept_tokens",
        "condition_dropped",
        "replaced_tokens",  # self-correcting teacher forcing's share of earlier-scale tokens (0: off)
    )
    recipe: GeneratorRecipe

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        recipe = self.recipe
        configs = recipe.component_configs()
        if recipe.pipeline is not None:
            start = load(recipe.pipeline, kind="hart")
            assert isinstance(start, HartPipeline)  # kind="hart"
            for name in ("text_encoder", "transformer", "diffusion_head"):
                if getattr(recipe, name):
                    logger.warning(
                        "pipeline: %s comes from %s; the recipe's overrides are ignored",
                        name,
                        recipe.pipeline,
                    )
            text_encoder, tokenizer = start.text_encoder, start.tokenizer
            transformer, head = start.transformer, start.diffusion_head
            if recipe.tokenizer_from is not None:
                tokenizer = load_tokenizer(recipe.tokenizer_from)
        else:
            assert recipe.tokenizer_from is not None  # the recipe checks this
            # A resumed run keeps the tokenizer it started with, even if tokenizer_from changed since.
            source = (
                recipe.tokenizer_from
                if self.resume_checkpoint is None
                else self.resume_checkpoint / MODEL_DIR
            )
            tokenizer = load_tokenizer(source)
            text_encoder = self._text_encoder(configs["text_encoder"])
            # Initial weights depend on the seed only (and are the same on every rank).
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.seed)
                transformer = HartTransformer(configs["transformer"])
                head = ResidualDiffusionHead(configs["diffusion_head"])
        if recipe.var_only:
            head.requires_grad_(False)  # untouched: DDP and the optimiser skip it
        return self.setup_components(text_encoder, tokenizer, transformer, head)

    def setup_components(
        self,
        text_encoder: TextEncoder,
        tokenizer: HybridTokenizer,
        transformer: HartTransformer,
        head: ResidualDiffusionHead,
    ) -> GeneratorModel:
        """The live pipeline, frozen text encoder and tokenizer, caches; the loss module of the pair."""
        recipe = self.recipe
        # The pipeline checks that the parts fit (codebook, latent channels, scales, widths).
        self.pipeline = HartPipeline(text_encoder, tokenizer, transformer, head).to(self.device)
        for frozen in (text_encoder, tokenizer):
            frozen.eval()
            frozen.requires_grad_(False)
        self.tokenizer: HybridTokenizer = tokenizer
        self.contexts = TextContexts(
            text_encoder,
            self.device,
            recipe.cache_text_features,
            self._precomputed_features(text_encoder.config),
        )
        self.latent_cache: dict[str, torch.Tensor] | None = {} if recipe.cache_latents else None
        return GeneratorModel(transformer, head)

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    # ------------------------------------------------------------------ inputs of one step
    @torch.no_grad()
    def latents(self, batch: Batch) -> torch.Tensor:
        """Tokenizer latents (B, Cz, H, W) of the batch's images, float32 (cached by sample key)."""
        size = self.image_size
        if tuple(batch.images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"dataset images are {tuple(batch.images.shape[1:])}, the tokenizer needs (3, {size}, {size}); "
                f"build the dataset at image_size={size}"
            )
        cache = self.latent_cache
        if cache is None:
            return self.tokenizer.encode(batch.images.to(self.device).float())
        missing = [i for i, key in enumerate(batch.keys) if key not in cache]
        if missing:
            encoded = self.tokenizer.encode(batch.images[missing].to(self.device).float())
            for i, latent in zip(missing, encoded, strict=True):
                cache[batch.keys[i]] = latent
        return torch.stack([cache[key] for key in batch.keys])

    def drop_conditions(
        self, context: torch.Tensor, mask: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replace each row's context by the unconditional one with probability condition_dropout."""
        B = context.shape[0]
        dropped = (
            rand_tensor((B,), generator, device=context.device) < self.recipe.loss.condition_dropout
        )  # (B,)
        empty_context, empty_mask = self.pipeline.empty_context(B)
        context = torch.where(dropped.view(B, 1, 1), empty_context.to(context.dtype), context)
        mask = torch.where(dropped.view(B, 1), empty_mask, mask)
        return context, mask, dropped

    def subsample_positions(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """Kept last-scale positions (B, k), ascending per row; k = max(min_keep, (1 − drop)·l)."""
        loss = self.recipe.loss
        num_last = self.tokenizer.config.patch_nums[-1] ** 2
        drop = loss.subsample_drop_min + (loss.subsample_drop_max - loss.subsample_drop_min) * float(
            rand_tensor((1,), generator).item()
        )
        keep = min(num_last, max(loss.subsample_min_keep, round((1.0 - drop) * num_last)))
        scores = rand_tensor(
            (batch_size, num_last), generator
        )  # (B, l): a random order of positions per image
        positions = scores.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, k)
        return positions.to(self.device)

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        quantize = self.tokenizer.quantize
        generator = step_generator(self.recipe.seed, step, "generator", rank=self.ctx.rank)
        with torch.no_grad():
            ids, scale_inputs, last_latent, replaced = self.training_tokens(batch, generator)
            last_latent = last_latent.flatten(2).transpose(1, 2)  # (B, l, Cz) row-major, as the ids
            context, mask = self.contexts(batch.captions)
            context, mask, dropped = self.drop_conditions(context, mask, generator)
            B = context.shape[0]
            positions = None
            last_ids = ids[-1]
            if self.recipe.loss.token_subsampling:
                positions = self.subsample_positions(B, generator)  # (B, k)
                last_ids = last_ids.gather(1, positions)
                last_latent = last_latent.gather(
                    1, positions.unsqueeze(-1).expand(-1, -1, last_latent.shape[-1])
                )
            target_ids = torch.cat([*ids[:-1], last_ids], dim=1)  # (B, L')
        with self.autocast_context():
            loss, metrics = self.ddp_model(
                context,
                mask,
                scale_inputs,
                target_ids,
                last_latent,
                quantize.embedding.weight.detach(),
                self.recipe.loss,
                generator,
                positions,
            )
        metrics.update(
            loss=loss.item(),
            kept_tokens=float(last_ids.shape[1]),
            condition_dropped=dropped.float().mean().item(),
            replaced_tokens=float(replaced),
        )
        return loss, metrics

    def training_tokens(
        self, batch: Batch, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
        """(target ids per scale, transformer inputs (B, L − 1, Cz), last-scale latent (B, Cz, P, P),
        fraction of earlier-scale tokens replaced) of one batch.

        Plain teacher forcing reads the tokenizer's split; with ``loss.self_correction`` the inputs
        hold plausible mistakes and the later targets correct them (``self_correction.py``).
        """
        quantize = self.tokenizer.quantize
        latent = self.latents(batch)
        loss = self.recipe.loss
        if loss.self_correction == 0:
            ids, residual = self.tokenizer.split(latent)  # [(B, pn²)], (B, Cz, P, P)
            last_latent = quantize.last_scale_target(ids, residual)
            return ids, quantize.teacher_forcing_inputs(ids), last_latent, torch.zeros(())
        fraction = loss.self_correction * rand_tensor((latent.shape[0],), generator, device=latent.device)
        proposals = None
        if loss.self_correction_source == "model":
            proposals = self.model_draws(batch, latent, generator)
        split = corrupted_split(
            quantize, latent, fraction, loss.self_correction_neighbours, generator, proposals
        )
        inputs = quantize.teacher_forcing_inputs(split.input_ids)
        return split.target_ids, inputs, split.last_latent, split.replaced

    @torch.no_grad()
    def model_draws(
        self, batch: Batch, latent: torch.Tensor, generator: torch.Generator
    ) -> list[torch.Tensor]:
        """The live transformer's own draws (B, pn_k²) of every earlier scale, teacher-forced on
        the tokenizer's split of ``latent`` with the batch's prompts, at self_correction_temperature."""
        quantize = self.tokenizer.quantize
        ids, _ = self.tokenizer.split(latent)
        context, mask = self.contexts(batch.captions)
        # One last-scale position: no draw of the last scale is used, and all of them would cost
        # as much as the earlier scales together.
        keep = torch.zeros((latent.shape[0], 1), dtype=torch.long, device=latent.device)
        with self.autocast_context():
            out = self.model.transformer(
                context, mask, quantize.teacher_forcing_inputs(ids), last_scale_positions=keep
            )
        lengths = quantize.scale_lengths[:-1]
        logits = out.logits[:, : sum(lengths)].float() / self.recipe.loss.self_correction_temperature
        draws = sample_categorical(logits.softmax(dim=-1), generator)  # (B, earlier tokens)
        return list(draws.split(lengths, dim=1))

    @torch.no_grad()
    def evaluate(self, batch: Batch, seed: int = 0) -> dict[str, float]:
        """Losses of the live networks on ``batch`` with fixed draws (no condition dropout or subsampling)."""
        context, mask = self.contexts(batch.captions)
        with self.evaluation_mode():
            return teacher_forced_losses(
                self.model, self.tokenizer, self.latents(batch), context, mask, self.recipe.loss, seed
            )

    # ------------------------------------------------------------------ outputs
    def saved_pipeline(self) -> HartPipeline:
        """The model as it is saved: the EMA networks (``save_ema``) or the live ones."""
        use_ema = self.recipe.save_ema and self.ema is not None
        source = self.ema.module if use_ema else self.model
        return HartPipeline(
            self.pipeline.text_encoder, self.tokenizer, source.transformer, source.diffusion_head
        )

    def write_model(self, folder: Path) -> None:
        self.saved_pipeline().save_pretrained(folder)

    def write_samples(self, step: int) -> Path | None:
        if not self.recipe.sampling.prompts:
            return None
        with self.evaluation_mode():
            return write_sample_grid(
                self.saved_pipeline(),
                self.recipe.sampling,
                self.out_dir,
                step,
                sample_residual=not self.recipe.var_only,
            )
