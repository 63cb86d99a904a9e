"""A deepened decoder draws its trained decoder's images exactly, and its new blocks learn."""

from __future__ import annotations

import pytest
import torch

from openhart.tokenizer.autoencoder import AttnBlock
from openhart.tokenizer.deepen import deepen_tokenizer_decoder
from openhart.training.optim import parameter_groups
from openhart.training.recipe import RecipeError
from openhart.training.tokenizer_trainer import TokenizerTrainer, save_tokenizer
from tests.test_training import SquaresDataset, tokenizer_recipe
from tests.test_widen_decoder import _latent, _trained_looking_tokenizer


def _deepened_recipe(tmp_path, extra_blocks: int = 1, **sections):
    """The trained-looking tiny tokenizer saved as `init`, and a recipe deepening its decoder."""
    start_tokenizer = _trained_looking_tokenizer()
    start = save_tokenizer(start_tokenizer, tmp_path / "start")
    blocks = start_tokenizer.config.decoder_blocks + extra_blocks
    recipe = tokenizer_recipe(
        tmp_path / "run",
        init=str(start),
        new_decoder="deepened",
        tokenizer={"decoder_num_res_blocks": blocks},
        **sections,
    )
    return start_tokenizer, recipe


@pytest.mark.parametrize("extra", [1, 2])
def test_deepened_decoder_computes_the_trained_decoders_image(extra):
    shallow = _trained_looking_tokenizer().double()
    blocks = shallow.config.decoder_blocks
    deep = deepen_tokenizer_decoder(shallow, blocks + extra).double()
    for shallow_level, deep_level in zip(shallow.decoder.up, deep.decoder.up, strict=True):
        assert len(deep_level.block) == len(shallow_level.block) + extra
        assert len(deep_level.attn) in (0, len(deep_level.block))
    # The attention level is part of what is checked (its appended attention blocks).
    assert sum(isinstance(m, AttnBlock) for m in deep.decoder.modules()) > sum(
        isinstance(m, AttnBlock) for m in shallow.decoder.modules()
    )
    latent = _latent(shallow).double()
    with torch.no_grad():
        expected = shallow.decode_unclamped(latent)
        got = deep.decode_unclamped(latent)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-12 * max(1.0, float(expected.abs().max()))
    # Outside the decoder nothing changed; inside, every trained weight is kept.
    deep_state = deep.state_dict()
    for name, value in shallow.state_dict().items():
        assert torch.equal(deep_state[name], value), name


def test_the_appended_blocks_get_gradients_at_once():
    """Zero conv2 makes a block the identity, but its gradient is not zero: it starts learning."""
    shallow = _trained_looking_tokenizer().double()
    deep = deepen_tokenizer_decoder(shallow, shallow.config.decoder_blocks + 1).double()
    deep.decode_unclamped(_latent(shallow).double()).square().mean().backward()
    for level in deep.decoder.up:
        appended = level.block[-1]
        assert torch.count_nonzero(appended.conv2.weight) == 0
        assert float(appended.conv2.weight.grad.abs().max()) > 0
    attention = deep.decoder.up[-1].attn[-1]
    assert float(attention.proj_out.weight.grad.abs().max()) > 0


def test_deepening_needs_more_blocks():
    tokenizer = _trained_looking_tokenizer()
    with pytest.raises(ValueError, match="above the trained decoder's"):
        deepen_tokenizer_decoder(tokenizer, tokenizer.config.decoder_blocks)


def test_a_deepened_recipe_starts_from_inits_images_and_trains_the_new_blocks(tmp_path):
    start_tokenizer, recipe = _deepened_recipe(tmp_path, decoder_only=True, loss={"revive_every": 0})
    trainer = TokenizerTrainer(recipe, dataset=SquaresDataset(16))
    assert trainer.tokenizer.config.decoder_blocks == start_tokenizer.config.decoder_blocks + 1
    latent = _latent(start_tokenizer)
    with torch.no_grad():
        expected = start_tokenizer.decode_unclamped(latent)
        got = trainer.tokenizer.decode_unclamped(latent)
    assert float((got - expected).abs().max()) < 1e-5 * max(1.0, float(expected.abs().max()))
    trainer.train()
    # The appended full-resolution block is no longer the identity.
    assert torch.count_nonzero(trainer.tokenizer.decoder.up[0].block[-1].conv2.weight) > 0


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"new_decoder": "deepened", "tokenizer": {"decoder_num_res_blocks": 2}}, "needs `init`"),
        ({"new_decoder": "deepened", "init": "x"}, "decoder_num_res_blocks alone"),
        (
            {
                "new_decoder": "deepened",
                "init": "x",
                "tokenizer": {"decoder_ch": 64, "decoder_num_res_blocks": 2},
            },
            "decoder_num_res_blocks alone",
        ),
    ],
)
def test_bad_deepening_recipes_name_the_field(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message):
        tokenizer_recipe(tmp_path / "run", **sections)


def test_a_depth_that_is_not_larger_is_a_recipe_error(tmp_path):
    _, recipe = _deepened_recipe(tmp_path, extra_blocks=0)
    with pytest.raises(RecipeError, match=r"new_decoder: .*above the trained decoder's"):
        TokenizerTrainer(recipe, dataset=SquaresDataset(16))


def test_parameter_groups_scale_the_named_parameters_learning_rate():
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    plain = parameter_groups(module, 0.05)
    assert [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in plain] == [
        (2, 0.05, 1.0),
        (4, 0.0, 1.0),
    ]
    scaled = parameter_groups(module, 0.05, {"2.weight": 10.0, "2.bias": 10.0})
    summary = [(len(g["params"]), g["weight_decay"], g["lr_scale"]) for g in scaled]
    assert summary == [(1, 0.05, 1.0), (3, 0.0, 1.0), (1, 0.05, 10.0), (1, 0.0, 10.0)]
    assert scaled[2]["params"][0] is module[2].weight
    with pytest.raises(ValueError, match=r"lr_scales: no such parameters: \['3.weight'\]"):
        parameter_groups(module, 0.05, {"3.weight": 2.0})


def test_the_appended_blocks_train_at_new_decoder_lr_scale_times_the_rate(tmp_path):
    _, recipe = _deepened_recipe(
        tmp_path,
        decoder_only=True,
        new_decoder_lr_scale=10.0,
        loss={"revive_every": 0},
        optim={"max_steps": 2},
    )
    trainer = TokenizerTrainer(recipe, dataset=SquaresDataset(16))
    appended = {id(p) for p in trainer.tokenizer.decoder.up[0].block[-1].parameters()}
    appended |= {id(p) for p in trainer.tokenizer.decoder.up[-1].attn[-1].parameters()}
    trained = {id(p) for p in trainer.tokenizer.decoder.up[0].block[0].parameters()}
    trainer.train()
    # The last step's rates: the plain groups at the schedule's, the appended blocks' at 10x it.
    plain_rates = {g["lr"] for g in trainer.optimizer.param_groups if g["lr_scale"] == 1.0}
    scaled_rates = {g["lr"] for g in trainer.optimizer.param_groups if g["lr_scale"] == 10.0}
    assert len(plain_rates) == len(scaled_rates) == 1
    plain_rate, scaled_rate = plain_rates.pop(), scaled_rates.pop()
    assert plain_rate > 0 and scaled_rate == pytest.approx(10 * plain_rate)
    for group in trainer.optimizer.param_groups:
        ids = {id(p) for p in group["params"]}
        if ids & appended:
            assert group["lr_scale"] == 10.0 and not ids & trained
        elif ids & trained:
            assert group["lr_scale"] == 1.0
    scaled = [g for g in trainer.optimizer.param_groups if g["lr_scale"] == 10.0]
    assert sum(len(g["params"]) for g in scaled) == len(trainer.appended_parameters) > 0


def test_new_decoder_lr_scale_needs_a_deepened_decoder(tmp_path):
    with pytest.raises(RecipeError, match=r"new_decoder_lr_scale: .*needs new_decoder: 'deepened'"):
        tokenizer_recipe(tmp_path / "run", new_decoder_lr_scale=5.0)
