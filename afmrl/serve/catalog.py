"""The live catalog a Retriever replica serves: the sharded FAISS index, the item records
(``items.parquet``) and a durable journal of live updates.

Why a journal: PUT/DELETE must survive a restart, and rewriting every shard plus items.parquet
per update costs O(catalog). An update is one appended, fsync'ed JSON line holding the item and
its embedding (so replay needs no model). A replica loads the saved index and replays the
journal; while serving, every call first applies the lines other replicas appended (one stat()
when nothing changed), so all replicas answer from the same catalog. A crash mid-append leaves a
line without its newline: readers never consume it and the next writer cuts it off. Rebuilding
the index (``afmrl index``) replaces the whole folder, journal and uploads included.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from afmrl.config import RayConfig
from afmrl.extract.stage import parse_json
from afmrl.index.faiss_index import IndexMismatchError
from afmrl.index.sharded import DEFAULT_ACTOR_CPUS, ShardedIndex, gather_from_actors
from afmrl.index.stage import ITEMS_FILE, SOURCE_FILE
from afmrl.serve.filters import AttributeIndex, filtered_search
from afmrl.utils.io import atomic_write_bytes, fingerprint_tree, sha256_bytes

JOURNAL_FILE = "updates.jsonl"
UPLOADS_DIR = "uploads"
_TAIL_BLOCK = 1 << 16


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


class Journal:
    """Append-only JSON lines shared by all replicas (flock for writers, offsets for readers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes of complete lines already read

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with open(self.path, "ab+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                size = handle.seek(0, os.SEEK_END)
                complete = self._complete_prefix(handle, size)
                if complete < size:  # a writer crashed mid-line: drop the torn tail
                    handle.truncate(complete)
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @staticmethod
    def _complete_prefix(handle, size: int) -> int:
        """Length of the file up to and including its last newline."""
        end = size
        while end > 0:
            start = max(0, end - _TAIL_BLOCK)
            handle.seek(start)
            newline = handle.read(end - start).rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
        return 0

    def read_new(self) -> list[dict[str, Any]]:
        """Complete lines appended since the last call."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size < self.offset:
            raise RuntimeError(f"{self.path} shrank under a running server (was the index "
                               f"rebuilt?); redeploy the app to serve the new index")
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        end = data.rfind(b"\n") + 1
        records = []
        for number, line in enumerate(data[:end].splitlines()):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise RuntimeError(f"{self.path}: corrupt record {number + 1} after byte "
                                   f"{self.offset}; restore the file from a backup or rebuild "
                                   f"the index") from None
        self.offset += end
        return records


class Catalog:
    """Index + items + journal behind one lock (Serve runs sync methods in a thread pool).

    Methods return internal item records (with the server-side ``image_uri``); the HTTP layer
    decides what clients see. ``check_health`` is Ray Serve's replica health check: a dead
    shard actor makes the replica unhealthy, and Serve replaces it with one that reloads.
    """

    def __init__(self, index_dir: str | Path, ray_config: RayConfig,
                 shard_cpus: float = DEFAULT_ACTOR_CPUS) -> None:
        self.source = IndexSource.read(index_dir)
        self.index = ShardedIndex.load(self.source.index_dir, ray_config,
                                       expected_model_hash=self.source.model_hash,
                                       expected_dim=self.source.dim, num_cpus=shard_cpus)
        self.timeout_s = ray_config.call_timeout_s
        self.items: dict[str, dict[str, Any]] = {}
        self.attributes = AttributeIndex()
        for row in pd.read_parquet(self.source.index_dir / ITEMS_FILE).to_dict("records"):
            self._remember(row)
        self.journal = Journal(self.source.index_dir / JOURNAL_FILE)
        self.applied = 0
        self.lock = threading.Lock()
        self._sync()

    def _remember(self, row: dict[str, Any]) -> None:
        item = {**row, "group_id": int(row["group_id"]),
                "attributes": parse_json(row["attributes"])}
        self.items[item["item_id"]] = item
        self.attributes.put(item["item_id"], item["attributes"])

    def _forget(self, item_id: str) -> None:
        self.items.pop(item_id, None)
        self.attributes.remove(item_id)

    def _sync(self) -> None:
        """Apply new journal records: only each id's last record matters, applied in one batch."""
        records = self.journal.read_new()
        if not records:
            return
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
        for item_id, record in final.items():
            if record["op"] == "put":
                self._remember(record["item"])
            else:
                self._forget(item_id)
        self.applied += len(records)

    def count(self) -> int:
        with self.lock:
            self._sync()
            return len(self.items)

    def search(self, vector: np.ndarray, k: int, filters: dict[str, str]
               ) -> list[dict[str, Any]]:
        """The k best items passing ``filters`` (exact, see ``filtered_search``), best first."""
        query = np.asarray(vector, dtype=np.float32)[None]
        with self.lock:
            self._sync()

            def ranked(n: int) -> tuple[np.ndarray, np.ndarray]:
                scores, ids = self.index.search(query, n)
                return scores[0], ids[0]

            hits = filtered_search(ranked, k, self.attributes.matching(filters), len(self.items))
            return [{**self.items[item_id], "score": score} for score, item_id in hits]

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
        len(self.index)  # raises ShardUnavailable when a shard actor is gone
