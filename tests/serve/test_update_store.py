"""The live-update log in a real database: SQLite (one machine) and a private PostgreSQL server
(replicas on nodes that share no files): ordering, crashes mid-append, concurrent writers,
corruption, and catalog replicas converging through it."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest
import sqlalchemy

from afmrl.config import REPO_ROOT, ConfigError, load_config
from afmrl.serve.catalog import (UPDATE_DB_FILE, Catalog, IndexSource, UpdateStore,
                                 catalog_key, update_store_url)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / UPDATE_DB_FILE}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def key() -> str:
    """A fresh index identity: tests sharing the PostgreSQL server never see each other."""
    return uuid.uuid4().hex


def test_readers_get_committed_records_in_order_per_index_build(store_url, key):
    writer, reader = UpdateStore(store_url, key), UpdateStore(store_url, key)
    other_build = UpdateStore(store_url, uuid.uuid4().hex)
    assert reader.read_new() == []
    assert [writer.append({"n": n}) for n in (1, 2)] == [1, 2]
    assert reader.read_new() == [{"n": 1}, {"n": 2}]
    assert reader.read_new() == []
    assert other_build.read_new() == []
    assert UpdateStore(store_url, key).read_new() == [{"n": 1}, {"n": 2}]  # a restarted replica


CRASH_MID_APPEND = """
import os, signal, sys
from afmrl.serve.catalog import UpdateStore
store = UpdateStore(sys.argv[1], sys.argv[2])
connection = store.engine.connect()
connection.begin()
store._insert(connection, {"n": 2, "torn": True})
os.kill(os.getpid(), signal.SIGKILL)  # dies holding an uncommitted append
"""


def test_a_writer_killed_mid_append_leaves_nothing_behind(store_url, key):
    writer, reader = UpdateStore(store_url, key), UpdateStore(store_url, key)
    writer.append({"n": 1})
    crashed = subprocess.run([sys.executable, "-c", CRASH_MID_APPEND, store_url, key],
                             cwd=REPO_ROOT, capture_output=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()[-2000:]
    assert reader.read_new() == [{"n": 1}]
    assert writer.append({"n": 3}) == 2  # the dead writer's number was never handed out
    assert reader.read_new() == [{"n": 3}]


def test_concurrent_writers_and_a_poller_miss_nothing(store_url, key):
    """Writers on their own connections (like replicas); a poller that ever saw number n+1
    before n was committed would skip n for good."""
    done = threading.Event()
    polled: list[dict] = []

    def write(writer: int) -> None:
        store = UpdateStore(store_url, key)
        for n in range(40):
            store.append({"writer": writer, "n": n, "payload": "x" * 5000})

    def poll() -> None:
        store = UpdateStore(store_url, key)
        while not done.is_set():
            polled.extend(store.read_new())
        polled.extend(store.read_new())

    poller = threading.Thread(target=poll)
    poller.start()
    writers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    done.set()
    poller.join()
    assert len(polled) == 160
    for w in range(4):  # each writer's records in its order, none twice
        assert [r["n"] for r in polled if r["writer"] == w] == list(range(40))


def test_corrupt_or_reset_logs_fail_loudly(store_url, key):
    store = UpdateStore(store_url, key)
    store.append({"n": 1})
    store.append({"n": 2})
    with store.engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "UPDATE afmrl_catalog_updates SET record = 'not json' "
            "WHERE catalog = :key AND seq = 2"), {"key": key})
    with pytest.raises(RuntimeError, match="corrupt update record 2"):
        UpdateStore(store_url, key).read_new()
    with store.engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "UPDATE afmrl_catalog_updates SET record = '{}' WHERE catalog = :key"), {"key": key})
    assert len(store.read_new()) == 2
    with store.engine.begin() as connection:
        connection.execute(sqlalchemy.text(
            "UPDATE afmrl_catalog_heads SET last_seq = 1 WHERE catalog = :key"), {"key": key})
    with pytest.raises(RuntimeError, match="lost records"):
        store.read_new()


def test_the_store_url_comes_from_config_then_environment_then_the_index_folder(
        tmp_path, monkeypatch):
    monkeypatch.delenv("AFMRL_UPDATE_STORE", raising=False)
    assert update_store_url(None, tmp_path) == f"sqlite:///{tmp_path / UPDATE_DB_FILE}"
    monkeypatch.setenv("AFMRL_UPDATE_STORE", "postgresql+psycopg://from-secret/db")
    assert update_store_url(None, tmp_path) == "postgresql+psycopg://from-secret/db"
    assert update_store_url("sqlite:////x.db", tmp_path) == "sqlite:////x.db"
    with pytest.raises(ConfigError, match="serve.update_store must be a database URL"):
        load_config(None, ["serve.update_store=updates.db"])


def test_serve_replicas_on_separate_folders_converge_through_postgresql(
        live_app, postgres_url, tmp_path):
    """Two Retriever Serve deployments, each on its own copy of the index (like pods on two
    nodes sharing no files), see each other's PUT/DELETE; a replica started later replays them."""
    from ray import serve

    folders = [tmp_path / "node-a" / "index", tmp_path / "node-b" / "index"]
    for folder in folders:
        shutil.copytree(live_app.index_dir, folder,
                        ignore=shutil.ignore_patterns(UPDATE_DB_FILE + "*"))
    assert catalog_key(folders[0]) == catalog_key(folders[1])
    retriever = serve.deployment(Catalog, name="Retriever", ray_actor_options={"num_cpus": 0})
    names = ["pg-node-a", "pg-node-b"]
    first, second = (serve.run(retriever.bind(folder, live_app.config.ray, 0, postgres_url),
                               name=name, route_prefix=None)
                     for folder, name in zip(folders, names))

    def call(handle, method: str, *args):
        return getattr(handle, method).remote(*args).result(timeout_s=60)

    try:
        vector = np.zeros(IndexSource.read(folders[0]).dim, np.float32)
        vector[1] = 1.0
        base = call(first, "count")
        item = {"item_id": "pg/one", "group_id": 11, "title": "t", "text": "", "image_uri": "",
                "attributes": json.dumps({"colour": "teal"}), "coarse_group": ""}
        assert call(first, "put", item, vector)
        hits = call(second, "search", vector, 1, {"colour": "teal"})
        assert [h["item_id"] for h in hits] == ["pg/one"] and hits[0]["group_id"] == 11
        assert call(second, "put", {**item, "group_id": 12}, vector) is False
        assert call(first, "get", "pg/one")["group_id"] == 12
        later = Catalog(folders[1], live_app.config.ray, shard_cpus=0, update_store=postgres_url)
        try:
            assert later.get("pg/one")["group_id"] == 12 and later.count() == base + 1
        finally:
            later.index.shutdown()
        assert call(second, "delete", "pg/one") and not call(first, "delete", "pg/one")
        assert call(first, "get", "pg/one") is None
        assert call(first, "count") == call(second, "count") == base
        assert not any(f.name.startswith(UPDATE_DB_FILE) for folder in folders
                       for f in folder.iterdir())  # nothing went through the file system
    finally:
        for name in names:
            serve.delete(name)
