"""The lexical index kind: BM25 over product text with tantivy, beside the FAISS index.

Product codes are written many ways ("DSC-W120P", "dscw120p", "dsc w120p") and a general
embedder blurs them, so every item is indexed in several analysed fields, chosen by
measurement on PriceRunner (README, "Hybrid retrieval"):

- ``title``, ``text``, ``attributes``: word tokens (``afmrl.losses.bm25.tokenize``);
- ``codes``: the title's words plus every adjacent pair joined ("dsc w120p" -> "dscw120p"), so
  the three spellings above share the token "dscw120p";
- ``grams``: character n-grams of each title and attribute word padded with ``_`` (like
  scikit-learn's ``char_wb``), which catch partial codes and typos ("w120" in "dscw120p").

Analysis runs in Python (one function for items and queries, so both sides always agree) and
tantivy indexes the resulting space-separated tokens with its ``whitespace`` tokenizer; a query
is one disjunction of boosted term queries, scored by tantivy's BM25 summed over fields.

Storage mirrors ``VectorIndex``: each document carries a ``label`` (u64 fast field) = position
in an append-only id array (``ids.npy``; removed items keep their label with a tombstone id).
A saved index is ``manifest.json`` + ``shard-<i>/`` folders routed by ``shard_of`` like the
FAISS shards; the manifest holds the item ids' content-hash fingerprint (no embedder: the
lexical index is embedder-independent) and ``load`` refuses one that does not match the
catalog rows the caller serves. Shards are searched in-process (tantivy is fast and its files
are memory-mapped), and their top lists merged by score.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import math
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import tantivy

from afmrl.index.faiss_index import (IndexMismatchError, MISSING_INT, as_ids, missing_id,
                                     rank_results)
from afmrl.index.sharded import shard_of
from afmrl.losses.bm25 import tokenize
from afmrl.utils.io import atomic_path, atomic_write_json

MANIFEST = "manifest.json"
IDS_FILE = "ids.npy"
LEXICAL_DIR = "lexical"
FORMAT_VERSION = 1
FIELDS = ("title", "text", "attributes", "codes", "grams")
WRITER_HEAP_BYTES = 64 << 20


class LexicalIndexMissing(LookupError):
    """A lexical or hybrid search on an index built without its lexical part."""


@dataclasses.dataclass(frozen=True)
class Analysis:
    """How text becomes tokens and how much each field counts (saved in the manifest)."""
    ngram_min: int = 3
    ngram_max: int = 4
    idf_power: float = 3.0
    boosts: tuple[tuple[str, float], ...] = (("grams", 1.0), ("title", 0.5), ("codes", 0.25),
                                             ("text", 0.3), ("attributes", 0.5))

    def __post_init__(self) -> None:
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"need 1 <= ngram_min <= ngram_max, got {self.ngram_min}, "
                             f"{self.ngram_max}")
        unknown = {name for name, _ in self.boosts} - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown lexical fields {sorted(unknown)}; fields are {FIELDS}")

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any]) -> "Analysis":
        return cls(saved["ngram_min"], saved["ngram_max"], float(saved["idf_power"]),
                   tuple((name, float(boost)) for name, boost in saved["boosts"]))

    def to_dict(self) -> dict[str, Any]:
        return {"ngram_min": self.ngram_min, "ngram_max": self.ngram_max,
                "idf_power": self.idf_power, "boosts": [list(pair) for pair in self.boosts]}


def code_tokens(words: Sequence[str]) -> list[str]:
    """Words plus each adjacent pair joined: one token for every spelling of a split code."""
    return list(words) + [a + b for a, b in zip(words, words[1:])]


def char_grams(words: Sequence[str], low: int, high: int) -> list[str]:
    """Character n-grams of ``_word_`` for each word (n in [low, high])."""
    grams = []
    for word in words:
        padded = f"_{word}_"
        for n in range(low, high + 1):
            grams.extend(padded[i:i + n] for i in range(len(padded) - n + 1))
    return grams


def analyse(title: str, text: str, attributes: str, analysis: Analysis) -> dict[str, list[str]]:
    """The tokens of every field for one item or query (``attributes`` as prose)."""
    title_words, attribute_words = tokenize(title), tokenize(attributes)
    # Generated attributes are short normalised values ("32gb", "gold"): their n-grams count
    # like the title's (measured on PriceRunner with the text teacher: R@1 0.877 -> 0.919).
    described = title_words + attribute_words
    return {"title": title_words, "text": tokenize(text), "attributes": attribute_words,
            "codes": code_tokens(title_words),
            "grams": char_grams(described, analysis.ngram_min, analysis.ngram_max)}


def items_fingerprint(ids: Sequence[Any], content_hashes: Sequence[str]) -> str:
    """Identity of a set of catalog rows: sha256 over the sorted ``id<TAB>content_hash`` lines."""
    lines = sorted(f"{i}\t{h}" for i, h in zip(ids, content_hashes))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def _schema() -> tantivy.Schema:
    builder = tantivy.SchemaBuilder()
    builder.add_unsigned_field("label", stored=False, indexed=True, fast=True)
    for name in FIELDS:  # BM25 needs term frequencies, not positions
        builder.add_text_field(name, stored=False, tokenizer_name="whitespace",
                               index_option="freq")
    return builder.build()


class LexicalIndex:
    """One tantivy index (one shard) plus the ids its labels point to.

    ``path=None`` keeps it in memory; otherwise it lives (and is committed) in ``path``.
    Not thread-safe: one writer per index, callers serialise (the serving Catalog holds a lock).
    """

    def __init__(self, path: str | Path | None, analysis: Analysis,
                 ids: np.ndarray | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.analysis = analysis
        self.schema = _schema()
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self._index = tantivy.Index(self.schema, path=None if path is None else str(path),
                                    reuse=True)
        self._ids = as_ids([]) if ids is None else ids
        self._writer = None

    def __len__(self) -> int:
        return int(np.count_nonzero(self._ids != missing_id(self._ids))) if len(self._ids) else 0

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def _write(self) -> Any:
        if self._writer is None:
            self._writer = self._index.writer(WRITER_HEAP_BYTES, 1)
        return self._writer

    def add(self, ids: Sequence[Any] | np.ndarray, titles: Sequence[str], texts: Sequence[str],
            attributes: Sequence[str]) -> None:
        """Add items (ids must be new, as in ``VectorIndex.add``); visible after ``commit``."""
        ids = as_ids(ids)
        if not len(ids) == len(titles) == len(texts) == len(attributes):
            raise ValueError(f"{len(ids)} ids but {len(titles)} titles, {len(texts)} texts, "
                             f"{len(attributes)} attribute texts")
        if len(ids) == 0:
            return
        if len(self._ids) and (ids.dtype.kind == "U") != (self._ids.dtype.kind == "U"):
            raise ValueError(f"this index holds {self._ids.dtype} ids; got {ids.dtype} ids")
        if len(np.unique(ids)) != len(ids) or np.isin(ids, self._ids).any():
            raise ValueError("duplicate item ids: each id may be added once (remove it first to "
                             "replace an item)")
        writer = self._write()
        first = len(self._ids)
        for offset, (title, text, attrs) in enumerate(zip(titles, texts, attributes)):
            document = tantivy.Document()
            document.add_unsigned("label", first + offset)
            for name, tokens in analyse(title, text, attrs, self.analysis).items():
                if tokens:
                    document.add_text(name, " ".join(tokens))
            writer.add_document(document)
        self._ids = np.concatenate([self._ids, ids]) if len(self._ids) else ids

    def remove(self, ids: Sequence[Any] | np.ndarray) -> int:
        """Remove items by id (unknown ids are ignored); visible after ``commit``."""
        ids = as_ids(ids)
        if len(ids) == 0 or len(self._ids) == 0:
            return 0
        labels = np.flatnonzero(np.isin(self._ids, ids))
        if len(labels):  # (delete_documents_by_term does not match u64 terms in 0.27)
            self._write().delete_documents_by_query(tantivy.Query.term_set_query(
                self.schema, "label", [int(label) for label in labels]))
        self._ids[labels] = missing_id(self._ids)
        return len(labels)

    def commit(self) -> None:
        """Make adds/removes visible to searches (and durable, for an index on disk)."""
        if self._writer is not None:
            self._writer.commit()
            self._writer.wait_merging_threads()
            self._writer = None
            self._index.reload()

    def searcher(self) -> tantivy.Searcher:
        return self._index.searcher()

    def search(self, texts: Sequence[str], k: int, attributes: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k ``(scores, ids)`` per query text, larger is better, best first, ties by id,
        padding ``missing_id`` with score -inf (the ``VectorIndex.search`` contract)."""
        searcher = self.searcher()
        return self.run(searcher, queries(self.schema, self.analysis, [searcher], texts,
                                          attributes), k)

    def run(self, searcher: tantivy.Searcher, built: Sequence[tantivy.Query | None], k: int
            ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of already built queries (see ``queries``) on this shard."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        pad = missing_id(self._ids) if len(self._ids) else MISSING_INT
        scores = np.full((len(built), k), -np.inf, dtype=np.float32)
        ids = np.full((len(built), k), pad, dtype=self._ids.dtype if len(self._ids) else np.int64)
        for row, query in enumerate(built):
            hits = [] if query is None else searcher.search(query, k, count=False).hits
            if not hits:
                continue
            labels = searcher.fast_field_values("label", [address for _, address in hits])
            scores[row, :len(hits)] = [score for score, _ in hits]
            ids[row, :len(hits)] = self._ids[np.asarray(labels, dtype=np.int64)]
        return rank_results(scores, ids, "ip", k)

    def save_ids(self) -> None:
        np.save(self.path / IDS_FILE, self._ids, allow_pickle=False)


def queries(schema: tantivy.Schema, analysis: Analysis, searchers: Sequence[tantivy.Searcher],
            texts: Sequence[str], attributes: Sequence[str] | None = None
            ) -> list[tantivy.Query | None]:
    """One disjunction of boosted term queries over every field per text (None: no tokens).

    Query text is analysed like an item's title *and* text; ``attributes`` (e.g. an enriched
    query's generated attributes) like an item's attribute field. Each term is boosted by
    ``idf ** idf_power`` with document frequencies summed over all ``searchers`` (shards), so
    every shard scores a query alike: BM25 counts a term's rarity once, and on product titles
    the rare n-grams of model codes decide the match (measured on PriceRunner: R@1 0.72 with
    plain BM25, 0.82 with idf^3, character TF-IDF cosine 0.75; README).
    """
    attributes = [""] * len(texts) if attributes is None else attributes
    num_docs = max(1, sum(s.num_docs for s in searchers))
    boosts = [(field, boost) for field, boost in analysis.boosts if boost > 0]
    built = []
    for text, attrs in zip(texts, attributes):
        tokens = analyse(text, text, attrs, analysis)
        clauses = []
        for field, boost in boosts:
            for token in set(tokens[field]):
                doc_freq = sum(s.doc_freq(field, token) for s in searchers)
                idf = math.log(1 + num_docs / (doc_freq + 0.5))
                term = tantivy.Query.term_query(schema, field, token)
                clauses.append((tantivy.Occur.Should, tantivy.Query.boost_query(
                    term, boost * idf ** analysis.idf_power)))
        built.append(tantivy.Query.boolean_query(clauses) if clauses else None)
    return built


def _fields_of(rows: Mapping[str, Sequence[Any]]) -> tuple[list[str], list[str], list[str]]:
    n = len(rows["item_id"])
    return ([str(t) for t in rows["title"]],
            [str(t) for t in rows.get("text", [""] * n)],
            [str(t) for t in rows.get("attribute_text", [""] * n)])


class ShardedLexicalIndex:
    """``num_shards`` LexicalIndex shards routed like the FAISS shards (``shard_of``)."""

    def __init__(self, shards: list[LexicalIndex], analysis: Analysis, fingerprint: str) -> None:
        self.shards = shards
        self.analysis = analysis
        self.fingerprint = fingerprint

    @classmethod
    def build(cls, rows: Mapping[str, Sequence[Any]], num_shards: int,
              analysis: Analysis = Analysis(), path: str | Path | None = None,
              content_hashes: Sequence[str] | None = None) -> "ShardedLexicalIndex":
        """Index catalog rows (``item_id``, ``title``, optional ``text``, ``attribute_text``).

        ``path`` = None builds in memory (offline evaluation); otherwise call ``save`` to write
        the manifest. ``content_hashes`` (the catalog's ``content_hash`` column) make the
        fingerprint that ``load`` checks; without them the ids alone are fingerprinted.
        """
        ids = as_ids(list(rows["item_id"]))
        titles, texts, attrs = _fields_of(rows)
        hashes = [""] * len(ids) if content_hashes is None else list(content_hashes)
        route = shard_of(ids, num_shards)
        shards = []
        for shard in range(num_shards):
            mine = np.flatnonzero(route == shard)
            index = LexicalIndex(None if path is None else Path(path) / _shard_dir(shard),
                                 analysis)
            index.add(ids[mine], [titles[i] for i in mine], [texts[i] for i in mine],
                      [attrs[i] for i in mine])
            index.commit()
            shards.append(index)
        return cls(shards, analysis, items_fingerprint(ids.tolist(), hashes))

    def __len__(self) -> int:
        return sum(len(s) for s in self.shards)

    def _route(self, ids: np.ndarray) -> dict[int, np.ndarray]:
        route = shard_of(ids, len(self.shards))
        return {i: route == i for i in range(len(self.shards)) if np.any(route == i)}

    def add(self, rows: Mapping[str, Sequence[Any]]) -> None:
        ids = as_ids(list(rows["item_id"]))
        titles, texts, attrs = _fields_of(rows)
        for shard, mask in self._route(ids).items():
            picked = np.flatnonzero(mask)
            self.shards[shard].add(ids[mask], [titles[i] for i in picked],
                                   [texts[i] for i in picked], [attrs[i] for i in picked])

    def remove(self, ids: Sequence[Any] | np.ndarray) -> int:
        ids = as_ids(ids)
        return sum(self.shards[s].remove(ids[mask]) for s, mask in self._route(ids).items())

    def commit(self) -> None:
        for shard in self.shards:
            shard.commit()

    def search(self, texts: Sequence[str], k: int, attributes: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over all shards; queries are built once with document frequencies of the
        whole index, so scores compare across shards (tantivy's own BM25 factor stays per
        shard, as in any sharded engine; with hash routing shard statistics are close)."""
        searchers = [shard.searcher() for shard in self.shards]
        built = queries(self.shards[0].schema, self.analysis, searchers, texts, attributes)
        parts = [shard.run(searcher, built, k) for shard, searcher in zip(self.shards, searchers)]
        id_parts = [p[1] for p in parts]
        if any(p.dtype.kind == "U" for p in id_parts):
            id_parts = [p if p.dtype.kind == "U" else np.full(p.shape, "") for p in id_parts]
        return rank_results(np.concatenate([p[0] for p in parts], axis=1),
                            np.concatenate(id_parts, axis=1), "ip", k)

    def manifest(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "layout": "lexical", "engine": "tantivy",
                "tantivy_version": getattr(tantivy, "__version__", "unknown"),
                "analysis": self.analysis.to_dict(), "item_count": len(self),
                "items_fingerprint": self.fingerprint,
                "routing": "int id % num_shards, or crc32(utf-8 id) % num_shards",
                "shards": [_shard_dir(i) for i in range(len(self.shards))]}

    def save(self, path: str | Path) -> None:
        """Commit every shard and write ``ids.npy`` files, then ``manifest.json`` last (a crash
        before it leaves no loadable index). Only an index built with ``path`` can be saved."""
        path = Path(path)
        on_disk = [s.path for s in self.shards]
        if any(p is None or p.parent.resolve() != path.resolve() for p in on_disk):
            raise ValueError(f"this lexical index lives in {on_disk[0]}, not under {path}; build "
                             f"it with path={str(path)!r}")
        self.commit()
        for shard in self.shards:
            shard.save_ids()
        atomic_write_json(path / MANIFEST, self.manifest())

    @classmethod
    def load(cls, path: str | Path, expected_fingerprint: str | None = None,
             expected_shards: int | None = None, private_copy: str | Path | None = None
             ) -> "ShardedLexicalIndex":
        """Open a saved lexical index, refusing one of another format, shard count or set of
        catalog rows. ``private_copy``: work on a hard-linked copy there (tantivy never
        rewrites a segment file), so live updates never touch the saved index."""
        path = Path(path)
        manifest = read_lexical_manifest(path, expected_fingerprint, expected_shards)
        if private_copy is not None:
            private_copy = Path(private_copy)
            shutil.rmtree(private_copy, ignore_errors=True)
            shutil.copytree(path, private_copy, copy_function=_link_or_copy)
            path = private_copy
        analysis = Analysis.from_dict(manifest["analysis"])
        shards = []
        for sub in manifest["shards"]:
            ids = np.load(path / sub / IDS_FILE, allow_pickle=False)
            shards.append(LexicalIndex(path / sub, analysis, ids))
        self = cls(shards, analysis, manifest["items_fingerprint"])
        if len(self) != manifest["item_count"]:
            raise IndexMismatchError(f"lexical index at {path} is inconsistent: ids.npy hold "
                                     f"{len(self)} items, the manifest {manifest['item_count']}; "
                                     f"rebuild it with `afmrl index`")
        return self


def _shard_dir(shard: int) -> str:
    return f"shard-{shard:03d}"


# Segment files tantivy writes once and never rewrites: safe to share as hard links. Anything
# else is copied: meta.json, .managed.json and ids.npy, so writing them never reaches the
# source, and the .tantivy-*.lock files, whose flock() a hard link would share between every
# copy (two Serve replicas then failed each other's commits with LockBusy).
SEGMENT_SUFFIXES = frozenset({".fast", ".fieldnorm", ".idx", ".pos", ".store", ".term", ".del"})


def _link_or_copy(source: str, target: str) -> None:
    if Path(source).suffix in SEGMENT_SUFFIXES:
        try:
            os.link(source, target)
            return
        except OSError:
            pass  # another file system: copy
    shutil.copy2(source, target)


def read_lexical_manifest(path: str | Path, expected_fingerprint: str | None = None,
                          expected_shards: int | None = None) -> dict[str, Any]:
    """``path/manifest.json`` of a lexical index, checked against what the caller serves."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no {MANIFEST} in {path}: not a saved afmrl lexical index; "
                                f"build one with `afmrl index`")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format_version") != FORMAT_VERSION or manifest.get("layout") != "lexical":
        raise IndexMismatchError(f"{manifest_path} is not a format-{FORMAT_VERSION} lexical "
                                 f"index (layout {manifest.get('layout')!r}, format "
                                 f"{manifest.get('format_version')!r}); rebuild the index")
    if expected_fingerprint is not None and manifest["items_fingerprint"] != expected_fingerprint:
        raise IndexMismatchError(
            f"lexical index at {path} was built from other catalog rows (items fingerprint "
            f"{manifest['items_fingerprint'][:12]}..., expected {expected_fingerprint[:12]}...); "
            f"rebuild the index so FAISS and lexical hold the same items")
    if expected_shards is not None and len(manifest["shards"]) != expected_shards:
        raise IndexMismatchError(f"lexical index at {path} has {len(manifest['shards'])} shards "
                                 f"but the FAISS index beside it {expected_shards}; rebuild the "
                                 f"index")
    return manifest


def attribute_prose(attributes: Mapping[str, str] | str, keys: Iterable[str] | None = None) -> str:
    """Attribute values as text for the ``attributes`` field (keys add nothing lexically)."""
    if isinstance(attributes, str):  # items.parquet keeps them as a JSON object
        attributes = json.loads(attributes) if attributes.strip() else {}
    keys = list(attributes) if keys is None else [k for k in keys if k in attributes]
    return " ".join(str(attributes[k]) for k in keys if attributes[k])


def lexical_rows(items: Any, attribute_keys: Iterable[str] | None = None) -> dict[str, list]:
    """Catalog rows (a DataFrame or records with item_id, title, text, attributes) as the
    fields ``ShardedLexicalIndex.build``/``add`` index."""
    records = items.to_dict("records") if hasattr(items, "to_dict") else list(items)
    keys = None if attribute_keys is None else list(attribute_keys)
    return {"item_id": [r["item_id"] for r in records],
            "title": [r.get("title") or "" for r in records],
            "text": [r.get("text") or "" for r in records],
            "attribute_text": [attribute_prose(r.get("attributes") or {}, keys)
                               for r in records]}


def build_catalog_lexical(gallery: Any, attribute_keys: Iterable[str], num_shards: int,
                          index_dir: str | Path) -> Path:
    """The lexical index of the gallery rows the FAISS index in ``index_dir`` holds, written
    to ``index_dir/lexical`` (all or nothing), fingerprinted with their ``content_hash``."""
    target = Path(index_dir) / LEXICAL_DIR
    with atomic_path(target) as tmp:
        index = ShardedLexicalIndex.build(lexical_rows(gallery, attribute_keys), num_shards,
                                          path=tmp,
                                          content_hashes=gallery["content_hash"].tolist())
        index.save(tmp)
    return target
