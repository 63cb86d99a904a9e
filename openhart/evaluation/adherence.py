"""Which real images prompt adherence matches generated ones against, and seeded row subsets.

The selection is kept apart from :mod:`openhart.evaluation.evaluate` (which generates and extracts
features) so that it can be read, and tested, as plain list logic over image records.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from openhart.data.image_folder import ImageRecord
from openhart.utils.random import rand_tensor

logger = logging.getLogger(__name__)

CONCEPT_FIELDS = ("concept_id", "concept")


def seeded_subset(records: Sequence[ImageRecord], count: int, seed: int, stream: int) -> list[ImageRecord]:
    """``count`` rows in their folder order, chosen with a generator seeded by (seed, stream)."""
    if count >= len(records):
        return list(records)
    generator = torch.Generator().manual_seed(seed * 1000 + stream)
    order = torch.argsort(rand_tensor((len(records),), generator))[:count]  # a random permutation's head
    return [records[int(i)] for i in sorted(order.tolist())]


def concept_of(record: ImageRecord) -> str:
    """A row's concept label: ``concept_id`` or ``concept`` metadata, else its caption."""
    for field in CONCEPT_FIELDS:
        value = record.extra.get(field)
        if value not in (None, ""):
            return str(value)
    return record.caption


def adherence_references(
    records: Sequence[ImageRecord],
    heldout: Sequence[ImageRecord],
    queries: Sequence[ImageRecord],
    reference_images: int | None,
    seed: int,
) -> list[ImageRecord]:
    """The real rows a generated image is matched against, in key order.

    Every held-out row is a reference, and seeded other rows fill up to ``reference_images`` (None:
    all rows). When the held-out split alone is larger than that budget (in-domain adherence, with
    ``heldout_split="train"``), only the rows of the queried concepts are always kept: a query can
    still find every image of its concept, among as many distractors as the held-out measure has,
    without extracting features for the whole training set.
    """
    if reference_images is not None and len(heldout) > reference_images:
        wanted = {concept_of(r) for r in queries}
        kept = [r for r in heldout if concept_of(r) in wanted]
        if len(kept) >= reference_images:
            logger.warning(
                "prompt adherence: the %d queried concepts have %d images, at least the %d references "
                "asked for, so no other concept is a distractor; raise reference_images",
                len(wanted),
                len(kept),
                reference_images,
            )
    else:
        kept = list(heldout)
    kept_keys = {r.key for r in kept}
    others = [r for r in records if r.key not in kept_keys]
    budget = len(others) if reference_images is None else max(reference_images - len(kept), 0)
    return sorted([*kept, *seeded_subset(others, budget, seed, stream=2)], key=lambda r: r.key)
