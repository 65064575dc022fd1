"""The live catalog: journal durability, replicas converging, refusing a foreign embedder."""
from __future__ import annotations

import dataclasses
import json
import shutil
import threading

import numpy as np
import pytest

from afmrl.index.faiss_index import IndexMismatchError
from afmrl.index.stage import SOURCE_FILE
from afmrl.serve.catalog import (JOURNAL_FILE, Catalog, IndexSource, Journal, decode_vector,
                                 encode_vector)


def test_vectors_round_trip_exactly():
    vector = np.random.default_rng(0).standard_normal(37).astype(np.float32)
    np.testing.assert_array_equal(decode_vector(encode_vector(vector)), vector)


def test_journal_reads_only_complete_lines_and_writers_cut_torn_tails(tmp_path):
    path = tmp_path / JOURNAL_FILE
    writer, reader = Journal(path), Journal(path)
    assert reader.read_new() == []  # no file yet
    writer.append({"n": 1})
    with open(path, "ab") as handle:
        handle.write(b'{"n": 2, "torn')  # a writer crashed mid-line
    assert reader.read_new() == [{"n": 1}]
    assert reader.read_new() == []
    writer.append({"n": 3})
    assert reader.read_new() == [{"n": 3}]
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"n": 1}, {"n": 3}]


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / JOURNAL_FILE
    payload = "x" * 5000  # longer than one write() may be atomic for

    def write(writer: int) -> None:
        journal = Journal(path)  # its own file description, like another replica
        for n in range(40):
            journal.append({"writer": writer, "n": n, "payload": payload})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = Journal(path).read_new()
    assert sorted((r["writer"], r["n"]) for r in records) == \
        [(w, n) for w in range(4) for n in range(40)]


def test_corrupt_or_shrunk_journals_fail_loudly(tmp_path):
    path = tmp_path / JOURNAL_FILE
    path.write_bytes(b'{"n": 1}\nnot json\n')
    with pytest.raises(RuntimeError, match="corrupt record 2"):
        Journal(path).read_new()
    path.write_bytes(b'{"n": 1}\n{"n": 2}\n')
    journal = Journal(path)
    journal.read_new()
    path.write_bytes(b'{"n": 1}\n')
    with pytest.raises(RuntimeError, match="rebuilt"):
        journal.read_new()


@pytest.fixture
def private_index(index_dir, tmp_path):
    """A copy of the sample index this test may change."""
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    (copy / JOURNAL_FILE).unlink(missing_ok=True)
    return copy


def test_replicas_converge_through_the_journal(private_index, serve_config):
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


def test_an_index_of_another_embedder_is_refused(private_index, serve_config):
    source = IndexSource.read(private_index)
    assert source.check_embedder() == source.embedder
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        dataclasses.replace(source, model_hash="0123456789abcdef").check_embedder()
    meta = json.loads((private_index / SOURCE_FILE).read_text())
    (private_index / SOURCE_FILE).write_text(json.dumps({**meta, "model_hash": "0" * 16}))
    with pytest.raises(IndexMismatchError, match="model hash"):
        Catalog(private_index, serve_config.ray)  # refused before any shard actor starts
