"""Self-correcting teacher forcing: with nothing replaced it is the tokenizer's split; with
replacements, every later target is the nearest code to what the replaced history misses, the
replacements are near codes, and the latent is still explained exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from openhart.tokenizer.quantizer import MultiScaleQuantizer
from openhart.training.batches import collate_samples
from openhart.training.generator_trainer import GeneratorTrainer
from openhart.training.self_correction import corrupted_split
from tests.test_training import SquaresDataset, generator_recipe, tokenizer_dir  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def quantize(tiny_pipeline) -> MultiScaleQuantizer:
    """The tiny tokenizer's quantizer in float64, so identities can be checked to 1e-12."""
    return copy.deepcopy(tiny_pipeline.tokenizer.quantize).double()


def latents(quantize: MultiScaleQuantizer, batch: int = 3, seed: int = 0) -> torch.Tensor:
    side, channels = quantize.latent_size, quantize.latent_channels
    codes = quantize.embedding.weight.detach()
    generator = torch.Generator().manual_seed(seed)
    # On the codebook's scale, so that near codes are distinct choices, not noise around zero.
    scale = codes.std() * 4
    return torch.randn(batch, channels, side, side, generator=generator, dtype=torch.float64) * scale


def test_nothing_replaced_is_the_tokenizers_split(quantize):
    latent = latents(quantize)
    split = corrupted_split(quantize, latent, torch.zeros(3), 8, torch.Generator().manual_seed(0))
    ids, residual = quantize.quantize(latent)
    for k, expected in enumerate(ids):
        assert torch.equal(split.target_ids[k], expected)
        assert torch.equal(split.input_ids[k], expected)
    torch.testing.assert_close(
        split.last_latent, quantize.last_scale_target(ids, residual), rtol=0, atol=1e-12
    )
    assert float(split.replaced) == 0.0


def test_replaced_history_is_corrected_by_the_later_targets(quantize):
    latent = latents(quantize, seed=1)
    neighbours = 4
    split = corrupted_split(quantize, latent, torch.ones(3), neighbours, torch.Generator().manual_seed(0))
    last = quantize.num_scales - 1
    codes = quantize.embedding.weight.detach()
    rest = latent.clone()
    for k in range(quantize.num_scales):
        pn = quantize.patch_nums[k]
        target = (
            torch.nn.functional.interpolate(rest, size=(pn, pn), mode="area")
            if pn != rest.shape[-1]
            else rest
        )
        rows = target.permute(0, 2, 3, 1).reshape(-1, codes.shape[1])
        distance = torch.cdist(rows, codes)  # (N, V), float64 recomputation
        # The target is the nearest code to what the replaced history misses.
        assert torch.equal(split.target_ids[k].view(-1), distance.argmin(dim=1))
        if k == last:
            torch.testing.assert_close(split.last_latent, rest, rtol=0, atol=1e-12)
            assert torch.equal(split.input_ids[k], split.target_ids[k])
            break
        # With fraction 1 every earlier token is replaced, by one of the other near codes.
        inputs = split.input_ids[k].view(-1)
        assert (inputs != split.target_ids[k].view(-1)).all()
        rank = (distance < distance.gather(1, inputs.view(-1, 1))).sum(dim=1)  # codes strictly nearer
        assert int(rank.max()) <= neighbours - 1
        emb = codes[split.input_ids[k]].transpose(1, 2).reshape(latent.shape[0], -1, pn, pn)
        up = torch.nn.functional.interpolate(emb, size=latent.shape[-2:], mode="bicubic", align_corners=False)
        rest = rest - quantize.quant_resi(up if pn != latent.shape[-1] else emb, k)
    assert float(split.replaced) == 1.0


def test_the_latent_stays_explained_for_any_fraction(quantize):
    latent = latents(quantize, seed=2)
    split = corrupted_split(
        quantize, latent, torch.tensor([0.0, 0.3, 0.9]), 8, torch.Generator().manual_seed(3)
    )
    total = split.last_latent.clone()
    for k in range(quantize.num_scales - 1):
        total = total + quantize.phi(quantize.upsample_to_latent(quantize.code_map(split.input_ids[k], k)), k)
    torch.testing.assert_close(total, latent, rtol=0, atol=1e-10)
    # The image with fraction 0 keeps every token; the others replace some, about as asked.
    earlier = quantize.num_scales - 1
    changed = [
        float(sum((split.input_ids[k][i] != split.target_ids[k][i]).sum() for k in range(earlier)))
        / sum(quantize.scale_lengths[:earlier])
        for i in range(3)
    ]
    assert changed[0] == 0.0 and 0.1 < changed[1] < 0.5 and 0.75 < changed[2] <= 0.9 + 1e-9, changed


def test_draws_follow_the_generator(quantize):
    latent = latents(quantize, seed=4)
    fraction = torch.full((3,), 0.5)

    def draw(seed: int) -> list[torch.Tensor]:
        return corrupted_split(quantize, latent, fraction, 8, torch.Generator().manual_seed(seed)).input_ids

    assert all(torch.equal(a, b) for a, b in zip(draw(0), draw(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(draw(0), draw(1), strict=True))


@pytest.mark.parametrize(
    ("fraction", "neighbours", "message"),
    [
        (torch.zeros(2), 8, r"fraction: expected shape \(3,\)"),
        (torch.zeros(3), 1, "neighbours: expected 2.."),
    ],
)
def test_bad_arguments_are_named(quantize, fraction, neighbours, message):
    with pytest.raises(ValueError, match=message):
        corrupted_split(quantize, latents(quantize), fraction, neighbours)


def test_trainer_with_self_correction_trains_and_reports_the_replaced_share(tmp_path, tokenizer_dir):  # noqa: F811
    recipe = generator_recipe(
        tmp_path / "run", tokenizer_dir, optim={"max_steps": 12}, loss={"self_correction": 0.4}
    )
    dataset = SquaresDataset()
    trainer = GeneratorTrainer(recipe, dataset=dataset)
    result = trainer.train()
    assert result.finished
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    replaced = [float(row.split(",")[header.index("replaced_tokens")]) for row in rows[1:]]
    assert replaced and all(0.0 < value < 0.4 for value in replaced), replaced
    ce = [float(row.split(",")[header.index("ce")]) for row in rows[1:]]
    assert ce[-1] < ce[0], ce


def test_proposals_replace_the_swapped_tokens_and_keep_the_latent_explained(quantize):
    latent = latents(quantize, seed=5)
    last = quantize.num_scales - 1
    draws = torch.Generator().manual_seed(9)
    proposals = [
        torch.randint(0, quantize.codebook_size, (3, n), generator=draws)
        for n in quantize.scale_lengths[:last]
    ]
    split = corrupted_split(quantize, latent, torch.ones(3), 8, torch.Generator().manual_seed(0), proposals)
    # Fraction 1: every earlier scale reads the proposals, whatever its re-quantized target is.
    for k in range(last):
        assert torch.equal(split.input_ids[k], proposals[k])
    total = split.last_latent.clone()
    for k in range(last):
        total = total + quantize.phi(quantize.upsample_to_latent(quantize.code_map(split.input_ids[k], k)), k)
    torch.testing.assert_close(total, latent, rtol=0, atol=1e-10)
    # Only tokens that differ from their target count as replaced.
    differ = sum(int((split.input_ids[k] != split.target_ids[k]).sum()) for k in range(last))
    assert float(split.replaced) == pytest.approx(differ / (3 * sum(quantize.scale_lengths[:last])))
    assert 0.0 < float(split.replaced) < 1.0


def test_proposals_equal_to_the_split_change_nothing(quantize):
    latent = latents(quantize, seed=6)
    ids, _ = quantize.quantize(latent)
    split = corrupted_split(quantize, latent, torch.ones(3), 8, torch.Generator().manual_seed(0), ids[:-1])
    for k, expected in enumerate(ids):
        assert torch.equal(split.input_ids[k], expected)
        assert torch.equal(split.target_ids[k], expected)
    assert float(split.replaced) == 0.0


def test_proposals_of_the_wrong_shape_are_named(quantize):
    latent = latents(quantize)
    ids, _ = quantize.quantize(latent)
    with pytest.raises(ValueError, match="proposals: expected one id tensor per earlier scale"):
        corrupted_split(quantize, latent, torch.ones(3), 8, None, ids)  # the last scale too


def _model_draw_trainer(tmp_path, tokenizer_dir, **loss) -> GeneratorTrainer:  # noqa: F811
    loss = {"self_correction": 0.4, "self_correction_source": "model", **loss}
    recipe = generator_recipe(tmp_path / "run", tokenizer_dir, optim={"max_steps": 12}, loss=loss)
    return GeneratorTrainer(recipe, dataset=SquaresDataset())


def test_the_models_draws_are_its_teacher_forced_predictions(tmp_path, tokenizer_dir):  # noqa: F811
    """At a vanishing temperature the draws are the argmax of the logits on the tokenizer's split."""
    trainer = _model_draw_trainer(tmp_path, tokenizer_dir, self_correction_temperature=1e-6)
    batch = collate_samples(SquaresDataset(4).samples)
    latent = trainer.latents(batch)
    draws = trainer.model_draws(batch, latent, torch.Generator().manual_seed(0))
    quantize = trainer.tokenizer.quantize
    ids, _ = trainer.tokenizer.split(latent)
    context, mask = trainer.contexts(batch.captions)
    with torch.no_grad(), trainer.autocast_context():
        logits = trainer.model.transformer(context, mask, quantize.teacher_forcing_inputs(ids)).logits
    expected = logits.float().argmax(dim=-1).split(quantize.scale_lengths, dim=1)
    assert len(draws) == quantize.num_scales - 1
    for k, draw in enumerate(draws):
        assert torch.equal(draw, expected[k]), k


def test_trainer_with_the_models_own_draws_trains_on_its_mistakes(tmp_path, tokenizer_dir):  # noqa: F811
    result = _model_draw_trainer(tmp_path, tokenizer_dir).train()
    assert result.finished
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    replaced = [float(row.split(",")[header.index("replaced_tokens")]) for row in rows[1:]]
    # Up to 40% of the tokens are handed to the model's draw, and only its mistakes count.
    assert replaced and all(0.0 < value < 0.4 for value in replaced), replaced
