"""The tokenizer's adversarial recipe: loss terms on known inputs, the phase switch, exact resume,
decoder-only fine-tuning, and the shipped default model's images."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from openhart.presets import build_pipeline
from openhart.training.adversarial import (
    PatchDiscriminator,
    adaptive_adversarial_weight,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
)
from openhart.training.recipe import RecipeError
from openhart.training.tokenizer_trainer import TokenizerTrainer, load_tokenizer, save_tokenizer
from tests.test_training import SquaresDataset, _max_difference, _weights, tokenizer_recipe

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "openhart" / "weights" / "emoji-64"


@pytest.fixture(autouse=True)
def _restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def adversarial_recipe(out_dir: Path, **sections):
    adversarial = {"weight": 0.5, "start_step": 5, "channels": 16, "layers": 2, "lr": 1e-3}
    adversarial.update(sections.pop("adversarial", {}))
    return tokenizer_recipe(out_dir, adversarial=adversarial, **sections)


# ---------------------------------------------------------------------- loss terms on known inputs
def test_hinge_and_non_saturating_losses_on_known_logits():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.5])
    # hinge: real relu(1 − r) = (0, 0.5) → 0.25; fake relu(1 + f) = (0, 1.5) → 0.75; half the sum
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5)
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    expected = 0.5 * ((softplus(-2.0) + softplus(-0.5)) / 2 + (softplus(-2.0) + softplus(0.5)) / 2)
    assert discriminator_loss(real, fake, "non-saturating").item() == pytest.approx(expected, rel=1e-6)
    assert generator_adversarial_loss(fake, "hinge").item() == pytest.approx(0.75)
    assert generator_adversarial_loss(fake, "non-saturating").item() == pytest.approx(
        (softplus(2.0) + softplus(-0.5)) / 2, rel=1e-6
    )
    # A discriminator that is sure and right pays nothing under hinge.
    assert discriminator_loss(torch.full((4,), 3.0), torch.full((4,), -3.0)).item() == 0.0
    with pytest.raises(ValueError, match="kind"):
        discriminator_loss(real, fake, "wasserstein")


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    a = torch.tensor([3.0, 0.0, 4.0])  # ‖∇ reconstruction‖ = 5
    b = torch.tensor([0.0, 0.5, 0.0])  # ‖∇ adversarial‖ = 0.5
    reconstruction = (weight * a).sum()
    adversarial = (weight * b).sum()
    value = adaptive_adversarial_weight(reconstruction, adversarial, weight)
    assert value.item() == pytest.approx(5.0 / (0.5 + 1e-4), rel=1e-6)
    assert not value.requires_grad
    # The graphs are kept for the real backward, and nothing was accumulated on the weight.
    assert weight.grad is None
    (reconstruction + adversarial).backward()
    assert torch.equal(weight.grad, a + b)
    # Clamped when the adversarial gradient vanishes.
    flat = (weight * torch.zeros(3)).sum()
    clamped = adaptive_adversarial_weight((weight * a).sum(), flat, weight, max_weight=100.0)
    assert clamped.item() == 100.0


def test_patch_discriminator_gives_one_logit_per_patch_and_learns():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(channels=16, layers=2)
    images = torch.rand(4, 3, 64, 64) * 2 - 1
    logits = discriminator(images)
    assert logits.shape == (4, 1, 14, 14)  # 64 → 32 → 16 (stride 2), → 15 → 14 (k4 s1 p1)
    # Each image's logits depend on that image only (GroupNorm, not BatchNorm).
    alone = discriminator(images[:1])
    assert torch.allclose(alone, logits[:1], atol=1e-5)
    # A few steps separate flat images from noise.
    real, fake = torch.zeros(8, 3, 32, 32), torch.rand(8, 3, 32, 32) * 2 - 1
    optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-3)
    before = discriminator_loss(discriminator(real), discriminator(fake)).item()
    for _ in range(20):
        optimizer.zero_grad()
        discriminator_loss(discriminator(real), discriminator(fake)).backward()
        optimizer.step()
    assert discriminator_loss(discriminator(real), discriminator(fake)).item() < 0.5 * before
    with pytest.raises(ValueError, match="channels"):
        PatchDiscriminator(channels=24)


def test_feature_matching_compares_each_activation_with_its_own_original():
    torch.manual_seed(0)
    discriminator = PatchDiscriminator(channels=16, layers=2)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    features = discriminator.features(images)
    # One map per LeakyReLU (the first conv, then each of the `layers` widening convs), no logits.
    assert [tuple(f.shape[1:]) for f in features] == [(16, 16, 16), (32, 8, 8), (64, 7, 7)]
    # The logits are the last conv applied to the deepest map.
    assert torch.allclose(discriminator.layers[-1](features[-1]), discriminator(images), atol=1e-6)
    assert feature_matching_loss(features, features).item() == 0.0
    # Mean over layers of the mean absolute gap: layers weigh the same whatever their size.
    fake = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 1, 4, 4)]
    real = [torch.ones(1, 2, 2, 2), torch.full((1, 1, 4, 4), 3.0)]
    assert feature_matching_loss(fake, real).item() == pytest.approx((1.0 + 3.0) / 2)
    # Per image: swapping the originals between images is a mismatch, not the same statistics.
    swapped = discriminator.features(images.flip(0))
    assert feature_matching_loss(features, swapped).item() > 0.01
    with pytest.raises(ValueError, match="same non-zero length"):
        feature_matching_loss(fake, real[:1])


# ---------------------------------------------------------------------- the trainer
def _rows(out_dir: Path) -> list[dict[str, str]]:
    with open(out_dir / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_adversarial_phase_switches_on_at_the_configured_step(tmp_path):
    dataset = SquaresDataset(24)
    recipe = adversarial_recipe(tmp_path / "run", run={"log_every": 1})
    trainer = TokenizerTrainer(recipe, dataset=dataset)
    initial = _weights(trainer.discriminator)
    trainer.train(stop_at_step=4)
    assert _max_difference(initial, _weights(trainer.discriminator)) == 0.0  # not trained before step 5
    trainer = TokenizerTrainer(recipe, dataset=dataset, resume=True)
    trainer.train()
    assert _max_difference(initial, _weights(trainer.discriminator)) > 0.0
    rows = {int(r["step"]): r for r in _rows(tmp_path / "run")}
    assert sorted(rows) == list(range(1, 13))
    for step in range(1, 5):
        assert rows[step]["adversarial"] == "" and rows[step]["discriminator"] == "", step
    for step in range(5, 13):
        assert rows[step]["adversarial"] != "" and float(rows[step]["adaptive_weight"]) >= 0, step
        assert float(rows[step]["discriminator"]) > 0, step
    # Codebook usage is reported per scale too (every scale uses at least one code).
    scales = trainer.tokenizer.config.num_scales
    window_row = rows[4]  # revive_every 4: a usage window closes at step 4
    for k in range(scales):
        assert 0 < float(window_row[f"codes_used_s{k}"]) <= 1
        assert float(window_row[f"code_perplexity_s{k}"]) >= 1
    # The model folder holds the tokenizer alone; the discriminator lives in checkpoints only.
    assert not any("discriminator" in p.name for p in (tmp_path / "run" / "final").rglob("*"))


def test_feature_matching_alone_trains_the_discriminator_and_moves_the_decoder(tmp_path):
    """weight 0, feature_matching_weight > 0: no adversarial term, the discriminator still trains."""
    dataset = SquaresDataset(24)
    matching = {"weight": 0.0, "feature_matching_weight": 0.5}
    recipe = adversarial_recipe(tmp_path / "fm", adversarial=matching, run={"log_every": 1})
    trainer = TokenizerTrainer(recipe, dataset=dataset)
    initial = _weights(trainer.discriminator)
    trainer.train()
    assert _max_difference(initial, _weights(trainer.discriminator)) > 0.0
    rows = {int(r["step"]): r for r in _rows(tmp_path / "fm")}
    for step in range(1, 5):
        assert rows[step]["feature_matching"] == "", step
    for step in range(5, 13):
        row = rows[step]
        assert row["adversarial"] == "" and float(row["discriminator"]) > 0, step
        assert float(row["feature_matching"]) > 0 and float(row["feature_matching_weight"]) > 0, step
        reconstruction = float(row["l1"]) + float(row["l2"]) + float(row["vq"])
        # loss = reconstruction + 0.5 · adaptive · matching, the balance the recipe asks for
        term = 0.5 * float(row["feature_matching_weight"]) * float(row["feature_matching"])
        assert float(row["loss"]) == pytest.approx(reconstruction + term, rel=1e-4), step
    # The same run without the term trains another decoder from the same start.
    plain = TokenizerTrainer(
        adversarial_recipe(tmp_path / "plain", adversarial={"weight": 0.0}), dataset=dataset
    )
    assert plain.discriminator is None
    plain.train()
    assert _max_difference(_weights(plain.model), _weights(trainer.model)) > 0.0
    # Both terms at once: both columns are filled.
    both = adversarial_recipe(tmp_path / "both", adversarial={"feature_matching_weight": 0.5})
    TokenizerTrainer(both, dataset=dataset).train()
    last = _rows(tmp_path / "both")[-1]
    assert float(last["feature_matching"]) > 0 and last["adversarial"] != ""


def test_tokenizer_resume_with_the_discriminator_is_exact(tmp_path):
    dataset = SquaresDataset(20)
    whole = TokenizerTrainer(adversarial_recipe(tmp_path / "whole"), dataset=dataset)
    whole.train()
    first = TokenizerTrainer(adversarial_recipe(tmp_path / "parts"), dataset=dataset)
    first.train(stop_at_step=7)  # inside the adversarial phase
    second = TokenizerTrainer(adversarial_recipe(tmp_path / "parts"), dataset=dataset, resume=True)
    assert second.step == 7
    assert _max_difference(_weights(first.discriminator), _weights(second.discriminator)) == 0.0
    second.train()
    assert _max_difference(_weights(whole.model), _weights(second.model)) <= 1e-6
    assert _max_difference(_weights(whole.discriminator), _weights(second.discriminator)) <= 1e-6
    moments = [whole.discriminator_optimizer.state[p]["exp_avg_sq"] for p in whole.discriminator.parameters()]
    resumed = [
        second.discriminator_optimizer.state[p]["exp_avg_sq"] for p in second.discriminator.parameters()
    ]
    assert max(float((a - b).abs().max()) for a, b in zip(moments, resumed, strict=True)) <= 1e-6


def test_decoder_only_fine_tuning_keeps_the_tokens(tmp_path):
    start = save_tokenizer(build_pipeline("tiny", seed=0).tokenizer, tmp_path / "start")
    recipe = adversarial_recipe(
        tmp_path / "run",
        init=str(start),
        decoder_only=True,
        loss={"revive_every": 0},
        adversarial={"start_step": 1},
    )
    trainer = TokenizerTrainer(recipe, dataset=SquaresDataset(16))
    before = _weights(trainer.tokenizer)
    trainer.train()
    after = _weights(trainer.tokenizer)
    frozen = [k for k in before if k.split(".")[0] in ("encoder", "quant_conv", "quantize")]
    trained = [k for k in before if k.split(".")[0] in ("post_quant_conv", "decoder")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)


def test_a_wider_decoder_trains_on_the_frozen_tokens_of_init(tmp_path):
    """decoder_ch / decoder_num_res_blocks with `init`: a new decoder, the same tokens and residuals."""
    start_tokenizer = build_pipeline("tiny", seed=0).tokenizer
    start = save_tokenizer(start_tokenizer, tmp_path / "start")
    recipe = adversarial_recipe(
        tmp_path / "run",
        init=str(start),
        decoder_only=True,
        tokenizer={"decoder_ch": 2 * start_tokenizer.config.ch, "decoder_num_res_blocks": 2},
        loss={"revive_every": 0},
        adversarial={"start_step": 1},
    )
    trainer = TokenizerTrainer(recipe, dataset=SquaresDataset(16))
    tokenizer = trainer.tokenizer
    config = tokenizer.config
    assert (config.decoder_width, config.decoder_blocks) == (2 * config.ch, 2)
    assert tokenizer.decoder.conv_in.out_channels == 2 * start_tokenizer.decoder.conv_in.out_channels
    assert len(tokenizer.decoder.up[0].block) == 3  # decoder_num_res_blocks + 1
    # The encoder side is init's, weight for weight: same ids, same residual.
    kept = {k: v for k, v in start_tokenizer.state_dict().items() if not k.startswith("decoder.")}
    assert all(torch.equal(tokenizer.state_dict()[k], v) for k, v in kept.items())
    images = torch.stack([SquaresDataset(4)[i]["image"] for i in range(4)])
    with torch.no_grad():
        ids, residual = tokenizer.split(tokenizer.encode(images))
        start_ids, start_residual = start_tokenizer.split(start_tokenizer.encode(images))
    assert all(torch.equal(a, b) for a, b in zip(ids, start_ids, strict=True))
    assert torch.equal(residual, start_residual)
    trainer.train()
    final = load_tokenizer(tmp_path / "run")
    assert final.config.decoder_width == 2 * config.ch
    frozen = [k for k in kept if k.split(".")[0] in ("encoder", "quant_conv", "quantize")]
    assert frozen and all(torch.equal(final.state_dict()[k], kept[k]) for k in frozen)


def test_decoder_overrides_of_the_same_shape_start_a_fresh_decoder(tmp_path):
    """A control run: a new decoder the size of the trained one, on the same frozen encoder."""
    start_tokenizer = build_pipeline("tiny", seed=0).tokenizer
    start = save_tokenizer(start_tokenizer, tmp_path / "start")
    same = {"decoder_ch": start_tokenizer.config.ch}
    trainer = TokenizerTrainer(
        adversarial_recipe(tmp_path / "run", init=str(start), tokenizer=same), dataset=SquaresDataset(16)
    )
    before, now = start_tokenizer.state_dict(), trainer.tokenizer.state_dict()
    assert now.keys() == before.keys()
    assert all(torch.equal(now[k], before[k]) for k in now if not k.startswith("decoder."))
    assert not torch.equal(now["decoder.conv_in.weight"], before["decoder.conv_in.weight"])
    # Without overrides the trained decoder is kept.
    kept = TokenizerTrainer(
        adversarial_recipe(tmp_path / "kept", init=str(start)), dataset=SquaresDataset(16)
    )
    assert torch.equal(
        kept.tokenizer.state_dict()["decoder.conv_in.weight"], before["decoder.conv_in.weight"]
    )


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"init": "x", "tokenizer": {"ch": 64}}, r"\['ch'\] come from `init`"),
        ({"tokenizer": {"decoder_ch": 40}}, "decoder_ch"),
        ({"decoder_only": True}, "decoder_only: needs `init`"),
        ({"decoder_only": True, "init": "x", "loss": {"revive_every": 4}}, "revive_every to 0"),
        ({"adversarial": {"loss": "wasserstein"}}, "adversarial.loss"),
        ({"adversarial": {"start_step": -1}}, "adversarial.start_step"),
        ({"adversarial": {"channels": 24}}, "adversarial.channels"),
        ({"adversarial": {"feature_matching_weight": -1}}, "adversarial.feature_matching_weight"),
        (
            {"adversarial": {"start_step": 3, "discriminator_warmup_steps": 4}},
            "adversarial.discriminator_warmup_steps",
        ),
    ],
)
def test_bad_adversarial_recipes_name_the_field(tmp_path, sections, message):
    with pytest.raises(RecipeError, match=message):
        adversarial_recipe(tmp_path / "run", **sections)


# ---------------------------------------------------------------------- the shipped default model
@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the embedded emoji-64 weights are not in this checkout")
def test_shipped_default_model_draws_a_non_degenerate_image_offline():
    from openhart import HartPipeline

    pipe = HartPipeline.from_pretrained(SHIPPED)
    image = pipe("a red apple", generator=torch.Generator().manual_seed(0)).images[0]
    assert isinstance(image, Image.Image) and image.size == (64, 64)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32)).reshape(-1, 3) / 255  # (64·64, 3)
    # Not a flat fill, not noise: some spread of colours, and neighbouring pixels mostly agree.
    assert float(pixels.std(0).mean()) > 0.05
    grid = pixels.view(64, 64, 3)
    neighbour_gap = float((grid[:, 1:] - grid[:, :-1]).abs().mean())
    assert neighbour_gap < 0.5 * float(F.pdist(pixels[::97]).mean())


def test_channels_last_trainer_keeps_the_convolutions_arithmetic(tmp_path):
    """run.channels_last changes the memory order of the convs, not what they compute.

    Checked on the continuous path (encode, decode, discriminator) in float64, where the result
    must match to rounding. Whole training runs are not compared: a last-bit difference flips a
    nearest-code choice and two runs drift apart, as any two runs with a discrete choice do.
    """
    dataset = SquaresDataset(8)
    images = torch.stack([dataset[i]["image"] for i in range(4)]).double()
    outputs = []
    for channels_last in (False, True):
        recipe = adversarial_recipe(tmp_path / str(channels_last), run={"channels_last": channels_last})
        trainer = TokenizerTrainer(recipe, dataset=dataset)
        conv = trainer.tokenizer.decoder.conv_out.weight
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        tokenizer = trainer.tokenizer.double()
        discriminator = trainer.discriminator.double()
        batch = images.contiguous(memory_format=torch.channels_last) if channels_last else images
        with torch.no_grad():
            decoded = tokenizer.decoder(tokenizer.post_quant_conv(tokenizer.encode(batch)))
            outputs.append((decoded.contiguous(), discriminator(batch).contiguous()))
    (decoded_a, logits_a), (decoded_b, logits_b) = outputs
    assert float((decoded_a - decoded_b).abs().max()) <= 1e-9
    assert float((logits_a - logits_b).abs().max()) <= 1e-9


def test_the_discriminator_warms_up_alone_before_the_adversarial_phase(tmp_path):
    dataset = SquaresDataset(24)
    recipe = adversarial_recipe(
        tmp_path / "run", adversarial={"start_step": 8, "discriminator_warmup_steps": 4}, run={"log_every": 1}
    )
    trainer = TokenizerTrainer(recipe, dataset=dataset)
    initial = _weights(trainer.discriminator)
    trainer.train(stop_at_step=3)
    assert _max_difference(initial, _weights(trainer.discriminator)) == 0.0  # starts at step 4
    trainer = TokenizerTrainer(recipe, dataset=dataset, resume=True)
    trainer.train()
    rows = {int(r["step"]): r for r in _rows(tmp_path / "run")}
    for step in range(1, 4):
        assert rows[step]["discriminator"] == "" and rows[step]["adversarial"] == "", step
    for step in range(4, 8):  # the warm-up: the discriminator learns, the decoder's loss has no term of it
        assert float(rows[step]["discriminator"]) > 0 and rows[step]["adversarial"] == "", step
        assert float(rows[step]["loss"]) == pytest.approx(
            float(rows[step]["l1"]) + float(rows[step]["l2"]) + float(rows[step]["vq"]), rel=1e-5
        )
    for step in range(8, 13):
        assert rows[step]["adversarial"] != "" and float(rows[step]["discriminator"]) > 0, step


def test_resume_inside_the_discriminator_warm_up_is_exact(tmp_path):
    dataset = SquaresDataset(20)
    sections = {"adversarial": {"start_step": 8, "discriminator_warmup_steps": 5}}
    whole = TokenizerTrainer(adversarial_recipe(tmp_path / "whole", **sections), dataset=dataset)
    whole.train()
    first = TokenizerTrainer(adversarial_recipe(tmp_path / "parts", **sections), dataset=dataset)
    first.train(stop_at_step=5)  # inside the warm-up
    second = TokenizerTrainer(
        adversarial_recipe(tmp_path / "parts", **sections), dataset=dataset, resume=True
    )
    second.train()
    assert _max_difference(_weights(whole.model), _weights(second.model)) <= 1e-6
    assert _max_difference(_weights(whole.discriminator), _weights(second.discriminator)) <= 1e-6
