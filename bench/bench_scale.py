"""Cost curves: catalog read+validate, embedding (the Ray Data job), index build (IndexShard
actors reading the embedding files) and search at growing catalog sizes, with the peak private
memory of the driver in each stage and the fitted log-log slope (1 = linear in the catalog
size; the driver holds no vectors, so its memory should hardly grow).

    python bench/bench_scale.py --sizes 1000,10000,100000 --out bench/scale.png

The catalogs are synthetic product titles made from the real PriceRunner titles with seeded
perturbations (dropped and swapped words, a random model number, a merchant suffix), so the text
has real vocabulary and length; each synthetic row keeps its source cluster as its product.
Embedding uses the untrained tiny text tower unless --embedder names a trained one: the curve's
shape (how cost grows with size), not the model, is what this measures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afmrl.config import DEFAULT_SHARED_DATA  # noqa: E402

STAGES = ("read+validate", "embed", "index build", "search")
MERCHANT_SUFFIXES = ("", " - free delivery", " (refurbished)", " bundle", " uk stock", " new")


def synthetic_titles(n: int, seed: int, root: Path = DEFAULT_SHARED_DATA) -> pd.DataFrame:
    """``n`` catalog rows whose titles perturb real PriceRunner titles (seeded)."""
    source = pd.read_csv(root / "pricerunner" / "items.csv", keep_default_na=False)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(source), n)
    titles = []
    for title in source["title"].to_numpy()[picks]:
        words = title.split()
        if len(words) > 2 and rng.random() < 0.5:
            words.pop(int(rng.integers(len(words))))
        if len(words) > 1 and rng.random() < 0.3:
            i = int(rng.integers(len(words) - 1))
            words[i], words[i + 1] = words[i + 1], words[i]
        if rng.random() < 0.5:
            words.append(f"{chr(97 + int(rng.integers(26)))}{int(rng.integers(100, 9999))}")
        titles.append(" ".join(words) + MERCHANT_SUFFIXES[int(rng.integers(len(MERCHANT_SUFFIXES)))])
    return pd.DataFrame({"item_id": [f"s{i}" for i in range(n)],
                         "group_id": source["group_id"].to_numpy()[picks], "title": titles})


class PeakRss:
    """Peak private resident memory of this process while the block runs (sampled every
    20 ms): RSS less its shared pages, which are Ray's object store (mapped into the driver
    when it reads an object) and the libraries' code, not memory the driver holds."""

    def __enter__(self) -> "PeakRss":
        import psutil

        self._process = psutil.Process()
        self.peak = self._private()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _private(self) -> int:
        info = self._process.memory_info()
        return info.rss - info.shared

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._private())

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._private())


def measured(fn: Callable[[], Any]) -> tuple[Any, float, int]:
    """Result, seconds and peak private driver memory (bytes) of one stage."""
    with PeakRss() as rss:
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
    return result, seconds, rss.peak


def run_size(n: int, config: Any, embedder: Path, work: Path, queries: int, seed: int
             ) -> dict[str, tuple[float, int]]:
    from afmrl.data.catalogs import read_catalog_file
    from afmrl.index.embed_job import EMBEDDINGS_MANIFEST, embed_catalog
    from afmrl.index.sharded import ShardedIndex

    catalog = work / f"catalog-{n}.parquet"
    synthetic_titles(n, seed).to_parquet(catalog)
    out: dict[str, tuple[float, int]] = {}
    rows, seconds, peak = measured(lambda: read_catalog_file(catalog, check_images=False).count())
    assert rows == n, (rows, n)
    out["read+validate"] = (seconds, peak)
    folder, seconds, peak = measured(lambda: embed_catalog(config, embedder, catalog,
                                                           work / f"embeddings-{n}"))
    out["embed"] = (seconds, peak)

    manifest = json.loads((folder / EMBEDDINGS_MANIFEST).read_text())
    index, seconds, peak = measured(lambda: ShardedIndex.build_from_embeddings(
        folder, config.index, manifest["model_hash"], config.ray))
    out["index build"] = (seconds, peak)
    try:
        probe = np.random.default_rng(seed).standard_normal((queries, manifest["dim"]))
        _, seconds, peak = measured(lambda: index.search(probe.astype(np.float32), 10))
        out["search"] = (seconds, peak)
    finally:
        index.shutdown()
    return out


def slope(sizes: Sequence[int], values: Sequence[float]) -> float:
    """Least-squares slope of log(value) against log(size)."""
    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def plot(sizes: list[int], results: list[dict[str, tuple[float, int]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        seconds = [r[stage][0] for r in results]
        peaks = [r[stage][1] / 2**20 for r in results]
        time_axis.loglog(sizes, seconds, "o-", label=f"{stage} (slope {slope(sizes, seconds):.2f})")
        memory_axis.loglog(sizes, peaks, "o-", label=f"{stage} (slope {slope(sizes, peaks):.2f})")
    time_axis.set(xlabel="catalog items", ylabel="seconds", title="time per stage")
    memory_axis.set(xlabel="catalog items", ylabel="peak private driver memory (MiB)",
                    title="driver memory per stage")
    for axis in (time_axis, memory_axis):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--embedder", default=None, help="embedder folder (default: untrained "
                        "tiny text tower, built here)")
    parser.add_argument("--out", default="bench/scale.png", help="log-log PNG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="config override such as index.embed_max_actors=2 (repeatable)")
    args = parser.parse_args(argv)

    from afmrl.config import load_config
    from afmrl.models.embedders import build_embedder, save_embedder
    from afmrl.utils.ray_utils import init_ray

    config = load_config(None, ["models.text_tower=tiny", *args.override])
    init_ray(config.ray)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="afmrl-scale-") as tmp:
        work = Path(tmp)
        embedder = Path(args.embedder) if args.embedder else work / "embedder"
        if not args.embedder:
            save_embedder(build_embedder(config.models, work / "cache"), embedder)
        results = []
        for n in sizes:
            results.append(run_size(n, config, embedder, work, args.queries, args.seed))
            print(f"done: {n} {results[-1]}", file=sys.stderr)
    print(f"\nsizes {sizes}; index.kind={config.index.kind}, embed actors "
          f"{config.index.embed_min_actors}-{config.index.embed_max_actors}, "
          f"{args.queries} queries\n")
    print("| stage | " + " | ".join(f"{n:,} items s / MiB" for n in sizes)
          + " | time slope | memory slope |")
    print("|---|" + "---:|" * (len(sizes) + 2))
    for stage in STAGES:
        seconds = [r[stage][0] for r in results]
        peaks = [r[stage][1] for r in results]
        cells = " | ".join(f"{s:.2f} / {p / 2**20:,.0f}" for s, p in zip(seconds, peaks))
        print(f"| {stage} | {cells} | {slope(sizes, seconds):.2f} | {slope(sizes, peaks):.2f} |")
    plot(sizes, results, Path(args.out))
    print(f"\n{args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
