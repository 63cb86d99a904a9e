"""The split at half the band (utils/frequency_bands.py) against a float64 recomputation, and the
tokenizer trainer's high-band loss term."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from openhart.training.recipe import RecipeError
from openhart.training.tokenizer_trainer import TokenizerTrainer
from openhart.utils.frequency_bands import high_band, high_band_fraction, low_band
from tests.test_adversarial import _rows
from tests.test_training import SquaresDataset, _max_difference, _weights, tokenizer_recipe


def _low_band_float64(image: np.ndarray) -> np.ndarray:
    """2x2 block means, then 2x bilinear (half-pixel centres, edge rows repeated), by hand."""
    small = image.reshape(image.shape[0] // 2, 2, image.shape[1] // 2, 2).mean(axis=(1, 3))

    def up(rows: np.ndarray) -> np.ndarray:
        # Output pixel 2i sits a quarter pixel before input i, 2i+1 a quarter after it.
        before = np.concatenate([rows[:1], rows[:-1]])
        after = np.concatenate([rows[1:], rows[-1:]])
        out = np.empty((2 * rows.shape[0], *rows.shape[1:]))
        out[0::2] = 0.75 * rows + 0.25 * before
        out[1::2] = 0.75 * rows + 0.25 * after
        return out

    return up(up(small).T).T


def test_low_band_matches_a_float64_recomputation():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 8, 8, generator=generator, dtype=torch.float64)
    got = low_band(images)
    for b in range(2):
        for c in range(3):
            expected = _low_band_float64(images[b, c].numpy())
            np.testing.assert_allclose(got[b, c].numpy(), expected, atol=1e-12)


def test_the_bands_add_up_and_split_known_images():
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(3, 3, 16, 16, generator=generator)
    assert torch.allclose(low_band(images) + high_band(images), images, atol=1e-6)
    other = torch.rand(3, 3, 16, 16, generator=generator)
    # Linear: the band of an error is the difference of the bands.
    assert torch.allclose(high_band(images - other), high_band(images) - high_band(other), atol=1e-6)
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert high_band(flat).abs().max() < 1e-6 and high_band_fraction(flat - 0.1) < 1e-10
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2).float().expand(1, 3, 16, 16)
    assert torch.allclose(low_band(checker), torch.full_like(checker, 0.5))
    assert high_band_fraction(checker - 0.5) == pytest.approx(1.0)
    assert high_band_fraction(torch.zeros(1, 3, 4, 4)) == 0.0  # no error: no share, no NaN
    with pytest.raises(ValueError, match="even S"):
        low_band(torch.zeros(1, 3, 15, 15))


# ---------------------------------------------------------------------- the trainer's loss term
def test_high_band_weight_adds_its_term_to_the_loss_and_moves_the_decoder(tmp_path):
    dataset = SquaresDataset(24)
    weighted = TokenizerTrainer(
        tokenizer_recipe(tmp_path / "weighted", loss={"high_band_weight": 2.0}, run={"log_every": 1}),
        dataset=dataset,
    )
    weighted.train()
    plain = TokenizerTrainer(tokenizer_recipe(tmp_path / "plain", run={"log_every": 1}), dataset=dataset)
    plain.train()
    for row in _rows(tmp_path / "weighted"):
        high = float(row["l2_high_band"])
        assert 0 < high < float(row["l2"]), row["step"]  # a part of the error, not all of it
        expected = float(row["l1"]) + float(row["l2"]) + 2.0 * high + float(row["vq"])
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-5), row["step"]
    for row in _rows(tmp_path / "plain"):
        # Off by default: logged, not trained on.
        expected = float(row["l1"]) + float(row["l2"]) + float(row["vq"])
        assert float(row["l2_high_band"]) > 0
        assert float(row["loss"]) == pytest.approx(expected, rel=1e-5), row["step"]
    assert _max_difference(_weights(plain.model), _weights(weighted.model)) > 0.0


def test_a_negative_high_band_weight_names_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"loss\.high_band_weight"):
        tokenizer_recipe(tmp_path / "run", loss={"high_band_weight": -1.0})
