"""HartTransformer: KV-cached passes reproduce teacher forcing; masks, subsampling and errors."""

from __future__ import annotations

import json

import pytest
import torch

from openhart.transformer import HartTransformer, HartTransformerConfig
from tests.conftest import SHARED, perturb_

BASE = dict(
    codebook_size=64,
    latent_channels=8,
    patch_nums=(1, 2, 3, 5),
    context_dim=16,
    context_tokens=6,
    width=32,
    depth=2,
    num_heads=4,
)
VARIANTS = [
    {},
    {"rope_2d": "hart", "mask_context_padding": False, "block_pooling": "max", "head_pooling": "max"},
    {"adaln": "none", "level_embedding": "table"},
    {"attn_l2_norm": True, "context_norm": False},
    {"attn_scale": 0.25 / 8**0.5},
]


def _inputs(config: HartTransformerConfig, batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, config.context_tokens, config.context_dim, generator=g)
    mask = torch.ones(batch, config.context_tokens, dtype=torch.bool)
    mask[0, 4:] = False  # right padding
    mask[1, :2] = False  # left padding
    inputs = torch.randn(batch, config.num_image_tokens - 1, config.latent_channels, generator=g)
    return context, mask, inputs


def _model(**overrides) -> HartTransformer:
    torch.manual_seed(0)
    model = HartTransformer(HartTransformerConfig(**{**BASE, **overrides})).eval()
    perturb_(model, seed=1)
    return model


def _cached_logits(model: HartTransformer, context, mask, inputs):
    state, logits = model.start_generation(context, mask)
    rows, start, hidden = [logits], 0, None
    for k in range(1, model.config.num_scales):
        count = model.config.patch_nums[k] ** 2
        logits, hidden = model.generation_step(state, k, inputs[:, start : start + count])
        rows.append(logits)
        start += count
    return torch.cat(rows, dim=1), hidden


@pytest.mark.parametrize(
    "overrides", VARIANTS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default"
)
def test_kv_cached_passes_reproduce_teacher_forcing(overrides):
    model = _model(**overrides)
    context, mask, inputs = _inputs(model.config)
    with torch.no_grad():
        teacher = model(context, mask, inputs)
    cached, last_hidden = _cached_logits(model, context, mask, inputs)
    assert teacher.logits.shape == (3, model.config.num_image_tokens, 64)
    assert (cached - teacher.logits).abs().max() <= 1e-5
    assert (last_hidden - teacher.last_scale_hidden).abs().max() <= 1e-5


def test_block_causal_mask_hides_finer_scales():
    """Changing the inputs of the last scale must not change any coarser scale's logits."""
    model = _model()
    context, mask, inputs = _inputs(model.config)
    changed = inputs.clone()
    changed[:, -25:] += 1.0  # last scale is 5x5
    with torch.no_grad():
        a, b = model(context, mask, inputs).logits, model(context, mask, changed).logits
    coarse = model.config.num_image_tokens - 25
    assert torch.equal(a[:, :coarse], b[:, :coarse])
    assert (a[:, coarse:] - b[:, coarse:]).abs().max() > 1e-3


def test_padding_is_masked_when_configured():
    """With mask_context_padding the values at padded prompt positions are irrelevant."""
    model = _model()
    context, mask, inputs = _inputs(model.config)
    noisy = context.clone()
    noisy[~mask] = 100.0
    with torch.no_grad():
        a, b = model(context, mask, inputs).logits, model(noisy, mask, inputs).logits
    assert (a - b).abs().max() <= 1e-5
    unmasked = _model(mask_context_padding=False, block_pooling="max")
    with torch.no_grad():
        c, d = unmasked(context, mask, inputs).logits, unmasked(noisy, mask, inputs).logits
    assert (c - d).abs().max() > 1e-3


def test_last_scale_subsampling_matches_full_pass_rows():
    """Dropping last-scale tokens leaves coarser logits unchanged (they cannot see the last scale)."""
    model = _model()
    context, mask, inputs = _inputs(model.config)
    keep = torch.stack(
        [torch.randperm(25, generator=torch.Generator().manual_seed(i))[:7].sort().values for i in range(3)]
    )
    with torch.no_grad():
        full = model(context, mask, inputs)
        sub = model(context, mask, inputs, last_scale_positions=keep)
    coarse = model.config.num_image_tokens - 25
    assert sub.logits.shape == (3, coarse + 7, 64)
    assert (sub.logits[:, :coarse] - full.logits[:, :coarse]).abs().max() <= 1e-5
    assert sub.last_scale_hidden.shape == (3, 7, 32)


@pytest.mark.parametrize(
    "bad",
    [
        {"patch_nums": ()},
        {"patch_nums": (2, 3)},
        {"patch_nums": (1, 3, 3)},
        {"patch_nums": (1, 0)},
        {"depth": 0},
        {"num_heads": 5},
        {"adaln": "shared-ish"},
        {"rope_2d": "3d"},
        {"width": -32},
    ],
)
def test_bad_config_values_raise(bad):
    with pytest.raises(ValueError):
        HartTransformerConfig(**{**BASE, **bad})


def test_bad_inputs_name_the_argument():
    model = _model()
    context, mask, inputs = _inputs(model.config)
    with pytest.raises(ValueError, match="context"):
        model(context[:, :3], mask, inputs)
    with pytest.raises(ValueError, match="context_mask"):
        model(context, mask.long(), inputs)
    with pytest.raises(ValueError, match="scale_inputs"):
        model(context, mask, inputs[:, 1:])
    empty = mask.clone()
    empty[2] = False
    with pytest.raises(ValueError, match="at least one valid token"):
        model(context, empty, inputs)
    state, _ = model.start_generation(context, mask)
    with pytest.raises(ValueError, match="scale_index"):
        model.generation_step(state, 0, inputs[:, :1])


def test_released_tiny_checkpoint_teacher_forced_logits():
    """The official tiny checkpoint maps onto our modules and gives the official logits (≤ 1e-4)."""
    folder = SHARED / "compat" / "hart-tiny"
    if not folder.is_dir():
        pytest.skip("../shared/compat/hart-tiny not present: cannot compare with the official logits")
    from safetensors.torch import load_file

    official = json.loads((folder / "llm" / "config.json").read_text())
    config = HartTransformerConfig(
        codebook_size=640,
        latent_channels=8,
        patch_nums=tuple(official["patch_nums"]),
        context_dim=official["context_dim"],
        context_tokens=official["context_token"],
        width=official["embed_dim"],
        depth=official["depth"],
        num_heads=official["num_heads"],
        block_pooling="max",
        head_pooling="max",
        attn_scale=0.25 / (official["embed_dim"] // official["num_heads"]) ** 0.5,
        rope_2d="hart",
        mask_context_padding=False,
    )
    model = HartTransformer(config).eval()
    state = {}
    for name, tensor in load_file(str(folder / "llm" / "model.safetensors")).items():
        if (
            name.startswith("diffloss.")
            or name in ("lvl_1L", "attn_bias_for_masking")
            or name.endswith("zero_k_bias")
        ):
            continue
        if name == "head_nm.ln_wo_grad.weight":
            state["head_nm.norm.weight"] = tensor
        elif name.endswith("ln_wo_grad.weight"):  # one norm weight shared by both sub-layers
            prefix = name.removesuffix("ln_wo_grad.weight")
            state[prefix + "attn_norm.weight"] = tensor
            state[prefix + "ffn_norm.weight"] = tensor
        else:
            state[name] = tensor
    model.load_state_dict(state, strict=True)
    golden = load_file(str(folder / "golden" / "tf.safetensors"))
    with torch.no_grad():
        out = model(golden["context"], golden["context_mask"].bool(), golden["x_BLCv_wo_first_l"])
    assert (out.logits - golden["nodrop_logits"]).abs().max() <= 1e-4
    last = config.patch_nums[-1] ** 2
    assert (out.last_scale_hidden - golden["nodrop_last_block_out"][:, -last:]).abs().max() <= 1e-4
    cached, _ = _cached_logits(
        model, golden["context"], golden["context_mask"].bool(), golden["x_BLCv_wo_first_l"]
    )
    assert (cached - golden["nodrop_logits"]).abs().max() <= 1e-4
