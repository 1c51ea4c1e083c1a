"""Batching: length buckets, DDP sharding (eval: every clip exactly once), train order seeded per epoch."""

import torch

from ser_lightning.data.datamodule import LengthBucketBatchSampler, collate_features
from ser_lightning.models.head import FeatureAugment


def test_eval_batches_cover_every_clip_exactly_once_across_ranks():
    lengths = list(range(1, 104))  # 103 clips: not divisible by batch or world size
    seen = []
    for rank in range(3):
        for batch in LengthBucketBatchSampler(lengths, 8, shuffle=False, num_replicas=3, rank=rank):
            seen += batch
    assert sorted(seen) == list(range(103))


def test_train_batches_equal_per_rank_and_bucketed():
    lengths = [int(x) for x in torch.randint(10, 1500, (500,), generator=torch.Generator().manual_seed(0))]
    per_rank = [list(LengthBucketBatchSampler(lengths, 16, shuffle=True, num_replicas=2, rank=r)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1])
    covered = {i for batches in per_rank for b in batches for i in b}
    assert covered == set(range(500))

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    bucketed = list(LengthBucketBatchSampler(lengths, 16, shuffle=True, bucketing=True))
    plain = list(LengthBucketBatchSampler(lengths, 16, shuffle=True, bucketing=False))
    assert padding(bucketed) < 0.3 * padding(plain)


def test_train_order_is_seeded_per_epoch():
    s = LengthBucketBatchSampler(list(range(100)), 10, shuffle=True, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e0 != e1


def test_collate_pads_and_masks():
    items = [{"features": torch.ones(3, 4), "label": 1, "index": 0}, {"features": torch.ones(5, 4) * 2, "label": 0, "index": 1}]
    batch = collate_features(items)
    assert batch["features"].shape == (2, 5, 4)
    assert batch["mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert float(batch["features"][0, 3:].abs().sum()) == 0.0


def test_feature_augment_only_in_training():
    aug = FeatureAugment(dropout=0.2, time_masks=2, time_width=5, feature_masks=1, feature_width=4)
    x, mask = torch.randn(2, 50, 16), torch.ones(2, 50, dtype=torch.bool)
    aug.eval()
    assert torch.equal(aug(x, mask), x)
    aug.train()
    y = aug(x, mask)
    assert (y == 0).float().mean() > 0.05  # masks and dropout really remove information
