"""Cost of hybrid retrieval in-process: p50/p99 latency and QPS of dense, lexical and hybrid
search for one query at a time (what a serving replica does), plus the lexical index's build
time and bytes per item.

Galleries: the real PriceRunner titles (35k) and synthetic catalogs of N titles made from them
with seeded perturbations (a token dropped/duplicated, digits changed, case and hyphens
changed), so term statistics stay product-like. Dense vectors are random unit vectors of the
embedder's dimension: a flat FAISS search costs the same for any content, and this bench needs
no model. The dense baseline (FAISS flat inner product, the index kind serving uses by
default) is measured in the same run; ratios are hybrid / dense.

  .venv/bin/python bench/bench_hybrid.py --sizes 35000 100000 --queries 300
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from afmrl.config import DEFAULT_SHARED_DATA, IndexConfig, RetrievalConfig
from afmrl.index.faiss_index import VectorIndex
from afmrl.index.fusion import fuse
from afmrl.index.lexical import ShardedLexicalIndex

DIM = 384  # all-MiniLM-L6-v2


def perturb(title: str, rng: np.random.Generator) -> str:
    words = title.split()
    choice = rng.integers(4)
    if choice == 0 and len(words) > 2:
        del words[rng.integers(len(words))]
    elif choice == 1:
        words.insert(rng.integers(len(words) + 1), words[rng.integers(len(words))])
    elif choice == 2:
        words = [re.sub(r"\d", lambda _: str(rng.integers(10)), w) for w in words]
    else:
        words = [w.replace("-", "") if rng.random() < 0.5 else w.upper() for w in words]
    return " ".join(words)


def titles(n: int, seed: int = 0) -> list[str]:
    real = pd.read_csv(DEFAULT_SHARED_DATA / "pricerunner" / "items.csv",
                       keep_default_na=False)["title"].tolist()
    if n <= len(real):
        return real[:n]
    rng = np.random.default_rng(seed)
    extra = [perturb(real[i], rng) for i in rng.integers(len(real), size=n - len(real))]
    return real + extra


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "qps": float(len(ms) / (ms.sum() / 1000))}


def bench(n: int, n_queries: int, shards: int) -> dict:
    rng = np.random.default_rng(1)
    gallery = titles(n)
    ids = np.arange(n)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dense = VectorIndex.build(vectors, ids, IndexConfig(kind="flat", num_shards=1), "bench")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        lexical = ShardedLexicalIndex.build({"item_id": ids, "title": gallery}, shards,
                                            path=Path(tmp) / "lexical")
        lexical.save(Path(tmp) / "lexical")
        build_s = time.perf_counter() - started
        size = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
        picked = rng.integers(n, size=n_queries)
        query_texts = [perturb(gallery[i], rng) for i in picked]
        query_vectors = vectors[picked] + 0.05 * rng.standard_normal((n_queries, DIM)).astype(
            np.float32)
        config = RetrievalConfig()
        times: dict[str, list[float]] = {"dense": [], "lexical": [], "hybrid": []}
        for text, vector in zip(query_texts, query_vectors):
            t0 = time.perf_counter()
            d = dense.search(vector[None], config.candidates)
            t1 = time.perf_counter()
            lx = lexical.search([text], config.candidates)
            t2 = time.perf_counter()
            fuse(d, lx, config, 10)
            t3 = time.perf_counter()
            times["dense"].append(t1 - t0)
            times["lexical"].append(t2 - t1)
            times["hybrid"].append(t3 - t0)
    result = {"items": n, "shards": shards, "lexical_build_s": build_s,
              "lexical_bytes_per_item": size / n,
              **{f"{mode}_{key}": value for mode, seconds in times.items()
                 for key, value in percentiles(seconds).items()}}
    result["hybrid_over_dense_p50"] = result["hybrid_p50_ms"] / result["dense_p50_ms"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 35_000, 100_000])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        rows.append(bench(n, args.queries, args.shards))
        print(json.dumps(rows[-1]), flush=True)
    header = ("| items | lexical build s | bytes/item | dense p50/p99 ms | lexical p50/p99 ms | "
              "hybrid p50/p99 ms | hybrid QPS | hybrid/dense p50 |")
    print(header + "\n|" + "---|" * 8)
    for r in rows:
        print(f"| {r['items']:,} | {r['lexical_build_s']:.1f} | {r['lexical_bytes_per_item']:.0f}"
              f" | {r['dense_p50_ms']:.2f} / {r['dense_p99_ms']:.2f}"
              f" | {r['lexical_p50_ms']:.2f} / {r['lexical_p99_ms']:.2f}"
              f" | {r['hybrid_p50_ms']:.2f} / {r['hybrid_p99_ms']:.2f}"
              f" | {r['hybrid_qps']:.0f} | {r['hybrid_over_dense_p50']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
