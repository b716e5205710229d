"""Which examples form each batch: seeded per epoch, grouped by length so little compute goes to padding.

The plan of an epoch depends only on (seed, epoch), so a resumed run can
skip exactly the batches it already trained on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group_by_length: bool = True,
                  shards: int = 1, shard: int = 0) -> list[list[int]]:
    """Index batches for one epoch (every example once; the last batch may be smaller).

    With ``group_by_length`` the shuffled examples are sorted by length inside
    windows of 50 batches, so a batch holds similar lengths, and the batches
    are shuffled again. With several processes each takes every
    ``shards``-th batch (whole batches, so all do the same number of steps).
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        window = batch_size * 50
        order = [i for start in range(0, len(order), window)
                 for i in sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group_by_length:
        rng.shuffle(batches)
    if shards > 1:
        usable = len(batches) - len(batches) % shards
        batches = batches[shard:usable:shards]
    return batches
