"""Top-k and nucleus (top-p) filters of the token sampler, against a float64 full-sort reference."""

from __future__ import annotations

import math

import pytest
import torch

from openhart.sampling import NUCLEUS_CANDIDATES, filter_logits, nucleus_drop_mask


def reference_nucleus_drop(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Sort every row in float64, one row at a time; keep codes while the ones ranked above them hold
    less than top_p, then every code as likely as the last one kept."""
    rows = logits.double().reshape(-1, logits.shape[-1]).softmax(dim=-1)
    drop = torch.zeros(rows.shape, dtype=torch.bool)
    for index, probs in enumerate(rows):
        ranked = probs.sort(descending=True).values.tolist()
        above, last_kept = 0.0, ranked[0]
        for value in ranked:
            if above >= top_p:
                break
            above, last_kept = above + value, value
        drop[index] = probs < last_kept
    return drop.view(logits.shape)


def mixed_logits(generator: torch.Generator) -> torch.Tensor:
    """(2, 48, 1024) rows from peaked (nucleus of a few codes) to flat (nucleus of hundreds)."""
    spread = torch.logspace(-1.5, 1.0, 48).view(1, 48, 1)  # logit scale per row
    return torch.randn(2, 48, 1024, generator=generator) * spread


@pytest.mark.parametrize("top_p", [0.05, 0.5, 0.8, 0.95])
def test_nucleus_matches_a_float64_full_sort(top_p):
    logits = mixed_logits(torch.Generator().manual_seed(0))
    drop = nucleus_drop_mask(logits, top_p)
    assert drop.shape == logits.shape and drop.dtype == torch.bool
    assert torch.equal(drop, reference_nucleus_drop(logits, top_p))


def test_rows_wider_than_the_candidates_take_the_full_sort():
    # The test above is only worth something if both paths ran: some rows keep more codes than the
    # ranked candidates, others fewer.
    logits = mixed_logits(torch.Generator().manual_seed(0))
    kept = (~nucleus_drop_mask(logits, 0.8)).sum(dim=-1)
    assert kept.max() > NUCLEUS_CANDIDATES and kept.min() < NUCLEUS_CANDIDATES


def test_codes_tied_with_the_last_kept_share_its_fate_whatever_their_order():
    # bfloat16 logits tie often; a sort orders equal values arbitrarily, the nucleus must not care.
    logits = (torch.randn(64, 1024, generator=torch.Generator().manual_seed(4)) * 2).bfloat16().float()
    drop = nucleus_drop_mask(logits, 0.8)
    assert torch.equal(drop, reference_nucleus_drop(logits, 0.8))
    permutation = torch.randperm(1024, generator=torch.Generator().manual_seed(5))
    assert torch.equal(nucleus_drop_mask(logits[:, permutation], 0.8), drop[:, permutation])
    last_kept = logits.masked_fill(drop, math.inf).min(dim=-1, keepdim=True).values
    assert torch.equal(drop, logits < last_kept)  # ties of the last kept code are all kept
    assert ((logits == last_kept).sum(dim=-1) > 1).any()  # and the rows do hold such ties


def test_the_most_likely_code_is_always_kept():
    logits = torch.randn(64, 1024, generator=torch.Generator().manual_seed(1)) * 5
    drop = nucleus_drop_mask(logits, 1e-6)
    assert torch.equal((~drop).sum(dim=-1), torch.ones(64, dtype=torch.long))
    assert torch.equal((~drop).float().argmax(dim=-1), logits.argmax(dim=-1))


def test_small_vocabularies_rank_every_code():
    logits = torch.randn(5, 7, 10, generator=torch.Generator().manual_seed(2))
    assert torch.equal(nucleus_drop_mask(logits, 0.7), reference_nucleus_drop(logits, 0.7))


def test_filter_logits_applies_top_k_then_the_nucleus_of_what_is_left():
    logits = torch.randn(3, 256, 1024, generator=torch.Generator().manual_seed(3)) * 2
    filtered = filter_logits(logits, top_k=100, top_p=0.6)
    kth = logits.topk(100, dim=-1).values[..., -1:]
    after_top_k = logits.masked_fill(logits < kth, -math.inf)
    expected = after_top_k.masked_fill(reference_nucleus_drop(after_top_k, 0.6), -math.inf)
    assert torch.equal(filtered, expected)
    # Both filters off (None, 0, ≥ 1) leave the logits as they were.
    for top_k, top_p in ((None, None), (0, 1.0), (1024, None)):
        assert torch.equal(filter_logits(logits, top_k, top_p), logits)
