"""LoRA fine-tuning: HART's generator loss on PEFT adapters over a frozen trained model.

The step is the generator trainer's (cross-entropy on every scale + the residual diffusion loss,
against the frozen tokenizer's tokens; see :mod:`openhart.training.generator_trainer`); only the
trained weights differ. The base pipeline is loaded as ``openhart generate --model`` loads it,
every base weight is frozen, and PEFT injects low-rank adapters into the generator's loss module
(transformer + head), so the optimiser, checkpoints and resume see the adapters alone.

Outputs (``OUT`` = the run folder)::

    OUT/final/                      the adapter: adapter_config.json, adapter_model.safetensors,
                                    openhart_base.json (base name + weight fingerprint)
    OUT/checkpoints/step-N/model/   the same, at step N (plus optimiser/RNG state for --resume)
    OUT/samples/step-N.png          fixed prompts, base model (top row) vs adapted (bottom row)
    OUT/metrics.csv

Dimension legend: N sample prompts, S image side.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset, IterableDataset

from openhart.errors import InvalidInputError, ModelLoadError
from openhart.models.hart import HartPipeline
from openhart.models.lora import (
    BaseRecord,
    check_targets_match,
    import_peft,
    lora_config,
    save_adapter,
    weights_fingerprint,
)
from openhart.training.batches import load_dataset
from openhart.training.generator_trainer import GeneratorTrainer
from openhart.training.loop import SAMPLES_DIR
from openhart.training.lora_recipe import LoraRecipe
from openhart.utils.images import save_png, tensor_grid

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_PROMPTS = 4  # sample grid prompts taken from the data when the recipe names none


class TriggeredCaptions(Dataset):
    """A map-style dataset whose captions start with a trigger word."""

    def __init__(self, dataset: Dataset, trigger: str) -> None:
        self.dataset = dataset
        self.trigger = trigger.strip()

    def caption(self, caption: str) -> str:
        return f"{self.trigger} {caption}"

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = dict(self.dataset[index])
        sample["caption"] = self.caption(str(sample["caption"]))
        return sample


class TriggeredStream(IterableDataset):
    """A streamed dataset (WebDataset shards) whose captions start with a trigger word."""

    def __init__(self, dataset: IterableDataset, trigger: str) -> None:
        self.dataset = dataset
        self.trigger = trigger.strip()

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for sample in self.dataset:
            yield {**sample, "caption": f"{self.trigger} {sample['caption']}"}


def with_trigger(dataset: Dataset, trigger: str | None) -> Dataset:
    """``dataset`` with ``trigger`` prepended to its captions (unchanged without a trigger)."""
    if not trigger:
        return dataset
    if isinstance(dataset, IterableDataset):
        return TriggeredStream(dataset, trigger)
    return TriggeredCaptions(dataset, trigger)


def first_captions(dataset: Dataset, count: int) -> list[str]:
    """The first ``count`` distinct captions of the data (from a folder's records when it has them)."""
    if isinstance(dataset, TriggeredCaptions):
        return [dataset.caption(c) for c in first_captions(dataset.dataset, count)]
    records = getattr(dataset, "records", None)
    if records is not None:
        return list(dict.fromkeys(str(r.caption) for r in records))[:count]
    captions: dict[str, None] = {}
    for sample in dataset:  # a stream: read until enough distinct captions
        captions[str(sample["caption"])] = None
        if len(captions) == count:
            break
    return list(captions)


def load_base_pipeline(name: str, device: torch.device) -> HartPipeline:
    """The base model as ``openhart generate --model NAME`` loads it, in float32 on ``device``."""
    import typer

    from openhart.command_setup import load_model

    try:
        return load_model(name, device, torch.float32)
    except typer.Exit as error:  # the loader has printed its one-line reason
        raise ModelLoadError(f"--model {name}: the base model did not load") from error
    except typer.BadParameter as error:  # the command-line loader's word for "no such model"
        raise ModelLoadError(f"--model {name}: {error.format_message()}") from error
    except (FileNotFoundError, ValueError) as error:
        raise ModelLoadError(f"--model {name}: {error}") from error


class LoraTrainer(GeneratorTrainer):
    """``openhart train lora``: PEFT adapters trained with the generator's loss on a frozen base."""

    recipe_kind = "lora"
    recipe: LoraRecipe  # type: ignore[assignment]

    # ------------------------------------------------------------------ model
    def build_model(self) -> nn.Module:
        recipe = self.recipe
        peft = import_peft()
        base = load_base_pipeline(recipe.model, self.device)
        # Fingerprinted before any adapter exists; saved with every adapter and checkpoint.
        self.base_record = BaseRecord(
            recipe.model,
            weights_fingerprint(base),
            {"trigger": recipe.trigger, "rank": recipe.lora.rank, "targets": list(recipe.lora.targets)},
        )
        loss_module = self.setup_components(
            base.text_encoder, base.tokenizer, base.transformer, base.diffusion_head
        )
        loss_module.requires_grad_(False)
        check_targets_match(loss_module, recipe.lora.targets)  # each target names some layer
        config = lora_config(recipe.lora.rank, recipe.lora.alpha, recipe.lora.dropout, recipe.lora.targets)
        # Adapter initialisation draws from the global RNG: seed it, so a run's start is its seed's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(recipe.seed)
            model = peft.get_peft_model(loss_module, config)
        # Set after get_peft_model, which replaces it with the module's own name (none here).
        model.peft_config["default"].base_model_name_or_path = recipe.model
        if recipe.gradient_checkpointing:
            base.transformer.gradient_checkpointing = True
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        logger.info("LoRA: %d trainable parameters over %d frozen ones", trainable, frozen)
        self._base_images: torch.Tensor | None = None
        return model

    def training_dataset(self) -> Dataset:
        """The recipe's data, checked for at least one batch, with the trigger in its captions."""
        if self._dataset is None:
            spec = self.recipe.data.train
            where = f"--data {spec.get('root', spec.get('urls'))}"
            try:
                dataset = load_dataset(spec, self.image_size)
            except ValueError as error:
                raise InvalidInputError(f"{where}: {error}") from error
            size = len(dataset) if hasattr(dataset, "__len__") else None  # streams have no length
            if size == 0:
                raise InvalidInputError(
                    f"{where}: no usable images (a folder needs images with same-name .txt captions, "
                    "or a metadata.jsonl)"
                )
            batch = self.recipe.data.batch_size * self.ctx.world_size
            if size is not None and size < batch:
                raise InvalidInputError(
                    f"{where}: {size} images, fewer than one batch (data.batch_size "
                    f"{self.recipe.data.batch_size}); lower --batch-size"
                )
            self._dataset = with_trigger(dataset, self.recipe.trigger)
        return self._dataset

    # ------------------------------------------------------------------ checkpoints: adapters only
    def trained_weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.model.named_parameters() if p.requires_grad}

    def load_trained_weights(self, weights: dict[str, torch.Tensor]) -> None:
        expected = {name for name, p in self.model.named_parameters() if p.requires_grad}
        if set(weights) != expected:
            missing, unknown = sorted(expected - set(weights)), sorted(set(weights) - expected)
            raise ModelLoadError(
                f"checkpoint: its adapter weights do not match the recipe's (missing {missing[:3]}, "
                f"unexpected {unknown[:3]}); was lora.rank or lora.targets changed?"
            )
        self.model.load_state_dict(weights, strict=False)

    def extra_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {
            "base_model": self.base_record.base_model,
            "weights_sha256": self.base_record.weights_sha256,
        }, {}

    def load_extra_state(self, extra: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        recorded = extra.get("weights_sha256")
        if recorded is not None and recorded != self.base_record.weights_sha256:
            raise ModelLoadError(
                f"--resume: the run was trained on base model {extra.get('base_model')!r} (weights "
                f"{recorded[:12]}), but {self.recipe.model!r} now has other weights "
                f"({self.base_record.weights_sha256[:12]})"
            )

    # ------------------------------------------------------------------ outputs
    def write_model(self, folder: Path) -> None:
        save_adapter(self.model, folder, self.base_record)

    def sample_prompts(self) -> list[str]:
        prompts = list(self.recipe.sampling.prompts)
        return prompts or first_captions(self.dataset, DEFAULT_SAMPLE_PROMPTS)

    @torch.no_grad()
    def _sample(self, prompts: list[str]) -> torch.Tensor:
        sampling = self.recipe.sampling
        generators = [torch.Generator().manual_seed(sampling.seed + i) for i in range(len(prompts))]
        return self.pipeline(
            prompts,
            guidance_scale=sampling.guidance_scale,
            num_inference_steps=sampling.num_inference_steps,
            generator=generators,
            output_type="pt",
            sample_residual=not self.recipe.var_only,
        ).images  # (N, 3, S, S) in [0, 1]

    def write_samples(self, step: int) -> Path | None:
        """The fixed prompts drawn by the base model (top row) and the adapted one (bottom row)."""
        prompts = self.sample_prompts()
        if not prompts:
            return None
        with self.evaluation_mode():  # no adapter dropout while sampling
            if self._base_images is None:  # the base never changes: drawn once per run
                with self.model.disable_adapter():
                    self._base_images = self._sample(prompts)
            adapted = self._sample(prompts)
        grid = tensor_grid(torch.cat([self._base_images, adapted]), columns=len(prompts))
        path = save_png(grid, self.out_dir / SAMPLES_DIR / f"step-{step:07d}.png")
        logger.info("step %d: samples (base above, adapted below) %s", step, path)
        return path
