"""Matryoshka-trained vs post-hoc embedding prefixes, honestly measured: the same AGCL run (model,
data, seed, budget) once plain and once with ``train.matryoshka_dims``, then every prefix of each
embedder is scored on the catalog's test split.

  .venv/bin/python bench/bench_matryoshka.py --config configs/demo.yaml --dims 64,128
  .venv/bin/python bench/bench_matryoshka.py --attributes none \\
      data.catalog=pricerunner data.max_groups=2000 run_dir=runs/mrl-pricerunner

Per prefix: the task metrics (R@1, R@10 of the same product) and "R@10 vs exact" (the share of
the full-dimension top 10 of the *same* embedder that the prefix search returns). The trained
embedders land under ``<run_dir>/train/mrl-{off,on}-s<seed>`` (reused when they exist).
``--attributes sft`` labels the catalog with a finished extraction (``<run_dir>/extract/sft``);
``none`` trains on titles alone (a catalog nobody extracted).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afmrl.utils.job import parse, parser  # noqa: E402


def prefix_rows(model, eval_set, dims: list[int], ks: list[int]) -> list[dict[str, float]]:
    """Task metrics and agreement with the full-dimension top 10, for each prefix size."""
    from afmrl.config import IndexConfig
    from afmrl.eval.protocol import (dense_embeddings, rank_by_scores, ranking_depth,
                                     score_ranking)
    from afmrl.index.faiss_index import prefix_transform

    queries, gallery = dense_embeddings(model, eval_set)
    depth = ranking_depth(ks)
    rows, exact_top10 = [], None
    for dim in sorted(dims, reverse=True):  # the full dimension first: the reference
        cut = IndexConfig(dim_prefix=dim)  # what a dim_prefix index searches
        g, q = prefix_transform(gallery, cut), prefix_transform(queries, cut)
        ranking = rank_by_scores(lambda r: q[r] @ g.T, len(q), depth, eval_set.query_positions)
        top10 = ranking[0][:, :10]
        if exact_top10 is None:
            exact_top10 = top10
        agreement = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top10, exact_top10)])
        rows.append({"dim": dim, "vs_exact": float(agreement),
                     **score_ranking(eval_set, ranking, ks)})
    return rows[::-1]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--dims", default="64,128", help="prefix sizes below models.embed_dim")
    p.add_argument("--attributes", choices=("sft", "none"), default="sft")
    config, args = parse(argv, __doc__, p)
    from afmrl.config import replace
    from afmrl.data import load_catalog
    from afmrl.eval.protocol import build_eval_set
    from afmrl.extract.stage import load_attributes, with_attributes
    from afmrl.layout import RunLayout
    from afmrl.models.embedders import load_embedder
    from afmrl.train.stage import run_agcl
    from afmrl.utils.ray_utils import init_ray

    full = config.models.embed_dim
    dims = sorted({int(d) for d in args.dims.split(",") if d.strip()} | {full})
    init_ray(config.ray)
    attributes = load_attributes(RunLayout.of(config).attributes("sft")) \
        if args.attributes == "sft" else None
    catalog = load_catalog(config.data)
    labelled = with_attributes(catalog, attributes) if attributes is not None else catalog
    test = build_eval_set(labelled, "test", config.extract.attribute_keys,
                          config.train.query_attributes and attributes is not None)
    ks = sorted(set(config.eval.ks) | {1, 10})
    seed = config.train.seed
    table = {}
    for name, mrl_dims in (("post-hoc prefix (plain AGCL)", ()),
                           ("Matryoshka-trained (MRL)", tuple(dims))):
        run = replace(config, train=replace(config.train, matryoshka_dims=mrl_dims))
        tag = f"mrl-{'on' if mrl_dims else 'off'}-s{seed}"
        result = run_agcl(run, attributes, tag, None, catalog)
        table[name] = prefix_rows(load_embedder(result.embedder), test, dims, ks)

    print(f"\nMatryoshka prefixes on {len(test)} test queries of {config.data.catalog} "
          f"(gallery {len(test.gallery)}): {config.train.epochs} epochs, effective batch "
          f"{config.train.effective_batch_size}, seed {seed}, matryoshka_dims {dims}\n")
    print("| embedder | dims | R@10 vs exact | R@1 | R@10 |")
    print("|---|---|---|---|---|")
    for name, rows in table.items():
        for row in rows:
            print(f"| {name} | {row['dim']} | {row['vs_exact']:.3f} | "
                  f"{row['recall_at_1']:.3f} | {row['recall_at_10']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
