"""The live catalog: replicas converging through the update log (its durability and crash
tests: test_update_store.py), refusing a foreign embedder."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from afmrl.index.faiss_index import IndexMismatchError
from afmrl.index.stage import SOURCE_FILE
from afmrl.serve.catalog import (LEXICAL_COPY_PREFIX, UPDATE_DB_FILE, Catalog, CatalogDiverged,
                                 IndexSource, decode_vector, encode_vector,
                                 sweep_orphan_lexical_copies)


def test_vectors_round_trip_exactly():
    vector = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    np.testing.assert_array_equal(decode_vector(encode_vector(vector)), vector)


def test_a_dead_replicas_lexical_copy_is_swept_and_a_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    orphan = tmp_path / f"{LEXICAL_COPY_PREFIX}{dead}-x1"
    live = tmp_path / f"{LEXICAL_COPY_PREFIX}{os.getpid()}-x2"
    unrelated = tmp_path / "afmrl-other-1-x3"
    for folder in (orphan, live, unrelated):
        (folder / "lexical").mkdir(parents=True)
    assert sweep_orphan_lexical_copies(tmp_path) == [orphan]
    assert not orphan.exists() and live.is_dir() and unrelated.is_dir()


@pytest.fixture
def private_index(index_dir, tmp_path):
    """A copy of the sample index this test may change."""
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy, ignore=shutil.ignore_patterns(UPDATE_DB_FILE + "*"))
    return copy


def test_replicas_converge_through_the_update_log(private_index, serve_config):
    first = Catalog(private_index, serve_config.ray, shard_cpus=0)
    second = Catalog(private_index, serve_config.ray, shard_cpus=0)
    try:
        vector = np.zeros(first.source.dim, np.float32)
        vector[0] = 1.0
        item = {"item_id": "new/one", "group_id": 7, "title": "t", "text": "",
                "image_uri": "", "attributes": json.dumps({"colour": "teal"}),
                "coarse_group": ""}
        assert first.put(item, vector)
        hits = second.search(vector, 1, {"colour": "teal"})
        assert [h["item_id"] for h in hits] == ["new/one"] and hits[0]["group_id"] == 7
        assert second.delete("new/one") and not second.delete("new/one")
        assert first.get("new/one") is None and first.search(vector, 3, {"colour": "teal"}) == []
        assert first.count() == second.count() == len(first.index) == len(second.index)
        with pytest.raises(ValueError, match="dim"):
            first.put(item, vector[:3])
    finally:
        first.index.shutdown()
        second.index.shutdown()


def test_a_replica_whose_update_failed_part_way_stops_serving(private_index, serve_config):
    """A log record this replica cannot apply (here: a vector of another dimension, written by
    another writer) fails after the old vector left FAISS: the replica must refuse to answer
    and fail its health check (Serve replaces it), not serve a catalog that disagrees with its
    index (which answered KeyError for ids in FAISS but not in the item records)."""
    catalog = Catalog(private_index, serve_config.ray, shard_cpus=0)
    try:
        item_id = catalog.search(np.ones(catalog.source.dim, np.float32), 1, {})[0]["item_id"]
        bad = {**catalog.items[item_id], "attributes": "{}"}
        catalog.journal.append({"op": "put", "item": bad,
                                "vector": encode_vector(np.ones(3, np.float32))})
        for call in (lambda: catalog.search(np.ones(catalog.source.dim, np.float32), 3, {}),
                     catalog.count, catalog.check_health):
            with pytest.raises(CatalogDiverged, match="replays the log"):
                call()
    finally:
        catalog.index.shutdown()


def test_an_index_of_another_embedder_is_refused(private_index, serve_config):
    source = IndexSource.read(private_index)
    assert source.check_embedder() == source.embedder
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        dataclasses.replace(source, model_hash="0123456789abcdef").check_embedder()
    meta = json.loads((private_index / SOURCE_FILE).read_text())
    (private_index / SOURCE_FILE).write_text(json.dumps({**meta, "model_hash": "0" * 16}))
    with pytest.raises(IndexMismatchError, match="model hash"):
        Catalog(private_index, serve_config.ray)  # refused before any shard actor starts
