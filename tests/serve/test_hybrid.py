"""Hybrid retrieval in serving: the lexical index beside FAISS, filters before fusion, live
updates reaching both indexes (also across a replica dying between the two writes), and the
`mode` of POST /search."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import ray
import requests

from afmrl.config import RetrievalConfig
from afmrl.index.stage import ITEMS_FILE
from afmrl.serve.catalog import UPDATE_DB_FILE, Catalog

TEAL_ITEM = {"item_id": "new/zx-81", "group_id": 99, "title": "Sinclair ZX-81 teal lunchbox",
             "text": "", "image_uri": "", "attributes": json.dumps({"colour": "teal"}),
             "coarse_group": ""}


@pytest.fixture
def private_index(index_dir, tmp_path):
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy, ignore=shutil.ignore_patterns(UPDATE_DB_FILE + "*"))
    return copy


def ids(hits):
    return [h["item_id"] for h in hits]


def unit(dim, axis=0):
    vector = np.zeros(dim, np.float32)
    vector[axis] = 1.0
    return vector


def test_lexical_mode_finds_an_item_by_its_title(private_index, serve_config):
    catalog = Catalog(private_index, serve_config.ray, shard_cpus=0)
    try:
        items = pd.read_parquet(private_index / ITEMS_FILE)
        words = [set(t.lower().split()) for t in items["title"]]
        # A title whose words all stand in a longer title (God Morgon Orange Juice vs God Morgon
        # Orange Red Grapefruit Juice) may rank the longer one first: only distinct titles count.
        distinct = [i for i, w in enumerate(words)
                    if not any(j != i and w <= other for j, other in enumerate(words))][:5]
        assert len(distinct) == 5
        for i in distinct:
            title, item_id = items["title"][i], items["item_id"][i]
            assert ids(catalog.search(None, 1, {}, title, "lexical"))[0] == item_id
    finally:
        catalog.index.shutdown()


def test_filters_apply_to_both_sources_before_fusion(private_index, serve_config):
    """With 2 candidates per source, filtering *after* fusion could only return items among
    the 2 + 2 best of each source; the filter below matches none of them. Filtering each source
    first still returns k matching items."""
    catalog = Catalog(private_index, serve_config.ray, shard_cpus=0,
                      retrieval=RetrievalConfig(candidates=2))
    try:
        query = unit(catalog.source.dim)
        best = set(ids(catalog.search(query, 2, {}, "apple juice", "dense"))
                   + ids(catalog.search(None, 2, {}, "apple juice", "lexical")))
        pairs = {(k, v) for item in catalog.items.values() for k, v in item["attributes"].items()}
        key, value = next((k, v) for k, v in sorted(pairs)
                          if not any(catalog.items[i]["attributes"].get(k) == v for i in best)
                          and sum(item["attributes"].get(k) == v
                                  for item in catalog.items.values()) >= 3)
        hits = catalog.search(query, 3, {key: value}, "apple juice", "hybrid")
        assert len(hits) == 3 and all(h["attributes"][key] == value for h in hits)
    finally:
        catalog.index.shutdown()


def test_put_and_delete_reach_both_indexes(private_index, serve_config):
    first = Catalog(private_index, serve_config.ray, shard_cpus=0)
    second = Catalog(private_index, serve_config.ray, shard_cpus=0)  # another replica
    try:
        vector = unit(first.source.dim, 3)
        assert first.put(TEAL_ITEM, vector)
        for catalog in (first, second):
            assert ids(catalog.search(None, 1, {}, "zx81", "lexical")) == ["new/zx-81"]
            assert ids(catalog.search(vector, 1, {"colour": "teal"})) == ["new/zx-81"]
            assert ids(catalog.search(vector, 1, {}, "ZX 81", "hybrid")) == ["new/zx-81"]
        assert second.delete("new/zx-81")
        for catalog in (first, second):
            assert "new/zx-81" not in ids(catalog.search(None, 5, {}, "zx81", "lexical"))
            assert catalog.search(vector, 3, {"colour": "teal"}, "zx81", "hybrid") == []
    finally:
        first.index.shutdown()
        second.index.shutdown()


@ray.remote(max_restarts=0)
class DyingReplica(Catalog):
    """A Retriever replica whose process dies after the FAISS write, before the lexical one."""

    def _apply_lexical(self, changed_ids, put_items):
        if put_items:
            os._exit(1)
        super()._apply_lexical(changed_ids, put_items)

    def ping(self):
        return len(self.items)


def test_a_replica_dying_between_the_two_writes_loses_neither(private_index, serve_config):
    replica = DyingReplica.options(num_cpus=0).remote(private_index, serve_config.ray, 0)
    assert ray.get(replica.ping.remote(), timeout=120) > 0
    dim = json.loads((private_index / "embedder.json").read_text())["dim"]
    vector = unit(dim, 5)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(replica.put.remote(TEAL_ITEM, vector), timeout=120)
    restarted = Catalog(private_index, serve_config.ray, shard_cpus=0)  # replays the log
    try:
        assert ids(restarted.search(None, 1, {}, "sinclair zx81", "lexical")) == ["new/zx-81"]
        assert ids(restarted.search(vector, 1, {"colour": "teal"})) == ["new/zx-81"]
        assert len(restarted.lexical) == len(restarted.index) == len(restarted.items)
    finally:
        restarted.index.shutdown()


def search(app, **body):
    return requests.post(app.url + "/search", json=body, timeout=60)


def test_search_mode_is_validated_and_selects_the_ranking(live_app):
    response = search(live_app, text="apple juice", mode="sparse")
    assert response.status_code == 422 and "mode" in response.json()["error"]
    items = pd.read_parquet(live_app.index_dir / ITEMS_FILE)
    title, item_id = items["title"].iloc[0], items["item_id"].iloc[0]
    for mode in ("lexical", "hybrid", "dense"):
        response = search(live_app, text=title, mode=mode, k=3, enrich=False)
        assert response.status_code == 200, response.text
        hits = [h["item_id"] for h in response.json()["hits"]]
        assert len(hits) == 3
        if mode == "lexical":
            assert hits[0] == item_id
    assert search(live_app, text="", image_path="apple.jpg", mode="lexical").status_code == 422
