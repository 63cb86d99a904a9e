"""Training the latent-diffusion baseline on the shared loop, under HART's conditions.

The baseline (:class:`~openhart.models.LatentDiffusionPipeline`) is a PixArt-style
diffusion transformer from diffusers on the *same* frozen hybrid tokenizer's continuous latents,
conditioned on the *same* frozen text encoder. One step:

1. images → frozen tokenizer → latent, normalised by the shift/scale fitted once on the first
   ``latent_statistics_images`` training images (cached per image key, like the generator's);
2. captions → frozen text encoder → context (cached per caption);
3. ``training_loss``: condition dropout (the model config's), a uniform timestep, noise,
   MSE on the noise (or v) prediction; AdamW, warmup + cosine, EMA, as the generator recipe.

Everything else (checkpoints, resume, metrics.csv, torchrun) is :class:`~openhart.training.loop.Trainer`'s.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import IterableDataset

from openhart.loading import load
from openhart.models import LatentDiffusionPipeline, is_latent_diffusion_folder
from openhart.training.batches import Batch
from openhart.training.checkpoint import MODEL_DIR
from openhart.training.loop import Trainer
from openhart.training.recipe import DiffusionRecipe
from openhart.training.sample_grid import write_sample_grid
from openhart.training.text_features import TextContexts, TextEncoderFromRecipe
from openhart.training.tokenizer_trainer import load_tokenizer
from openhart.utils.distributed import step_generator

logger = logging.getLogger(__name__)


def first_images(dataset: Any, count: int) -> torch.Tensor:
    """The first ``count`` images (N, 3, S, S) in [−1, 1] of a map-style or iterable dataset."""
    images = []
    if isinstance(dataset, IterableDataset):
        for sample in dataset:
            images.append(sample["image"])
            if len(images) == count:
                break
    else:
        images = [dataset[i]["image"] for i in range(min(count, len(dataset)))]
    if len(images) < 2:
        raise ValueError(f"latent_statistics_images: the dataset has {len(images)} image(s); need at least 2")
    return torch.stack(images)


class DiffusionTrainer(TextEncoderFromRecipe, Trainer):
    """``openhart train diffusion``: the latent-diffusion baseline of a preset on a trained tokenizer."""

    recipe_kind = "diffusion"
    metric_names = ("loss",)
    recipe: DiffusionRecipe

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        recipe = self.recipe
        configs = recipe.component_configs()
        if recipe.pipeline is not None:
            if not is_latent_diffusion_folder(recipe.pipeline):
                raise FileNotFoundError(f"pipeline: {recipe.pipeline} is not a saved LatentDiffusionPipeline")
            pipeline = load(recipe.pipeline, kind="diffusion")
            assert isinstance(pipeline, LatentDiffusionPipeline)  # kind="diffusion"
            if recipe.model or recipe.text_encoder:
                logger.warning(
                    "pipeline: the model comes from %s; the recipe's overrides are ignored", recipe.pipeline
                )
        else:
            # A resumed run keeps the tokenizer it started with, even if tokenizer_from changed since.
            source = (
                recipe.tokenizer_from
                if self.resume_checkpoint is None
                else self.resume_checkpoint / MODEL_DIR
            )
            tokenizer = load_tokenizer(source)
            text_encoder = self._text_encoder(configs["text_encoder"])
            pipeline = LatentDiffusionPipeline.from_components(
                text_encoder, tokenizer, configs["model"], seed=recipe.seed
            )
        pipeline.to(device=self.device)
        for frozen in (pipeline.text_encoder, pipeline.tokenizer):
            frozen.eval()
            frozen.requires_grad_(False)
        self.pipeline = pipeline  # image_size (hence training_dataset) reads it
        if recipe.pipeline is None:
            # Deterministic (the dataset's first images), so a resumed run refits the same numbers.
            config = pipeline.fit_latent_statistics(
                first_images(self.training_dataset(), recipe.latent_statistics_images)
            )
            logger.info("latent statistics: shift %.4f, scale %.4f", config.latent_shift, config.latent_scale)
        self.contexts = TextContexts(
            pipeline.text_encoder,
            self.device,
            recipe.cache_text_features,
            self._precomputed_features(pipeline.text_encoder.config),
        )
        self.latent_cache: dict[str, torch.Tensor] | None = {} if recipe.cache_latents else None
        transformer = pipeline.transformer
        transformer.train()
        return transformer

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    # The fitted statistics travel with checkpoints, so a resume never depends on refitting them.
    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        config = self.pipeline.config
        return {"latent_shift": config.latent_shift, "latent_scale": config.latent_scale}, {}

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if "latent_shift" in extra:
            self.pipeline.config = self.pipeline.config.replace(
                latent_shift=extra["latent_shift"], latent_scale=extra["latent_scale"]
            )
            if self.latent_cache:
                self.latent_cache.clear()

    # ------------------------------------------------------------------ one step
    @torch.no_grad()
    def latents(self, batch: Batch) -> torch.Tensor:
        """Normalised latents (B, Cz, P, P) float32 of the batch's images (cached by sample key)."""
        if self.latent_cache is None:
            return self.pipeline.encode_images(batch.images)
        cache = self.latent_cache
        missing = [i for i, key in enumerate(batch.keys) if key not in cache]
        if missing:
            encoded = self.pipeline.encode_images(batch.images[missing])
            for i, latent in zip(missing, encoded, strict=True):
                cache[batch.keys[i]] = latent
        return torch.stack([cache[key] for key in batch.keys])

    def compute_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        generator = step_generator(self.recipe.seed, step, "diffusion", rank=self.ctx.rank)
        latents = self.latents(batch)
        features = self.contexts(batch.captions)
        with self.autocast_context():
            loss = self.pipeline.training_loss(
                batch.images,
                batch.captions,
                generator,
                latents=latents,
                text_features=features,
                model=self.ddp_model,
            )
        return loss, {"loss": loss.item()}

    # ------------------------------------------------------------------ outputs
    def saved_pipeline(self) -> LatentDiffusionPipeline:
        """The model as it is saved: the EMA transformer (``save_ema``) or the live one."""
        use_ema = self.recipe.save_ema and self.ema is not None
        transformer = self.ema.module if use_ema else self.model
        return LatentDiffusionPipeline(
            self.pipeline.text_encoder, self.pipeline.tokenizer, transformer, self.pipeline.config
        )

    def write_model(self, folder: Path) -> None:
        self.saved_pipeline().save_pretrained(folder)

    def write_samples(self, step: int) -> Path | None:
        if not self.recipe.sampling.prompts:
            return None
        with self.evaluation_mode():
            return write_sample_grid(self.saved_pipeline(), self.recipe.sampling, self.out_dir, step)
