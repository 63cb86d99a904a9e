"""Tests of the hybrid tokenizer: config, shapes, hybrid round trip, quantizer invariants, golden tensors."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pytest
import torch

from openhart.tokenizer import (
    HybridTokenizer,
    MultiScaleQuantizer,
    TokenizerConfig,
    official_tokenizer_state_dict,
)
from openhart.tokenizer.quantizer import phi_indices

logger = logging.getLogger(__name__)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HART_TINY = SHARED / "compat" / "hart-tiny"
RELEASE_N_PARAMS = 108_948_355  # n_params_vae of release_keys_inferred.json (codebook and Φ included)

TINY = TokenizerConfig(
    ch=32, ch_mult=(1, 1), latent_channels=8, codebook_size=640, patch_nums=(1, 2, 3, 4, 5, 6)
)
# Three levels with width changes, so nin_shortcut convs and two resamplers exist.
SMALL_3LEVEL = TokenizerConfig(
    ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, latent_channels=4, codebook_size=64, patch_nums=(1, 2, 4)
)


def _seeded_tokenizer(config: TokenizerConfig, seed: int = 0) -> HybridTokenizer:
    torch.manual_seed(seed)
    tokenizer = HybridTokenizer(config).eval()
    # Spread the codebook so that nearest-code picks vary (the default init is tiny).
    with torch.no_grad():
        tokenizer.quantize.embedding.weight.normal_(0.0, 0.5)
    return tokenizer


def _images(config: TokenizerConfig, batch: int = 2, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    size = config.image_size
    return torch.rand(batch, config.in_channels, size, size, generator=g) * 2 - 1


def _latent(config: TokenizerConfig, batch: int = 2, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    side = config.latent_size
    return torch.randn(batch, config.latent_channels, side, side, generator=g)


# ---------------------------------------------------------------------- config


def test_config_properties_and_round_trip():
    assert TINY.image_size == 12 and TINY.downsample_factor == 2 and TINY.num_scales == 6
    assert TINY.num_tokens == 91
    release = TokenizerConfig()
    assert release.image_size == 1024 and release.downsample_factor == 16 and release.num_scales == 14
    assert release.num_tokens == 9451
    assert TokenizerConfig.from_dict(json.loads(json.dumps(TINY.to_dict()))) == TINY
    assert TokenizerConfig(patch_nums=[1, 2, 4], ch_mult=[1, 2]).patch_nums == (1, 2, 4)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ch": 48}, "ch"),
        ({"ch": 0}, "ch"),
        ({"ch_mult": ()}, "ch_mult"),
        ({"ch_mult": (1, 0)}, "ch_mult"),
        ({"patch_nums": (2, 3)}, "patch_nums"),
        ({"patch_nums": (1, 3, 3)}, "patch_nums"),
        ({"patch_nums": (1,)}, "patch_nums"),
        ({"quant_conv_kernel": 2}, "quant_conv_kernel"),
        ({"phi_ratio": 1.5}, "phi_ratio"),
        ({"num_phi_convs": 0}, "num_phi_convs"),
        ({"dropout": 1.0}, "dropout"),
        ({"codebook_size": 0}, "codebook_size"),
        ({"num_res_blocks": True}, "num_res_blocks"),
    ],
)
def test_config_validation_names_field(changes, field):
    with pytest.raises(ValueError, match=field):
        TINY.replace(**changes)


def test_phi_index_per_scale():
    assert phi_indices(4, 6) == (0, 0, 1, 2, 3, 3)  # the official tiny case
    release = TokenizerConfig().phi_index_per_scale
    assert len(release) == 14 and release[0] == 0 and release[-1] == 3
    assert list(release) == sorted(release) and set(release) == {0, 1, 2, 3}
    assert phi_indices(1, 5) == (0,) * 5


# ---------------------------------------------------------------------- shapes and parameters


@pytest.mark.parametrize("config", [TINY, SMALL_3LEVEL], ids=["tiny", "3level"])
def test_shapes(config):
    tokenizer = _seeded_tokenizer(config)
    images = _images(config)
    with torch.no_grad():
        latent = tokenizer.encode(images)
        side = config.latent_size
        assert latent.shape == (2, config.latent_channels, side, side)
        ids, residual = tokenizer.split(latent)
        assert [tuple(i.shape) for i in ids] == [(2, p * p) for p in config.patch_nums]
        assert all(i.dtype == torch.int64 for i in ids)
        assert residual.shape == latent.shape
        tf = tokenizer.quantize.teacher_forcing_inputs(ids)
        assert tf.shape == (2, config.num_tokens - 1, config.latent_channels)
        out = tokenizer.decode(tokenizer.compose(ids))
        assert out.shape == images.shape and out.abs().max() <= 1.0
        recon, loss, train_ids = tokenizer(images)
        assert recon.shape == images.shape and loss.dim() == 0 and torch.isfinite(loss)
        assert all(torch.equal(a, b) for a, b in zip(ids, train_ids, strict=True))
    names = set(tokenizer.state_dict())
    has_nin = any("nin_shortcut" in n for n in names)
    assert has_nin == (len(set(config.ch_mult)) > 1 or config.ch_mult[0] != 1)


def test_release_size_parameter_count_and_keys():
    start = time.perf_counter()
    tokenizer = HybridTokenizer(TokenizerConfig())
    logger.info("release tokenizer built in %.2f s", time.perf_counter() - start)
    assert sum(p.numel() for p in tokenizer.parameters()) == RELEASE_N_PARAMS
    if not HART_TINY.is_dir():
        pytest.skip("../shared not present: release key check skipped")
    release = json.loads((HART_TINY / "release_keys_inferred.json").read_text())["tokenizer"]
    assert release["n_params_vae"] == RELEASE_N_PARAMS
    expected = {
        k[len("vae.") :]: tuple(shape)
        for k, shape, _ in release["keys"]
        if k.startswith("vae.") and k != "vae.quantize.ema_vocab_hit_SV"
    }
    assert {k: tuple(v.shape) for k, v in tokenizer.state_dict().items()} == expected


def test_release_size_shapes_on_meta_device():
    config = TokenizerConfig()
    with torch.device("meta"):
        tokenizer = HybridTokenizer(config)
        latent = tokenizer.encode(torch.empty(1, 3, 1024, 1024))
        image = tokenizer.decode(torch.empty(1, 32, 64, 64))
    assert latent.shape == (1, 32, 64, 64)
    assert image.shape == (1, 3, 1024, 1024)


# ---------------------------------------------------------------------- quantizer invariants


def test_split_compose_round_trip():
    tokenizer = _seeded_tokenizer(TINY)
    latent = _latent(TINY)
    with torch.no_grad():
        ids, residual = tokenizer.split(latent)
        full = tokenizer.compose(ids, residual)
        discrete = tokenizer.compose(ids)
    assert (full - latent).abs().max().item() <= 1e-5
    # The residual is real: the discrete-only latent misses a visible part of the latent.
    assert (discrete - latent).abs().max().item() > 1e-2
    assert torch.allclose(residual, latent - discrete, atol=1e-6)
    # Codes are varied, not collapsed onto one entry.
    assert len(torch.cat(ids, dim=1).unique()) > 10


def test_quantization_reduces_error_and_matches_brute_force_codes():
    quantizer = _seeded_tokenizer(TINY).quantize
    latent = _latent(TINY)
    with torch.no_grad():
        ids, residual = quantizer.quantize(latent)
        # Scale 0 picks the code nearest the global average of each latent (brute force check).
        mean = latent.mean(dim=(2, 3))  # (B, Cz)
        brute = torch.cdist(mean, quantizer.embedding.weight).argmin(dim=1)
        assert torch.equal(ids[0][:, 0], brute)
    assert residual.square().mean() < latent.square().mean()


def test_nearest_code_first_index_on_ties():
    quantizer = MultiScaleQuantizer(8, 2, (1, 2))
    with torch.no_grad():
        quantizer.embedding.weight.copy_(
            torch.tensor([[5.0, 5], [1, 0], [0, 1], [1, 0], [-1, 0], [0, -1], [2, 2], [1, 0]])
        )
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 0.0], [3.0, 3.0]])
    # [0, 0] is equally far from codes 1, 2, 3, 4, 5, 7: the first (1) wins.
    assert quantizer.nearest_code(z).tolist() == [1, 1, 1, 6]


def test_sampler_step_matches_compose_and_teacher_forcing():
    quantizer = _seeded_tokenizer(TINY).quantize
    latent = _latent(TINY)
    with torch.no_grad():
        ids, residual = quantizer.quantize(latent)
        f_hat = torch.zeros_like(latent)
        inputs = []
        for k in range(TINY.num_scales):
            h = quantizer.embed(ids[k])  # (B, pn², Cz)
            if k == TINY.num_scales - 1:
                h = h + residual.flatten(2).transpose(1, 2)  # hybrid last scale: token + residual
            f_hat, next_input = quantizer.next_scale_input(f_hat, h, k)
            if next_input is not None:
                inputs.append(next_input)
        assert (f_hat - latent).abs().max().item() <= 1e-5
        tf = quantizer.teacher_forcing_inputs(ids)
        assert torch.allclose(torch.cat(inputs, dim=1), tf, atol=1e-6)
        assert torch.allclose(quantizer.teacher_forcing_inputs(ids[:-1]), tf)
        # The first teacher-forcing input is scale 0's Φ'd code map averaged down to 2×2.
        up = quantizer.upsample_to_latent(quantizer.code_map(ids[0], 0))
        first = torch.nn.functional.adaptive_avg_pool2d(quantizer.phi(up, 0), 2).flatten(2).transpose(1, 2)
        assert torch.allclose(tf[:, :4], first, atol=1e-6)
        # Last-scale target = latent minus the Φ'd coarser scales.
        target = quantizer.last_scale_target(ids, residual)
        last_emb = quantizer.code_map(ids[-1], TINY.num_scales - 1)
        assert torch.allclose(target, latent - (quantizer.compose(ids) - last_emb), atol=1e-5)


def test_batch_equals_singles():
    tokenizer = _seeded_tokenizer(TINY)
    images = _images(TINY, batch=3)
    with torch.no_grad():
        ids, residual = tokenizer.split(tokenizer.encode(images))
        for b in range(3):
            ids_b, residual_b = tokenizer.split(tokenizer.encode(images[b : b + 1]))
            assert all(torch.equal(x[b : b + 1], y) for x, y in zip(ids, ids_b, strict=True))
            assert torch.allclose(residual[b : b + 1], residual_b, atol=1e-5)


def test_training_forward_straight_through_and_losses():
    tokenizer = _seeded_tokenizer(TINY).train()
    quantizer = tokenizer.quantize
    latent = _latent(TINY).requires_grad_(True)
    quantized, loss, ids = quantizer.training_forward(latent)
    with torch.no_grad():
        assert torch.allclose(quantized, quantizer.compose_var_style(ids), atol=1e-5)
        assert (quantized - latent).abs().max() > 1e-2
    assert loss.item() > 0
    (quantized.sum() + loss).backward()
    # Straight-through: d(sum)/d latent = 1 everywhere, plus the commitment gradient.
    assert latent.grad is not None and torch.isfinite(latent.grad).all()
    assert quantizer.embedding.weight.grad is not None and quantizer.embedding.weight.grad.abs().sum() > 0
    phi_grads = [conv.weight.grad for conv in quantizer.quant_resi.qresi_ls]
    assert any(g is not None and g.abs().sum() > 0 for g in phi_grads)

    continuous, _, _ = quantizer.training_forward(latent.detach(), use_residual=True)
    assert torch.equal(continuous, latent.detach())

    recon, vq_loss, _ = tokenizer(_images(TINY), use_residual=False)
    vq_loss.backward()
    assert tokenizer.encoder.conv_in.weight.grad is not None  # the commitment term trains the encoder
    assert recon.shape == (2, 3, 12, 12)


# ---------------------------------------------------------------------- bad inputs


def test_bad_inputs_raise_with_argument_name():
    tokenizer = _seeded_tokenizer(TINY)
    good_images = _images(TINY)
    latent = _latent(TINY)
    ids, residual = tokenizer.split(latent)
    with pytest.raises(ValueError, match=r"images.*rank 4"):
        tokenizer.encode(good_images[0])
    with pytest.raises(ValueError, match=r"images.*channels"):
        tokenizer.encode(good_images[:, :1])
    with pytest.raises(ValueError, match=r"images.*12"):
        tokenizer.encode(torch.zeros(1, 3, 16, 16))
    with pytest.raises(TypeError, match="images"):
        tokenizer.encode(good_images.to(torch.int64))
    with pytest.raises(TypeError, match="images"):
        tokenizer.encode(good_images.numpy())
    with pytest.raises(ValueError, match="latent"):
        tokenizer.split(latent[:, :4])
    with pytest.raises(ValueError, match="latent"):
        tokenizer.decode(torch.zeros(1, 8, 5, 5))
    with pytest.raises(ValueError, match=r"ids.*scales"):
        tokenizer.compose(ids[:-1])
    with pytest.raises(TypeError, match="ids"):
        tokenizer.compose(torch.cat(ids, dim=1))
    with pytest.raises(ValueError, match=r"ids\[2\].*shape"):
        tokenizer.compose([*ids[:2], ids[2][:, :4], *ids[3:]])
    with pytest.raises(ValueError, match=r"ids\[1\].*shape"):
        tokenizer.compose([ids[0], ids[1][:1], *ids[2:]])
    with pytest.raises(ValueError, match=r"ids\[3\].*range"):
        tokenizer.compose([*ids[:3], ids[3] + 640, *ids[4:]])
    with pytest.raises(ValueError, match=r"ids\[0\].*range"):
        tokenizer.compose([ids[0] - 1000, *ids[1:]])
    with pytest.raises(TypeError, match=r"ids\[0\]"):
        tokenizer.compose([ids[0].float(), *ids[1:]])
    with pytest.raises(ValueError, match=r"residual.*batch"):
        tokenizer.compose(ids, residual[:1])
    with pytest.raises(ValueError, match="residual"):
        tokenizer.compose(ids, residual[:, :, :3])
    with pytest.raises(ValueError, match="h:"):
        tokenizer.quantize.next_scale_input(torch.zeros_like(latent), torch.zeros(2, 5, 8), 1)
    with pytest.raises(ValueError, match="scale_index"):
        tokenizer.quantize.next_scale_input(torch.zeros_like(latent), torch.zeros(2, 1, 8), 6)
    with pytest.raises(ValueError, match="z:"):
        tokenizer.quantize.nearest_code(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="ids"):
        tokenizer.quantize.embed(ids[0][0])
    with pytest.raises(TypeError, match="config"):
        HybridTokenizer(TINY.to_dict())  # type: ignore[arg-type]


# ---------------------------------------------------------------------- official weights / golden tensors


def _official_tiny() -> tuple[HybridTokenizer, dict[str, torch.Tensor]]:
    if not HART_TINY.is_dir():
        pytest.skip("../shared not present: official hart-tiny tokenizer checks skipped")
    from safetensors.torch import load_file

    official_config = json.loads((HART_TINY / "tokenizer" / "config.json").read_text())
    config = TokenizerConfig.from_official_config(official_config)
    assert config == TINY
    tokenizer = HybridTokenizer(config).eval()
    raw = load_file(HART_TINY / "tokenizer" / "model.safetensors")
    tokenizer.load_state_dict(official_tokenizer_state_dict(raw), strict=True)
    return tokenizer, load_file(HART_TINY / "golden" / "tok.safetensors")


def test_official_state_dict_mapping():
    raw = {
        "vae.encoder.conv_in.weight": torch.zeros(1),
        "vae.quantize.ema_vocab_hit_SV": torch.zeros(1),
        "disc.main.0.weight": torch.zeros(1),
        "quant_conv.bias": torch.zeros(1),
    }
    assert set(official_tokenizer_state_dict(raw)) == {"encoder.conv_in.weight", "quant_conv.bias"}
    if not HART_TINY.is_dir():
        pytest.skip("../shared not present: official key list check skipped")
    keys = json.loads((HART_TINY / "tokenizer" / "keys.json").read_text())
    saved = {name: torch.empty(shape) for name, shape, _ in keys["saved"]}
    saved.update({name: torch.empty(shape) for name, shape, _ in keys["omitted_from_file_present_in_model"]})
    mapped = {k: tuple(v.shape) for k, v in official_tokenizer_state_dict(saved).items()}
    assert mapped == {k: tuple(v.shape) for k, v in HybridTokenizer(TINY).state_dict().items()}


def test_golden_official_tokenizer():
    tokenizer, golden = _official_tiny()
    with torch.no_grad():
        images = golden["img"]
        latent = tokenizer.encode(images)
        ids, residual = tokenizer.split(latent)
        for k, ids_k in enumerate(ids):
            assert torch.equal(ids_k, golden[f"idx_s{k}"]), f"idx_s{k} differs"
        # Everything downstream is computed from the golden ids, so each check is independent.
        golden_ids = [golden[f"idx_s{k}"] for k in range(TINY.num_scales)]
        quantizer = tokenizer.quantize
        fhat_discrete = tokenizer.compose(golden_ids)
        fhat_hybrid = tokenizer.compose(golden_ids, residual)
        ours = {
            "encoder_out": tokenizer.encoder(images),
            "f": latent,
            "frest_BLC": quantizer.last_scale_target(golden_ids, residual).flatten(2).transpose(1, 2),
            "fhat_discrete": fhat_discrete,
            "img_discrete": tokenizer.decode(fhat_discrete),
            "fhat_hybrid": fhat_hybrid,
            "img_hybrid": tokenizer.decode(fhat_hybrid),
            "var_input_BLC": quantizer.teacher_forcing_inputs(golden_ids),
            "img_var_style_recon": tokenizer.decode(tokenizer.compose_var_style(golden_ids)),
            "forward_out": tokenizer(images, use_residual=True)[0],
        }
        # The hybrid reconstruction API is the same chain.
        ours["reconstruct_hybrid"] = tokenizer.reconstruct(images, hybrid=True)
        ours["reconstruct_discrete"] = tokenizer.reconstruct(images, hybrid=False)
    reference = dict(
        golden, reconstruct_hybrid=golden["img_hybrid"], reconstruct_discrete=golden["img_discrete"]
    )
    errors = {}
    for name, value in ours.items():
        assert value.shape == reference[name].shape, name
        errors[name] = (value - reference[name]).abs().max().item()
    logger.info("max abs error vs official tokenizer: %s", errors)
    bad = {name: err for name, err in errors.items() if not err <= 1e-4}
    assert not bad, f"golden mismatch: {bad}"
    # The golden case is informative: the discrete-only image really differs from the hybrid one.
    assert (golden["img_discrete"] - golden["img_hybrid"]).abs().max() > 1e-2
