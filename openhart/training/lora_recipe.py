"""The LoRA fine-tuning recipe: a base model, a folder of captioned images, adapter settings.

``openhart train lora`` builds one from its flags (``--model --data --out --max-steps ...``), or
reads a YAML file (``--config``) with the same fields, flags and ``--set`` winning. The sections
``data``, ``optim``, ``loss``, ``sampling`` and ``run`` are the generator recipe's (same fields,
same checks), with defaults suited to adapters; ``lora`` holds the adapter's own settings. Bad
values raise ConfigError naming the dotted field.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openhart.errors import ConfigError
from openhart.models.lora import DEFAULT_TARGETS, target_pattern
from openhart.training.recipe import (
    DataRecipe,
    GeneratorLossRecipe,
    OptimRecipe,
    RecipeError,
    RunRecipe,
    SamplingRecipe,
    apply_overrides,
    build_section,
    parse_yaml,
)
from openhart.utils.config import Config


def _check(condition: bool, field: str, expected: str, value: Any) -> None:
    if not condition:
        raise RecipeError(f"{field}: expected {expected}, got {value!r}")


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


@dataclasses.dataclass(frozen=True)
class LoraSection(Config):
    """The adapters: rank r, scale alpha / r, dropout, and which linears carry them."""

    rank: int = 8  # r: the low-rank update of a (out × in) weight has r · (out + in) parameters
    alpha: float = 8.0  # the update is scaled by alpha / r (alpha = r: scale 1)
    dropout: float = 0.0  # on each adapter's input, training only
    # Group names (attention, mlp, adaln, diffusion_head; see openhart.models.lora.TARGET_GROUPS) or
    # full-match regexes over module paths (transformer.blocks.0.attn.qkv_proj, ...).
    targets: tuple[str, ...] = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        _check(
            isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
            "lora.rank",
            "an int >= 1",
            self.rank,
        )
        _check(_positive_number(self.alpha), "lora.alpha", "a positive number", self.alpha)
        _check(
            isinstance(self.dropout, (int, float))
            and not isinstance(self.dropout, bool)
            and 0 <= self.dropout < 1,
            "lora.dropout",
            "a number in [0, 1)",
            self.dropout,
        )
        _check(isinstance(self.targets, tuple), "lora.targets", "a list of names", self.targets)
        try:
            target_pattern(self.targets)
        except ConfigError as error:
            raise RecipeError(str(error)) from error


# Defaults of the shared sections where adapters differ from the generator recipe: a higher
# learning rate (only small zero-initialised updates are trained), no weight decay (it would pull
# the update, not the weights, toward zero), fewer steps, smaller batches, frequent grids.
SECTION_DEFAULTS: dict[str, dict[str, Any]] = {
    "data": {"batch_size": 8},
    "optim": {"lr": 5e-4, "warmup_steps": 20, "max_steps": 500, "weight_decay": 0.0},
    "sampling": {"prompts": []},
    "run": {"out_dir": "runs/lora", "checkpoint_every": 100, "sample_every": 100},
}


@dataclasses.dataclass(frozen=True)
class LoraRecipe(Config):
    """``openhart train lora``: adapters on a trained model's transformer (and optionally its head)."""

    model: str  # the base: a pipeline folder, a preset or shipped model name, or a Hub repo id
    # Prepended to every caption ("sks dog" style): one word the adapter ties to the new concept.
    trigger: str | None = None
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory
    text_features: str | None = None  # as in the generator recipe (precomputed caption features)
    cache_text_features: bool = True
    cache_latents: bool = True
    seed: int = 0
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    data: DataRecipe = dataclasses.field(default_factory=lambda: DataRecipe(**SECTION_DEFAULTS["data"]))
    optim: OptimRecipe = dataclasses.field(default_factory=lambda: OptimRecipe(**SECTION_DEFAULTS["optim"]))
    loss: GeneratorLossRecipe = dataclasses.field(default_factory=GeneratorLossRecipe)
    # Empty prompts: the first four distinct captions of the data (trigger included).
    sampling: SamplingRecipe = dataclasses.field(
        default_factory=lambda: SamplingRecipe(**{**SECTION_DEFAULTS["sampling"], "prompts": ()})
    )
    run: RunRecipe = dataclasses.field(default_factory=lambda: RunRecipe(**SECTION_DEFAULTS["run"]))
    kind: str = "lora"

    def __post_init__(self) -> None:
        _check(self.kind == "lora", "kind", "'lora'", self.kind)
        _check(
            isinstance(self.model, str) and bool(self.model), "model", "a model folder or name", self.model
        )
        _check(
            self.trigger is None or (isinstance(self.trigger, str) and bool(self.trigger.strip())),
            "trigger",
            "a non-empty word or null",
            self.trigger,
        )
        for name in ("gradient_checkpointing", "cache_text_features", "cache_latents"):
            _check(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        _check(
            self.text_features is None or (isinstance(self.text_features, str) and bool(self.text_features)),
            "text_features",
            "a path or null",
            self.text_features,
        )
        _check(isinstance(self.seed, int) and self.seed >= 0, "seed", "an int >= 0", self.seed)
        if not self.data.train:
            raise RecipeError("data.train: no training images (pass --data FOLDER)")
        if self.optim.ema_decay:
            # The adapter is small and trained briefly; an EMA would copy the whole base model.
            raise RecipeError("optim.ema_decay: LoRA training keeps no EMA; set it to 0")

    # What the generator trainer reads from its recipe, fixed for adapters.
    @property
    def save_ema(self) -> bool:
        return False

    @property
    def var_only(self) -> bool:
        return self.loss.diffusion_weight == 0


def data_spec(data: str) -> dict[str, Any]:
    """``--data`` → a dataset spec: a folder (images + same-name .txt, or metadata.jsonl) or shards."""
    if data.endswith(".tar") or "{" in data or data.startswith(("http://", "https://")):
        return {"type": "webdataset", "urls": data}
    return {"type": "imagefolder", "root": data}


def load_lora_recipe(
    config: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    values: dict[str, Any] | None = None,
) -> LoraRecipe:
    """A LoRA recipe from an optional YAML file, then ``values`` (dotted keys), then ``--set`` overrides."""
    data: dict[str, Any] = {"kind": "lora"}
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise RecipeError(f"--config: recipe file not found: {path}")
        loaded = parse_yaml(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise RecipeError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    for key, value in (values or {}).items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecipeError(f"{key}: {part} is not a section")
        node[last] = value
    data = apply_overrides(data, overrides)
    for section, defaults in SECTION_DEFAULTS.items():
        given = data.get(section)
        if given is None:
            given = {}
        if isinstance(given, dict):
            if section == "optim" and "warmup_steps" not in given:
                # A short run (--max-steps 5) keeps a warmup that fits it: a tenth of the steps at most.
                steps = given.get("max_steps", defaults["max_steps"])
                if isinstance(steps, int) and not isinstance(steps, bool):
                    given = {**given, "warmup_steps": min(defaults["warmup_steps"], max(0, steps // 10))}
            data[section] = {**defaults, **given}
    if data.get("kind") != "lora":
        raise RecipeError(
            f"kind: this command trains LoRA adapters, but the recipe is a {data.get('kind')!r} recipe"
        )
    return build_section(LoraRecipe, data)
