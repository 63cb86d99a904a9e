"""Training: the hybrid tokenizer and the generator (transformer + residual head), on torchrun.

* :mod:`~openhart.training.recipe` — YAML recipes → typed dataclasses (``load_recipe``)
* :mod:`~openhart.training.loop` — the shared loop (step, checkpoints, resume), with :mod:`~openhart.training.batches`, :mod:`~openhart.training.optim` (AdamW groups, warmup + cosine) and :mod:`~openhart.training.metrics`
* :mod:`~openhart.training.tokenizer_trainer` — ``TokenizerTrainer``
* :mod:`~openhart.training.generator_trainer` — ``GeneratorTrainer``
* :mod:`~openhart.training.checkpoint` — checkpoint layout, save / resume
* :mod:`~openhart.training.ema` — EMA of weights
* :mod:`~openhart.utils.distributed` — torchrun process group, rank-0 logging, seeding
* :mod:`~openhart.training.cli` — ``openhart train tokenizer|generator``

The trainers are imported lazily so that ``import openhart.training`` stays light.
"""

from openhart.training.recipe import GeneratorRecipe, RecipeError, TokenizerRecipe, load_recipe

__all__ = [
    "GeneratorRecipe",
    "GeneratorTrainer",
    "RecipeError",
    "TokenizerRecipe",
    "TokenizerTrainer",
    "load_recipe",
]


def __getattr__(name: str):
    if name == "TokenizerTrainer":
        from openhart.training.tokenizer_trainer import TokenizerTrainer

        return TokenizerTrainer
    if name == "GeneratorTrainer":
        from openhart.training.generator_trainer import GeneratorTrainer

        return GeneratorTrainer
    raise AttributeError(f"module 'openhart.training' has no attribute {name!r}")
