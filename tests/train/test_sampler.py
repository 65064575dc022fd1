import itertools

import pytest

from afmrl.train.sampler import ProductBatchSampler

# 3 categories x 6 products x 5 items, plus a category of 2 products x 3 items (too few for a
# batch of 4 distinct products: it must fall back to mixed batches).
PRODUCTS, CATEGORIES = [], []
for category, products, items in [("milk", 6, 5), ("juice", 6, 5), ("bread", 6, 5),
                                  ("tea", 2, 3)]:
    for product in range(products):
        PRODUCTS += [f"{category}-{product}"] * items
        CATEGORIES += [category] * items
BATCH = 4


def test_batches_hold_distinct_products_and_items_at_most_once_per_epoch():
    for coarse in (None, CATEGORIES):
        sampler = ProductBatchSampler(PRODUCTS, BATCH, seed=3, coarse_ids=coarse)
        length = len(sampler)
        batches = list(sampler)
        assert len(batches) == length >= 20  # 96 items: at most 24 batches
        assert len(sampler) == sampler.num_batches(1)  # iterating moved on to epoch 1
        assert all(len(b) == BATCH and len({PRODUCTS[i] for i in b}) == BATCH for b in batches)
        seen = list(itertools.chain.from_iterable(batches))
        assert len(seen) == len(set(seen))


def test_order_depends_on_seed_and_epoch_only():
    first = list(ProductBatchSampler(PRODUCTS, BATCH, seed=1))
    assert list(ProductBatchSampler(PRODUCTS, BATCH, seed=1)) == first
    assert list(ProductBatchSampler(PRODUCTS, BATCH, seed=2)) != first
    sampler = ProductBatchSampler(PRODUCTS, BATCH, seed=1)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_ranks_get_equal_disjoint_shares_of_the_global_order():
    whole = list(ProductBatchSampler(PRODUCTS, BATCH, seed=5))
    ranks = [list(ProductBatchSampler(PRODUCTS, BATCH, seed=5, num_replicas=3, rank=r))
             for r in range(3)]
    per_rank = len(whole) // 3
    assert [len(r) for r in ranks] == [per_rank] * 3
    for step in range(per_rank):
        assert [r[step] for r in ranks] == whole[3 * step:3 * step + 3]


def test_resume_reproduces_the_remaining_batches():
    reference = ProductBatchSampler(PRODUCTS, BATCH, seed=7, num_replicas=2, rank=1)
    reference.set_epoch(2)
    expected = list(reference)

    interrupted = ProductBatchSampler(PRODUCTS, BATCH, seed=7, num_replicas=2, rank=1)
    interrupted.set_epoch(2)
    consumed = list(itertools.islice(interrupted, 3))
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "position": 3, "seed": 7}

    resumed = ProductBatchSampler(PRODUCTS, BATCH, seed=7, num_replicas=2, rank=1)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop's usual call must not restart the epoch
    assert consumed + list(resumed) == expected
    assert resumed.state_dict() == {"epoch": 3, "position": 0, "seed": 7}

    with pytest.raises(ValueError, match="same train.seed"):
        ProductBatchSampler(PRODUCTS, BATCH, seed=8).load_state_dict(state)


def test_hard_batches_come_from_one_category_with_fallback_for_small_ones():
    def single_category_share(batches):
        return sum(len({CATEGORIES[i] for i in b}) == 1 for b in batches) / len(batches)

    hard = list(ProductBatchSampler(PRODUCTS, BATCH, seed=0, coarse_ids=CATEGORIES))
    mixed = list(ProductBatchSampler(PRODUCTS, BATCH, seed=0))
    assert single_category_share(hard) >= 0.75
    assert single_category_share(mixed) <= 0.25
    tea_batches = [b for b in hard if any(CATEGORIES[i] == "tea" for i in b)]
    assert tea_batches and all(len({CATEGORIES[i] for i in b}) > 1 for b in tea_batches)


def test_too_small_catalogs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="20 distinct products but the batch size is 21"):
        ProductBatchSampler(PRODUCTS, 21)
    with pytest.raises(ValueError, match="fewer than 4 full batches"):
        ProductBatchSampler(["a", "b", "c", "a", "b", "c"], 3, num_replicas=4)
    with pytest.raises(ValueError, match="one coarse id"):
        ProductBatchSampler(PRODUCTS, BATCH, coarse_ids=CATEGORIES[:-1])


def test_an_epoch_holds_whole_accumulation_windows():
    cut = 0
    for replicas in (1, 2):
        plain = ProductBatchSampler(PRODUCTS, BATCH, num_replicas=replicas, seed=1)
        for multiple in (2, 3, 5):
            windows = ProductBatchSampler(PRODUCTS, BATCH, num_replicas=replicas, seed=1,
                                          batches_multiple_of=multiple)
            for epoch in range(3):
                count = windows.num_batches(epoch)
                assert count % multiple == 0 and 0 <= plain.num_batches(epoch) - count < multiple
                cut += plain.num_batches(epoch) - count
                # The same order, only the tail that cannot fill a window is cut.
                assert windows._rank_batches(epoch) == plain._rank_batches(epoch)[:count]
    assert cut > 0  # some epoch had a partial window to cut
