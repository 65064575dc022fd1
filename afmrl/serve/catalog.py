"""The live catalog a Retriever replica serves: the sharded FAISS index, the item records
(``items.parquet``) and a durable log of live updates in a SQL database.

Why a log: PUT/DELETE must survive a restart, and rewriting every shard plus items.parquet per
update costs O(catalog). An update is one committed row holding the item and its embedding (so
replay needs no model), numbered in sequence per index build. A replica loads the saved index
and replays the log; while serving, every call first applies the records other replicas
committed since its last sequence number (one indexed query when nothing changed), so all
replicas answer from the same catalog. The database is chosen by URL (``serve.update_store``):
SQLite in the index folder on one machine, PostgreSQL when replicas run on several nodes that
share no files. A crash mid-append rolls the transaction back. Rebuilding the index (``afmrl
index``) gives it a new identity, hence an empty log.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy

from afmrl.config import RayConfig, RetrievalConfig
from afmrl.extract.stage import parse_json
from afmrl.index.faiss_index import MANIFEST, IndexMismatchError
from afmrl.index.fusion import load_tuned, rank
from afmrl.index.lexical import (LEXICAL_DIR, LexicalIndexMissing, ShardedLexicalIndex,
                                 items_fingerprint, lexical_rows)
from afmrl.index.sharded import (DEFAULT_ACTOR_CPUS, ShardedIndex, ShardUnavailable,
                                 gather_from_actors)
from afmrl.index.stage import ITEMS_FILE, SOURCE_FILE
from afmrl.serve.filters import AttributeIndex, filtered_search
from afmrl.utils.io import atomic_write_bytes, fingerprint_tree, sha256_bytes, sha256_file

UPDATE_DB_FILE = "updates.db"
UPDATE_STORE_ENV = "AFMRL_UPDATE_STORE"
UPLOADS_DIR = "uploads"


@dataclass(frozen=True)
class IndexSource:
    """An index folder and the embedder it was built with (its ``embedder.json``)."""
    index_dir: Path
    embedder: Path
    model_hash: str
    dim: int

    @classmethod
    def read(cls, index_dir: str | Path) -> "IndexSource":
        path = Path(index_dir).resolve() / SOURCE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path.parent} is not an index folder (no {SOURCE_FILE}); "
                                    f"build one with `afmrl index` or pass another folder")
        meta = json.loads(path.read_text())
        return cls(path.parent, Path(meta["embedder"]), meta["model_hash"], int(meta["dim"]))

    def check_embedder(self) -> Path:
        """The embedder folder, refusing it if its files changed since the index was built
        (queries from model B against vectors of model A rank garbage, silently)."""
        actual = fingerprint_tree(self.embedder)
        if actual != self.model_hash:
            raise IndexMismatchError(
                f"embedder {self.embedder} has model hash {actual!r} but the index at "
                f"{self.index_dir} was built with {self.model_hash!r}; rebuild the index "
                f"(`afmrl index --embedder {self.embedder}`) or restore that embedder")
        return self.embedder


def encode_vector(vector: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode()


def decode_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


class UpdateStore:
    """The durable, ordered log of live updates of one index build, in a SQL database.

    Each record gets the next sequence number of its index build (``catalog_key``); replicas
    remember the last number they applied and poll for higher ones. Writers take the build's
    row in ``afmrl_catalog_heads`` (a row lock held to commit), so numbers are handed out in
    commit order and a poller never sees number n+1 before n. A writer that dies mid-append
    rolls back: the log has no torn records.
    """

    def __init__(self, url: str, catalog_key: str) -> None:
        self.engine = sqlalchemy.create_engine(url, **_engine_options(url))
        if self.engine.dialect.name == "sqlite":
            sqlalchemy.event.listen(self.engine, "connect", _sqlite_wal)
        self.name = self.engine.url.render_as_string(hide_password=True)
        self.key = catalog_key
        self.last_seq = 0  # highest sequence number already read
        _create_schema(self.engine)
        try:
            with self.engine.begin() as connection:
                connection.execute(_HEADS.insert().values(catalog=catalog_key, last_seq=0))
        except sqlalchemy.exc.IntegrityError:
            pass  # the head row exists (another replica, or an earlier start)

    def append(self, record: dict[str, Any]) -> int:
        """Commit one record; returns its sequence number."""
        with self.engine.begin() as connection:
            return self._insert(connection, record)

    def _insert(self, connection: sqlalchemy.Connection, record: dict[str, Any]) -> int:
        seq = connection.execute(
            _HEADS.update().where(_HEADS.c.catalog == self.key)
            .values(last_seq=_HEADS.c.last_seq + 1).returning(_HEADS.c.last_seq)).scalar_one()
        connection.execute(_UPDATES.insert().values(
            catalog=self.key, seq=seq, record=json.dumps(record, separators=(",", ":"))))
        return seq

    def read_new(self) -> list[dict[str, Any]]:
        """Records committed since the last call, in sequence order."""
        with self.engine.connect() as connection:
            head = connection.execute(sqlalchemy.select(_HEADS.c.last_seq).where(
                _HEADS.c.catalog == self.key)).scalar()
            if head is None or head < self.last_seq:
                raise RuntimeError(f"the update log of this index in {self.name} lost records "
                                   f"(it was at {self.last_seq}, now {head}); was it reset? "
                                   f"redeploy the app to serve the index anew")
            if head == self.last_seq:
                return []
            rows = connection.execute(
                sqlalchemy.select(_UPDATES.c.seq, _UPDATES.c.record)
                .where(_UPDATES.c.catalog == self.key, _UPDATES.c.seq > self.last_seq,
                       _UPDATES.c.seq <= head).order_by(_UPDATES.c.seq)).all()
        records = []
        for seq, text in rows:
            try:
                records.append(json.loads(text))
            except json.JSONDecodeError:
                raise RuntimeError(f"{self.name}: corrupt update record {seq} of index "
                                   f"{self.key}; delete that row or rebuild the index") from None
        self.last_seq = head
        return records


_SCHEMA = sqlalchemy.MetaData()
_HEADS = sqlalchemy.Table(
    "afmrl_catalog_heads", _SCHEMA,
    sqlalchemy.Column("catalog", sqlalchemy.String(64), primary_key=True),
    sqlalchemy.Column("last_seq", sqlalchemy.BigInteger, nullable=False))
_UPDATES = sqlalchemy.Table(
    "afmrl_catalog_updates", _SCHEMA,
    sqlalchemy.Column("catalog", sqlalchemy.String(64), primary_key=True),
    sqlalchemy.Column("seq", sqlalchemy.BigInteger, primary_key=True, autoincrement=False),
    sqlalchemy.Column("record", sqlalchemy.Text, nullable=False))


def _create_schema(engine: sqlalchemy.Engine, attempts: int = 3) -> None:
    """Create the tables unless they exist; replicas starting together race to create them."""
    for attempt in range(attempts):
        try:
            _SCHEMA.create_all(engine)
            return
        except sqlalchemy.exc.DatabaseError:  # another replica created a table first
            if attempt + 1 == attempts:
                raise


def _engine_options(url: str) -> dict[str, Any]:
    """SQLite: wait for the writer lock instead of failing, and use one connection per thread
    of the replica's pool (Serve calls sync methods from worker threads)."""
    if sqlalchemy.make_url(url).get_backend_name() == "sqlite":
        return {"connect_args": {"timeout": 60, "check_same_thread": False}}
    return {"pool_pre_ping": True}


def _sqlite_wal(dbapi_connection: Any, _record: Any) -> None:
    """WAL: pollers read while a writer commits, and commits are durable (synchronous=FULL)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def catalog_key(index_dir: Path) -> str:
    """Identity of an index build: the hash of its manifest, items and embedder record.
    Replicas of one build share its log wherever their copy of the folder lies; a rebuilt
    index (other items or vectors) starts an empty log."""
    digest = hashlib.sha256()
    for name in (MANIFEST, ITEMS_FILE, SOURCE_FILE):
        digest.update(sha256_file(index_dir / name).encode())
    return digest.hexdigest()[:32]


def update_store_url(configured: str | None, index_dir: Path) -> str:
    """``serve.update_store``, else $AFMRL_UPDATE_STORE (a Kubernetes secret on clusters),
    else a SQLite file in the index folder (one machine)."""
    return configured or os.environ.get(UPDATE_STORE_ENV) or \
        f"sqlite:///{index_dir / UPDATE_DB_FILE}"


LEXICAL_COPY_PREFIX = "afmrl-lexical-"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def sweep_orphan_lexical_copies(root: Path) -> list[Path]:
    """Remove the private lexical copies of replicas that died: Serve kills a replica's process,
    so its temporary folder is never cleaned up, and every restart would leave one behind. A
    copy is named after its owner's pid; one whose process is gone is removed."""
    removed = []
    for copy in root.glob(f"{LEXICAL_COPY_PREFIX}*-*"):
        owner = copy.name[len(LEXICAL_COPY_PREFIX):].split("-", 1)[0]
        if owner.isdigit() and not _process_alive(int(owner)):
            shutil.rmtree(copy, ignore_errors=True)
            removed.append(copy)
    return removed


class CatalogDiverged(ShardUnavailable):
    """Applying update records failed part-way: FAISS, lexical index and item records of this
    replica may disagree, so it answers 503 until Serve replaces it (the replacement reloads
    the saved index and replays the log)."""


class Catalog:
    """Index + items + update log behind one lock (Serve runs sync methods in a thread pool).

    Methods return internal item records (with the server-side ``image_uri``); the HTTP layer
    decides what clients see. ``check_health`` is Ray Serve's replica health check: a dead
    shard actor or a failed update makes the replica unhealthy, and Serve replaces it with one
    that reloads.
    """

    def __init__(self, index_dir: str | Path, ray_config: RayConfig,
                 shard_cpus: float = DEFAULT_ACTOR_CPUS, update_store: str | None = None,
                 retrieval: RetrievalConfig = RetrievalConfig()) -> None:
        self.source = IndexSource.read(index_dir)
        self.journal = UpdateStore(update_store_url(update_store, self.source.index_dir),
                                   catalog_key(self.source.index_dir))
        self.index = ShardedIndex.load(self.source.index_dir, ray_config,
                                       expected_model_hash=self.source.model_hash,
                                       expected_dim=self.source.dim, num_cpus=shard_cpus)
        self.timeout_s = ray_config.call_timeout_s
        self.items: dict[str, dict[str, Any]] = {}
        self.attributes = AttributeIndex()
        saved_items = pd.read_parquet(self.source.index_dir / ITEMS_FILE)
        for row in saved_items.to_dict("records"):
            self._remember(row)
        self.lexical = self._open_lexical(saved_items, len(self.index.shards))
        self.retrieval = load_tuned(self.source.index_dir, retrieval)
        self.applied = 0
        self.diverged: str | None = None
        self.lock = threading.Lock()
        self._sync()

    def _open_lexical(self, saved_items: pd.DataFrame, num_shards: int
                      ) -> ShardedLexicalIndex | None:
        """The lexical index beside the FAISS one, refused unless it holds the same rows; a
        replica works on a private hard-linked copy (updates come from the log, like FAISS).
        None for an index built before lexical indexes existed (dense only)."""
        path = self.source.index_dir / LEXICAL_DIR
        if not path.is_dir():
            return None
        sweep_orphan_lexical_copies(Path(tempfile.gettempdir()))
        self._lexical_copy = tempfile.TemporaryDirectory(
            prefix=f"{LEXICAL_COPY_PREFIX}{os.getpid()}-")
        fingerprint = items_fingerprint(saved_items["item_id"], saved_items["content_hash"]) \
            if "content_hash" in saved_items else None
        return ShardedLexicalIndex.load(path, fingerprint, num_shards,
                                        Path(self._lexical_copy.name) / LEXICAL_DIR)

    def _remember(self, row: dict[str, Any]) -> None:
        item = {**row, "group_id": int(row["group_id"]),
                "attributes": parse_json(row["attributes"])}
        self.items[item["item_id"]] = item
        self.attributes.put(item["item_id"], item["attributes"])

    def _forget(self, item_id: str) -> None:
        self.items.pop(item_id, None)
        self.attributes.remove(item_id)

    def _sync(self) -> None:
        """Apply new update records: only each id's last record matters, applied in one batch.
        A batch that fails part-way leaves this replica diverged (``CatalogDiverged``)."""
        if self.diverged is not None:
            raise CatalogDiverged(self.diverged)
        records = self.journal.read_new()
        if not records:
            return
        try:
            self._apply(records)
        except Exception as error:
            self.diverged = (f"applying update records up to {self.journal.last_seq} failed "
                             f"({type(error).__name__}: {error}); this replica is marked "
                             f"unhealthy and is replaced by one that replays the log")
            raise CatalogDiverged(self.diverged) from error

    def _apply(self, records: list[dict[str, Any]]) -> None:
        final: dict[str, dict[str, Any]] = {}
        for record in records:
            item_id = record["item"]["item_id"] if record["op"] == "put" else record["item_id"]
            final.pop(item_id, None)
            final[item_id] = record
        puts = [r for r in final.values() if r["op"] == "put"]
        self.index.remove(list(final))
        if puts:
            self.index.add(np.stack([decode_vector(r["vector"]) for r in puts]),
                           [r["item"]["item_id"] for r in puts])
        if self.lexical is not None:
            self._apply_lexical(list(final), [r["item"] for r in puts])
        for item_id, record in final.items():
            if record["op"] == "put":
                self._remember(record["item"])
            else:
                self._forget(item_id)
        self.applied += len(records)

    def _apply_lexical(self, changed_ids: list[str], put_items: list[dict[str, Any]]) -> None:
        """The same batch on the lexical index: the second write after FAISS (a replica dying
        between the two loses neither: both are rebuilt from the saved index and the log)."""
        self.lexical.remove(changed_ids)
        if put_items:
            self.lexical.add(lexical_rows(put_items))
        self.lexical.commit()

    def count(self) -> int:
        with self.lock:
            self._sync()
            return len(self.items)

    def search(self, vector: np.ndarray | None, k: int, filters: dict[str, str],
               text: str = "", mode: str = "dense", attribute_text: str = ""
               ) -> list[dict[str, Any]]:
        """The k best items passing ``filters`` (exact, see ``filtered_search``), best first.

        ``mode``: the FAISS ranking of ``vector``, the lexical ranking of ``text`` (and the
        query's ``attribute_text``), or both fused (``retrieval``: tuned values saved with the
        index, else the configured ones). Filters apply to each source *before* fusion, so a
        selective filter still gets ``candidates`` matching items from each.
        """
        if mode != "dense" and self.lexical is None:
            raise LexicalIndexMissing(
                f"the index at {self.source.index_dir} has no lexical part (built before "
                f"hybrid retrieval); rebuild it with `afmrl index` or search with mode=dense")
        depth = k if mode != "hybrid" else max(k, self.retrieval.candidates)
        with self.lock:
            self._sync()
            allowed = self.attributes.matching(filters)

            def dense_ranked(n: int) -> tuple[np.ndarray, np.ndarray]:
                scores, ids = self.index.search(np.asarray(vector, dtype=np.float32)[None], n)
                return scores[0], ids[0]

            def lexical_ranked(n: int) -> tuple[np.ndarray, np.ndarray]:
                scores, ids = self.lexical.search([text], n, [attribute_text])
                return scores[0], ids[0]

            def source(ranked: Any) -> Any:
                def filtered() -> tuple[np.ndarray, np.ndarray]:
                    hits = filtered_search(ranked, depth, allowed, len(self.items))
                    return (np.array([[s for s, _ in hits]], dtype=np.float32).reshape(1, -1),
                            np.array([[i for _, i in hits]], dtype=str).reshape(1, -1))
                return filtered

            scores, ids = rank(mode, source(dense_ranked), source(lexical_ranked),
                               self.retrieval, k, self.index.config.metric == "ip")
            return [{**self.items[item_id], "score": float(score)}
                    for score, item_id in zip(scores[0][:k], ids[0][:k]) if item_id]

    def get(self, item_id: str) -> dict[str, Any] | None:
        with self.lock:
            self._sync()
            return self.items.get(item_id)

    def put(self, item: dict[str, Any], vector: np.ndarray) -> bool:
        """Add or replace an item (an items.parquet row: attributes as a JSON string); durable
        once this returns. True if the id was new."""
        vector = np.asarray(vector, dtype=np.float32)
        if vector.shape != (self.source.dim,):
            raise ValueError(f"embedding has shape {vector.shape}, the index holds "
                             f"{self.source.dim}-dim vectors")
        with self.lock:
            self._sync()
            created = item["item_id"] not in self.items
            self.journal.append({"op": "put", "item": item, "vector": encode_vector(vector)})
            self._sync()
            return created

    def delete(self, item_id: str) -> bool:
        """Remove an item (durable once this returns); False if there was none."""
        with self.lock:
            self._sync()
            if item_id not in self.items:
                return False
            self.journal.append({"op": "delete", "item_id": item_id})
            self._sync()
            return True

    def store_image(self, jpeg: bytes) -> str:
        """Keep an item image in the index folder under its content hash; returns its path."""
        path = self.source.index_dir / UPLOADS_DIR / f"{sha256_bytes(jpeg)[:32]}.jpg"
        if not path.is_file():
            atomic_write_bytes(path, jpeg)
        return str(path)

    def info(self) -> dict[str, Any]:
        with self.lock:
            self._sync()
            shards = gather_from_actors([s.info.remote() for s in self.index.shards],
                                        [f"index shard {i}" for i in range(len(self.index.shards))],
                                        self.timeout_s, "info")
            return {"items": len(self.items), "dim": self.source.dim,
                    "model_hash": self.source.model_hash, "kind": self.index.config.kind,
                    "metric": self.index.config.metric, "journal_records": self.applied,
                    "shards": [{"shard": s["shard"], "items": s["items"]} for s in shards]}

    def check_health(self) -> None:
        if self.diverged is not None:
            raise CatalogDiverged(self.diverged)
        len(self.index)  # raises ShardUnavailable when a shard actor is gone
