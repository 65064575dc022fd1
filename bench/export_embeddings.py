"""Embed a real catalog with a trained embedder and save the vectors as .npy, so the index
benchmark can run on real embedding geometry, not only generated clusters.

    .venv/bin/python bench/export_embeddings.py --embedder runs/results/train/cit/embedder \\
        --catalog pricerunner --out /tmp/pricerunner.npy
    .venv/bin/python bench/bench_index.py --embeddings /tmp/pricerunner.npy --queries 1000

grocery: every photo of every split (image only, as a shopper's query) plus the 81 catalog
items (image + title + description). pricerunner: every offer title (text only).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedder", required=True, help="an exported embedder directory")
    parser.add_argument("--catalog", choices=("grocery", "pricerunner"), required=True)
    parser.add_argument("--out", required=True, help="output .npy (written atomically)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("-o", "--override", action="append", default=[],
                        help="config override such as data.root=/data (repeatable)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import numpy as np

    from afmrl.config import load_config
    from afmrl.data import load_catalog
    from afmrl.models.embedders import embed, load_embedder
    from afmrl.train.data import catalog_inputs, usable
    from afmrl.utils.io import atomic_path

    config = load_config(None, [f"data.catalog={args.catalog}", *args.override])
    rows = usable(load_catalog(config.data))
    keys = config.extract.attribute_keys
    inputs = catalog_inputs(rows, keys)  # grocery photo rows are photo-only (the adapter)
    vectors = embed(load_embedder(args.embedder), inputs, args.batch, progress=True)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, vectors.astype(np.float32), allow_pickle=False)
    print(f"{args.out}: {vectors.shape[0]} x {vectors.shape[1]} float32 from {args.catalog}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
