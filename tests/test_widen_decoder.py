"""A widened decoder draws its narrow decoder's images exactly, and its copies can drift apart."""

from __future__ import annotations

import pytest
import torch

from openhart.presets import build_pipeline
from openhart.tokenizer import HybridTokenizer
from openhart.tokenizer.autoencoder import AttnBlock
from openhart.tokenizer.widen import widen_tokenizer_decoder
from openhart.training.recipe import RecipeError
from openhart.training.tokenizer_trainer import TokenizerTrainer, save_tokenizer, with_new_decoder
from tests.test_training import SquaresDataset, tokenizer_recipe


def _trained_looking_tokenizer(seed: int = 0) -> HybridTokenizer:
    """The tiny tokenizer with every decoder weight and norm parameter randomised.

    A fresh init leaves norms at (1, 0) and biases at 0, which would hide a wrong copy map for them.
    """
    tokenizer = build_pipeline("tiny", seed=seed).tokenizer
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in tokenizer.decoder.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator) + 0.1)
    return tokenizer


def _latent(tokenizer: HybridTokenizer, batch: int = 2) -> torch.Tensor:
    c = tokenizer.config
    generator = torch.Generator().manual_seed(7)
    return torch.randn(batch, c.latent_channels, c.latent_size, c.latent_size, generator=generator)


@pytest.mark.parametrize("factor", [2, 3])
def test_widened_decoder_computes_the_narrow_decoders_image(factor):
    narrow = _trained_looking_tokenizer().double()
    width = narrow.config.decoder_width
    wide = widen_tokenizer_decoder(narrow, factor * width, torch.Generator().manual_seed(0)).double()
    assert wide.config.decoder_width == factor * width
    assert wide.decoder.conv_in.out_channels == factor * narrow.decoder.conv_in.out_channels
    # The attention blocks are part of what is checked (the query scale).
    assert any(isinstance(m, AttnBlock) for m in wide.decoder.modules())
    latent = _latent(narrow).double()
    with torch.no_grad():
        expected = narrow.decode_unclamped(latent)
        got = wide.decode_unclamped(latent)
    assert got.shape == expected.shape
    assert float((got - expected).abs().max()) < 1e-10 * max(1.0, float(expected.abs().max()))
    # Outside the decoder nothing changed.
    narrow_state = narrow.state_dict()
    for name, value in wide.state_dict().items():
        if not name.startswith("decoder."):
            assert torch.equal(value, narrow_state[name]), name


def test_copies_of_a_channel_get_different_gradients():
    """Equal halves would keep the copies equal in training; the random shares must not."""
    narrow = _trained_looking_tokenizer().double()
    wide = widen_tokenizer_decoder(narrow, 2 * narrow.config.decoder_width, torch.Generator().manual_seed(0))
    wide = wide.double()
    wide.decoder.zero_grad()
    wide.decode_unclamped(_latent(narrow).double()).square().mean().backward()
    # conv_in's output channels 2c and 2c+1 copy narrow channel c and start with equal weights.
    weight, grad = wide.decoder.conv_in.weight, wide.decoder.conv_in.weight.grad
    assert torch.equal(weight[0::2], weight[1::2])
    assert not torch.allclose(grad[0::2], grad[1::2])


def _decoder_64_wide() -> HybridTokenizer:
    """The tiny tokenizer with a 64-wide decoder: 96 is then a valid width but not a multiple."""
    return with_new_decoder(build_pipeline("tiny", seed=0).tokenizer, {"decoder_ch": 64}, seed=0)


def test_widening_needs_a_whole_multiple_of_the_width():
    with pytest.raises(ValueError, match="whole multiple"):
        widen_tokenizer_decoder(_decoder_64_wide(), 96, torch.Generator())
    with pytest.raises(ValueError, match="2x or more"):
        widen_tokenizer_decoder(_decoder_64_wide(), 64, torch.Generator())


def test_a_widened_recipe_starts_from_inits_images(tmp_path):
    start_tokenizer = _trained_looking_tokenizer()
    start = save_tokenizer(start_tokenizer, tmp_path / "start")
    width = start_tokenizer.config.decoder_width
    recipe = tokenizer_recipe(
        tmp_path / "run",
        init=str(start),
        decoder_only=True,
        new_decoder="widened",
        tokenizer={"decoder_ch": 2 * width},
        loss={"revive_every": 0},
    )
    trainer = TokenizerTrainer(recipe, dataset=SquaresDataset(16))
    assert trainer.tokenizer.config.decoder_width == 2 * width
    latent = _latent(start_tokenizer)
    with torch.no_grad():
        expected = start_tokenizer.decode_unclamped(latent)
        got = trainer.tokenizer.decode_unclamped(latent)
    assert float((got - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))
    trainer.train()  # and it trains


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"new_decoder": "widened", "tokenizer": {"decoder_ch": 64}}, "needs `init`"),
        ({"new_decoder": "widened", "init": "x"}, "decoder_ch alone"),
        (
            {
                "new_decoder": "widened",
                "init": "x",
                "tokenizer": {"decoder_ch": 64, "decoder_num_res_blocks": 2},
            },
            "decoder_ch alone",
        ),
        ({"new_decoder": "grown"}, "new_decoder"),
    ],
)
def test_bad_widening_recipes_name_the_field(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message):
        tokenizer_recipe(tmp_path / "run", **sections)


def test_a_width_that_is_not_a_multiple_is_a_recipe_error(tmp_path):
    start = save_tokenizer(_decoder_64_wide(), tmp_path / "start")
    recipe = tokenizer_recipe(
        tmp_path / "run", init=str(start), new_decoder="widened", tokenizer={"decoder_ch": 96}
    )
    with pytest.raises(RecipeError, match=r"new_decoder: .*whole multiple"):
        TokenizerTrainer(recipe, dataset=SquaresDataset(16))
