"""Tokenizer training: reconstruction + VQ loss, HART's alternating hybrid decoder, dead-code revival.

One step: images → encoder → multi-scale quantizer (``HybridTokenizer.forward``) → decoder.
Loss = l1·|x̂ − x| + l2·(x̂ − x)² + high_band·(high band of x̂ − x)² + vq·(codebook + β·commitment),
with x̂ decoded from

* the discrete-only latent (straight-through to the encoder) with probability
  ``loss.discrete_probability`` (0.5 in HART), or
* the full latent (discrete + continuous residual = the encoder's latent itself) otherwise,

decided once per step from a generator seeded by (seed, step), so every rank takes the same branch.
HART trains the decoder this way so that it decodes both what the transformer alone produces and
what the residual head completes.

With ``adversarial.weight > 0`` (VQGAN's recipe, ``training/adversarial.py``), from step
``adversarial.start_step`` on the loss also has ``weight · adaptive · adversarial``, where the
adaptive factor balances the two terms' gradients at the decoder's last layer, and after each
optimiser step a PatchGAN discriminator takes one step of its own on (this batch, its
reconstruction), from ``adversarial.discriminator_warmup_steps`` steps before ``start_step`` on
(the warm-up: it learns alone first). With ``adversarial.feature_matching_weight > 0`` the decoder
also matches the discriminator's activations on each original (pix2pixHD's feature matching),
balanced the same way. The discriminator and its optimiser live in the checkpoints, never in the
model.

Codebook usage is counted per scale over windows of ``loss.revive_every`` steps (over all ranks); codes no
rank picked in a window are dead and are re-initialised from this step's encoder outputs: the
per-scale residual vectors the codes are matched against, plus a little noise. Rank 0 draws them
and broadcasts the codebook; their AdamW moments are reset.

Dimension legend: B images, S image side, Cz latent channels, H latent side, V codebook size,
N residual vectors of all scales (Σ_k B·pn_k²).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from openhart.tokenizer import HybridTokenizer, TokenizerConfig
from openhart.tokenizer.deepen import appended_parameter_names, deepen_tokenizer_decoder
from openhart.tokenizer.hybrid import with_decoder_of
from openhart.tokenizer.quantizer import MultiScaleQuantizer
from openhart.tokenizer.widen import widen_tokenizer_decoder
from openhart.training.adversarial import (
    PatchDiscriminator,
    adaptive_adversarial_weight,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from openhart.training.batches import Batch
from openhart.training.checkpoint import flatten_optimizer_state, unflatten_optimizer_state
from openhart.training.loop import SAMPLES_DIR, Trainer
from openhart.training.recipe import RecipeError, TokenizerRecipe
from openhart.utils.config import read_json, write_json
from openhart.utils.distributed import all_reduce_sum_, broadcast_, step_generator
from openhart.utils.frequency_bands import high_band
from openhart.utils.images import save_png, tensor_grid
from openhart.utils.random import rand_tensor, randn_tensor
from openhart.utils.weights import load_weights, save_weights

logger = logging.getLogger(__name__)

# Names of the discriminator's tensors in a checkpoint's training state (never in the model folder).
DISCRIMINATOR_PREFIX = "discriminator."
DISCRIMINATOR_OPTIMIZER_PREFIX = "discriminator_optimizer."


def save_tokenizer(tokenizer: HybridTokenizer, folder: str | Path) -> Path:
    """A tokenizer folder: ``config.json`` + ``model.safetensors`` (the layout of a pipeline's tokenizer/)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "config.json", tokenizer.config.to_dict())
    save_weights(tokenizer, folder)
    return folder


def load_tokenizer(folder: str | Path) -> HybridTokenizer:
    """Load a trained tokenizer from a tokenizer folder, a pipeline folder, or a training run folder.

    Accepts what ``openhart train tokenizer`` writes (``OUT``, ``OUT/final`` or a checkpoint's
    ``model/``) and any saved pipeline (its ``tokenizer/``).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    candidates = [folder, folder / "tokenizer", folder / "final", folder / "final" / "tokenizer"]
    for candidate in candidates:
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            config_data = read_json(candidate / "config.json")
            try:
                config = TokenizerConfig.from_dict(config_data)
            except (TypeError, ValueError):
                continue  # e.g. a pipeline's text encoder config; keep looking
            tokenizer = HybridTokenizer(config)
            load_weights(tokenizer, candidate)
            return tokenizer
    raise FileNotFoundError(
        f"{folder} holds no tokenizer (looked for config.json + model.safetensors in "
        f"{[str(c) for c in candidates]})"
    )


def with_new_decoder(tokenizer: HybridTokenizer, overrides: Mapping[str, Any], seed: int) -> HybridTokenizer:
    """``tokenizer`` with a new decoder of the shape ``overrides`` gives (decoder_ch / decoder_num_res_blocks).

    Everything but the decoder keeps its trained weights (post_quant_conv included), so token ids
    and residuals are unchanged; the decoder starts from a seeded fresh initialisation, also when
    its shape is the trained one's (a control run). No overrides: ``tokenizer`` itself.
    """
    if not overrides:
        return tokenizer
    config = tokenizer.config.replace(**dict(overrides))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        resized = with_decoder_of(tokenizer, config)
    logger.info(
        "new decoder: width %d, %d ResNet blocks per level (trained one: width %d, %d)",
        config.decoder_width,
        config.decoder_blocks + 1,
        tokenizer.config.decoder_width,
        tokenizer.config.decoder_blocks + 1,
    )
    return resized


def residual_vectors(quantize: MultiScaleQuantizer, latent: torch.Tensor) -> torch.Tensor:
    """(N, Cz): at every scale, the rows the codebook is matched against in ``training_forward``.

    That is what is left of the latent after the coarser scales (VAR-style, Φ on every scale),
    area-downsampled to the scale's grid: exactly the vectors a live code should sit near.
    """
    rest = latent.detach().float()
    rows = []
    for k in range(quantize.num_scales):
        target = quantize.downsample_to_scale(rest, k)  # (B, Cz, pn, pn)
        flat = target.permute(0, 2, 3, 1).reshape(-1, quantize.latent_channels)  # (B·pn², Cz)
        rows.append(flat)
        ids = quantize.nearest_code(flat).view(latent.shape[0], -1)  # (B, pn²)
        rest = rest - quantize.phi(quantize.upsample_to_latent(quantize.code_map(ids, k)), k)
    return torch.cat(rows)


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution given by ``counts`` (V,): the effective number of codes."""
    probabilities = counts.double() / counts.sum().clamp(min=1)
    used = probabilities[probabilities > 0]
    return float((-(used * used.log()).sum()).exp())


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [−1, 1] (peak-to-peak 2)."""
    mse = F.mse_loss(images.float().clamp(-1, 1), reference.float()).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


class TokenizerTrainer(Trainer):
    """``openhart train tokenizer``: trains a preset's :class:`HybridTokenizer` from a recipe."""

    recipe_kind = "tokenizer"
    metric_names = (
        "loss",
        "l1",
        "l2",
        "l2_high_band",
        "vq",
        "l2_discrete",
        "l2_hybrid",
        "discrete_fraction",
        "codes_used",
        "codes_revived",
        "code_perplexity",
        "adversarial",
        "adaptive_weight",
        "feature_matching",
        "feature_matching_weight",
        "discriminator",
        "logits_real",
        "logits_fake",
    )
    recipe: TokenizerRecipe
    discriminator: PatchDiscriminator | None = None
    # Parameter names of the blocks a deepened decoder appended (new_decoder: deepened).
    appended_parameters: tuple[str, ...] = ()

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        recipe = self.recipe
        if recipe.init is not None:
            # Sizes come from `init`; the recipe may only give it a new decoder (validated).
            start = load_tokenizer(recipe.init)
            if recipe.new_decoder == "widened":
                width = int(recipe.tokenizer["decoder_ch"])
                try:
                    generator = torch.Generator().manual_seed(recipe.seed)
                    tokenizer = widen_tokenizer_decoder(start, width, generator)
                except ValueError as error:
                    raise RecipeError(f"new_decoder: {error}") from error
                logger.info("widened decoder: width %d -> %d", start.config.decoder_width, width)
            elif recipe.new_decoder == "deepened":
                blocks = int(recipe.tokenizer["decoder_num_res_blocks"])
                try:
                    tokenizer = deepen_tokenizer_decoder(start, blocks)
                except ValueError as error:
                    raise RecipeError(f"new_decoder: {error}") from error
                logger.info(
                    "deepened decoder: %d -> %d ResNet blocks per level",
                    start.config.decoder_blocks + 1,
                    blocks + 1,
                )
                self.appended_parameters = appended_parameter_names(start, tokenizer)
            else:
                tokenizer = with_new_decoder(start, recipe.tokenizer, seed=recipe.seed)
        else:
            # Same initial weights on every rank (DDP would broadcast them anyway) and per seed.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(recipe.seed)
                tokenizer = HybridTokenizer(recipe.tokenizer_config())
        if recipe.decoder_only:
            for frozen in (tokenizer.encoder, tokenizer.quant_conv, tokenizer.quantize):
                frozen.requires_grad_(False)
        self.tokenizer = tokenizer.to(self.device)
        config = self.tokenizer.config
        # (S, V) hits of every code at every scale in the current window
        self.usage_counts = torch.zeros(config.num_scales, config.codebook_size, dtype=torch.float64)
        self.usage_window_steps = 0
        # Per-scale usage columns: coarse scales see few tokens, so their usage reads differently.
        self.metric_names = (
            *type(self).metric_names,
            *(f"codes_used_s{k}" for k in range(config.num_scales)),
            *(f"code_perplexity_s{k}" for k in range(config.num_scales)),
        )
        self._sample_images: torch.Tensor | None = None
        self._build_discriminator()
        return self.tokenizer

    def learning_rate_scales(self) -> dict[str, float]:
        """The deepened decoder's appended blocks at ``new_decoder_lr_scale`` times the rate."""
        return {name: self.recipe.new_decoder_lr_scale for name in self.appended_parameters}

    def _build_discriminator(self) -> None:
        adversarial = self.recipe.adversarial
        if not adversarial.enabled:
            return
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.recipe.seed + 1)  # its own stream: the tokenizer's init is unchanged
            discriminator = PatchDiscriminator(
                self.tokenizer.config.in_channels, adversarial.channels, adversarial.layers
            )
        self.discriminator = discriminator.to(self.device)
        if self.recipe.run.channels_last:
            self.discriminator.to(memory_format=torch.channels_last)
        self.ddp_discriminator: nn.Module = self.discriminator
        if self.ctx.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_discriminator = DistributedDataParallel(self.discriminator, device_ids=device_ids)
        self.discriminator_optimizer = torch.optim.AdamW(
            self.discriminator.parameters(),
            lr=adversarial.lr,
            betas=adversarial.betas,
            weight_decay=0.0,
            foreach=False if self.recipe.run.deterministic else None,
        )
        self._fake_images: torch.Tensor | None = None

    def adversarial_active(self, step: int) -> bool:
        """Whether ``step`` is in the adversarial phase (a discriminator exists and step ≥ start)."""
        return self.discriminator is not None and step >= self.recipe.adversarial.start_step

    def discriminator_active(self, step: int) -> bool:
        """Whether the discriminator trains at ``step``: the adversarial phase and its warm-up."""
        return self.discriminator is not None and step >= self.recipe.adversarial.discriminator_start_step

    @property
    def image_size(self) -> int:
        return self.tokenizer.config.image_size

    def _check_batch(self, images: torch.Tensor) -> None:
        size = self.image_size
        if tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(
                f"dataset images are {tuple(images.shape[1:])}, the tokenizer needs (3, {size}, {size}); "
                f"build the dataset at image_size={size}"
            )

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, Any]]:
        images = batch.images.to(self.device, non_blocking=True)
        self._check_batch(images)
        if self.recipe.run.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss_recipe = self.recipe.loss
        # One decision per step, the same on every rank (rank=None): a step is discrete or hybrid.
        decide = step_generator(self.recipe.seed, step, "tokenizer-branch")
        discrete = bool(rand_tensor((1,), decide).item() < loss_recipe.discrete_probability)
        with self.autocast_context():
            reconstruction, vq_loss, ids = self.ddp_model(images, use_residual=not discrete)
        reconstruction = reconstruction.float()
        error = reconstruction - images
        l1 = error.abs().mean()
        l2 = error.pow(2).mean()
        # The error's squared high band (above half the band). On top of l2 it makes fine error
        # cost more than smooth error of the same energy, as rFID does; logged even when off.
        l2_high_band = high_band(error).pow(2).mean()
        vq_loss = vq_loss.float()
        reconstruction_loss = (
            loss_recipe.l1_weight * l1
            + loss_recipe.l2_weight * l2
            + loss_recipe.high_band_weight * l2_high_band
        )
        loss = reconstruction_loss + loss_recipe.vq_weight * vq_loss
        metrics: dict[str, Any] = {}
        if self.discriminator_active(step):
            self._fake_images = reconstruction.detach()  # what after_step's discriminator step judges
        if self.adversarial_active(step):
            loss = loss + self._adversarial_term(images, reconstruction, reconstruction_loss, metrics)

        codebook_size = self.usage_counts.shape[1]
        for k, scale_ids in enumerate(ids):
            self.usage_counts[k] += torch.bincount(
                scale_ids.reshape(-1).cpu(), minlength=codebook_size
            ).double()
        self._last_images = images
        metrics.update(
            {
                "loss": loss.item(),
                "l1": l1.item(),
                "l2": l2.item(),
                "l2_high_band": l2_high_band.item(),
                "vq": vq_loss.item(),
                "l2_discrete" if discrete else "l2_hybrid": l2.item(),
                "discrete_fraction": float(discrete),
            }
        )
        return loss, metrics

    def _adversarial_term(
        self,
        images: torch.Tensor,
        reconstruction: torch.Tensor,
        reconstruction_loss: torch.Tensor,
        metrics: dict[str, Any],
    ) -> torch.Tensor:
        """The decoder's discriminator terms, each balanced against the reconstruction loss:
        weight · adaptive · adversarial + feature_matching_weight · adaptive' · feature matching."""
        assert self.discriminator is not None
        adversarial = self.recipe.adversarial
        last_layer = self.tokenizer.decoder.conv_out.weight
        term = reconstruction.new_zeros(())
        # The decoder's pass through the discriminator must not leave gradients on it.
        self.discriminator.requires_grad_(False)
        try:
            with self.autocast_context():
                if adversarial.feature_matching_weight > 0:
                    fake_features = self.discriminator.features(reconstruction)
                    with torch.no_grad():
                        real_features = self.discriminator.features(images)
                if adversarial.weight > 0:
                    # With feature matching on, the logits are one conv past its deepest map: one pass.
                    fake_logits = (
                        self.discriminator.layers[-1](fake_features[-1])
                        if adversarial.feature_matching_weight > 0
                        else self.discriminator(reconstruction)
                    ).float()  # (B, 1, P, P)
        finally:
            self.discriminator.requires_grad_(True)
        if adversarial.weight > 0:
            generator_loss = generator_adversarial_loss(fake_logits, adversarial.loss)
            adaptive = adaptive_adversarial_weight(
                reconstruction_loss, generator_loss, last_layer, adversarial.max_adaptive_weight
            )
            metrics["adversarial"] = generator_loss.item()
            metrics["adaptive_weight"] = adaptive.item()
            term = term + adversarial.weight * adaptive * generator_loss
        if adversarial.feature_matching_weight > 0:
            matching = feature_matching_loss(fake_features, real_features)
            adaptive = adaptive_adversarial_weight(
                reconstruction_loss, matching, last_layer, adversarial.max_adaptive_weight
            )
            metrics["feature_matching"] = matching.item()
            metrics["feature_matching_weight"] = adaptive.item()
            term = term + adversarial.feature_matching_weight * adaptive * matching
        return term

    def _discriminator_step(self, images: torch.Tensor) -> dict[str, float]:
        """One AdamW step of the discriminator on (real batch, the reconstruction just trained on)."""
        assert self._fake_images is not None
        fake = self._fake_images
        self._fake_images = None
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        # One call on real and fake together: DDP wants one forward per backward, and GroupNorm is
        # per image, so the halves do not see each other.
        with self.autocast_context():
            logits = self.ddp_discriminator(torch.cat([images, fake])).float()  # (2B, 1, P, P)
        real_logits, fake_logits = logits.chunk(2)
        loss = discriminator_loss(real_logits, fake_logits, self.recipe.adversarial.loss)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the discriminator's loss is {float(loss)}; lower adversarial.lr")
        loss.backward()
        self.discriminator_optimizer.step()
        return {
            "discriminator": loss.item(),
            "logits_real": real_logits.mean().item(),
            "logits_fake": fake_logits.mean().item(),
        }

    def after_step(self, batch: Batch, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.discriminator_active(step):
            metrics.update(self._discriminator_step(self._last_images))
        self.usage_window_steps += 1
        window = self.recipe.loss.revive_every or self.recipe.run.log_every
        if self.usage_window_steps >= window:
            metrics.update(self._close_usage_window(step))
        return metrics

    # ------------------------------------------------------------------ codebook usage
    @torch.no_grad()
    def _close_usage_window(self, step: int) -> dict[str, float]:
        """Usage statistics over every rank; revive dead codes when enabled. A collective."""
        counts = self.usage_counts.clone().to(self.device)  # a copy: the window is reset below
        all_reduce_sum_(counts)
        per_scale = counts.cpu()  # (S, V)
        self.usage_counts.zero_()
        self.usage_window_steps = 0
        counts = per_scale.sum(0)  # (V,)
        dead = counts == 0
        metrics = {
            "codes_used": float((~dead).double().mean()),
            "code_perplexity": perplexity(counts),
            "codes_revived": 0.0,
        }
        for k, scale_counts in enumerate(per_scale):
            metrics[f"codes_used_s{k}"] = float((scale_counts > 0).double().mean())
            metrics[f"code_perplexity_s{k}"] = perplexity(scale_counts)
        if self.recipe.loss.revive_every and bool(dead.any()):
            metrics["codes_revived"] = float(self._revive(dead, step))
        return metrics

    @torch.no_grad()
    def _revive(self, dead: torch.Tensor, step: int) -> int:
        quantize = self.tokenizer.quantize
        codebook = quantize.embedding.weight  # (V, Cz)
        count = int(dead.sum())
        if self.ctx.is_main:
            was_training = self.tokenizer.training
            self.tokenizer.eval()
            latent = self.tokenizer.encode(self._last_images)  # (B, Cz, H, W)
            self.tokenizer.train(was_training)
            pool = residual_vectors(quantize, latent)  # (N, Cz)
            generator = step_generator(self.recipe.seed, step, "revive")
            picks = (rand_tensor((count,), generator) * pool.shape[0]).long().clamp_(max=pool.shape[0] - 1)
            noise = randn_tensor((count, pool.shape[1]), generator)
            scale = self.recipe.loss.revive_noise * pool.std().clamp(min=1e-6)
            new_codes = pool[picks.to(pool.device)] + noise.to(pool.device) * scale
            codebook[dead.to(codebook.device)] = new_codes.to(codebook.dtype)
        broadcast_(codebook.data)  # every rank gets rank 0's codebook
        rows = dead.to(codebook.device)
        state = self.optimizer.state.get(codebook, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][rows] = 0  # stale moments would throw the fresh codes straight back
        if self.ema is not None:
            ema_codebook = self.ema.module.quantize.embedding.weight
            ema_codebook[rows] = codebook[rows].to(ema_codebook.dtype)
        logger.info("step %d: revived %d dead codes of %d", step, count, codebook.shape[0])
        return count

    # ------------------------------------------------------------------ state
    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        # Each rank's window counts are summed at the window's end, so saving rank 0's alone would
        # lose the others': sum them into the checkpoint and restore the sum on rank 0 only.
        counts = self.usage_counts.clone().to(self.device)
        all_reduce_sum_(counts)
        extra: dict[str, Any] = {"usage_window_steps": self.usage_window_steps}
        tensors = {"usage_counts": counts.cpu()}
        if self.discriminator is not None:
            for name, value in self.discriminator.state_dict().items():
                tensors[DISCRIMINATOR_PREFIX + name] = value
            optimizer_tensors, extra["discriminator_optimizer"] = flatten_optimizer_state(
                self.discriminator_optimizer.state_dict(), DISCRIMINATOR_OPTIMIZER_PREFIX
            )
            tensors.update(optimizer_tensors)
        return extra, tensors

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.usage_window_steps = int(extra.get("usage_window_steps", 0))
        counts = tensors.get("usage_counts")
        self.usage_counts.zero_()
        if counts is not None and self.ctx.is_main:
            if counts.shape != self.usage_counts.shape:
                logger.warning("the checkpoint's usage window has another shape; starting a new window")
            else:
                self.usage_counts.copy_(counts)
        if self.discriminator is None:
            return
        weights = {
            name[len(DISCRIMINATOR_PREFIX) :]: value
            for name, value in tensors.items()
            if name.startswith(DISCRIMINATOR_PREFIX)
        }
        if not weights:
            # A run that switches the adversarial loss on later starts a fresh discriminator.
            logger.warning("the checkpoint has no discriminator; starting a fresh one")
            return
        self.discriminator.load_state_dict(weights)
        self.discriminator_optimizer.load_state_dict(
            unflatten_optimizer_state(
                tensors, extra["discriminator_optimizer"], DISCRIMINATOR_OPTIMIZER_PREFIX
            )
        )

    # ------------------------------------------------------------------ outputs
    def write_model(self, folder: Path) -> None:
        save_tokenizer(self.saved_module, folder)

    def sample_images(self) -> torch.Tensor:
        """The first ``num_sample_images`` images of the dataset: (n, 3, S, S), fixed for the run."""
        if self._sample_images is None:
            wanted = self.recipe.num_sample_images
            images = []
            if hasattr(self.dataset, "__getitem__") and hasattr(self.dataset, "__len__"):
                for index in range(min(wanted, len(self.dataset))):
                    images.append(self.dataset[index]["image"])
            else:
                for sample in self.dataset:
                    images.append(sample["image"])
                    if len(images) == wanted:
                        break
            self._sample_images = torch.stack(images)
        return self._sample_images

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor | None = None) -> dict[str, Any]:
        """Reconstructions (discrete-only and hybrid) of ``images`` by the saved weights, with PSNRs."""
        tokenizer = self.saved_module
        was_training = tokenizer.training
        tokenizer.eval()
        images = (self.sample_images() if images is None else images).to(self.device)
        ids, residual = tokenizer.split(tokenizer.encode(images))
        discrete = tokenizer.decode(tokenizer.compose(ids, None))
        hybrid = tokenizer.decode(tokenizer.compose(ids, residual))
        tokenizer.train(was_training)
        return {
            "discrete": discrete,
            "hybrid": hybrid,
            "psnr_discrete": psnr(discrete, images),
            "psnr_hybrid": psnr(hybrid, images),
        }

    def write_samples(self, step: int) -> Path | None:
        """Grid: originals, discrete-only and hybrid reconstructions (one row each)."""
        result = self.evaluate()
        originals = self.sample_images()
        rows = [originals, result["discrete"].cpu(), result["hybrid"].cpu()]  # each (n, 3, S, S) in [-1, 1]
        grid = tensor_grid((torch.cat(rows) + 1) / 2, columns=originals.shape[0])
        path = self.out_dir / SAMPLES_DIR / f"step-{step:07d}.png"
        save_png(grid, path)
        logger.info(
            "step %d: reconstruction PSNR discrete %.2f dB, hybrid %.2f dB (%s)",
            step,
            result["psnr_discrete"],
            result["psnr_hybrid"],
            path,
        )
        return path
