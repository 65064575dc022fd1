"""The ``retrieval.*`` fusion defaults (used where a catalog has no ``val`` split to tune on),
chosen by measurement on the bundled catalogs' text queries.

Evaluation sets, each searched by an embedder (dense) and the tantivy lexical index, then fused
by every candidate of ``afmrl.index.fusion.grid`` (what ``afmrl eval`` tunes over on ``val``):
- PriceRunner ``val`` (unseen clusters, leave-one-out within the split, ``--groups`` clusters,
  text-teacher attributes as the text-catalog default path writes them), with the zero-shot
  embedder and every ``--embedder`` given (e.g. an AGCL export trained on the train clusters);
- GroceryStoreDataset ``val`` text queries: the shop listing titles of the val products
  (``shop_title`` of items.csv, e.g. "Apple Pink Lady Klass 1", "Filmjölk 3%") against the 81
  catalog items (title + description + volume, and their images for models with an image
  tower), with the zero-shot embedder and every ``--grocery-embedder`` given (e.g. the demo's
  CIT export).

A candidate's *regret* on a set is the best candidate's Recall@1 there minus its own. The
chosen default has the least worst-case regret over the sets (mean regret breaks ties): a
fusion no catalog was tuned for should not be far from the best on any of them.

  .venv/bin/python bench/fusion_defaults.py --embedder <pricerunner run>/train/agcl/embedder \
      --grocery-embedder runs/demo/train/cit/embedder --json bench/results/fusion_defaults.json

The committed ``bench/results/fusion_defaults.json`` is the sweep behind today's defaults; a
test keeps ``RetrievalConfig()`` equal to its choice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from afmrl.config import DEFAULT_SHARED_DATA, load_config
from afmrl.eval.protocol import (EvalSet, build_eval_set, rank_dense, rank_lexical,
                                 ranking_depth, score_ranking)
from afmrl.eval.run import untrained_embedder
from afmrl.index.fusion import FUSION_FIELDS, describe, fuse, grid
from afmrl.models.embedders import load_embedder
from afmrl.utils.io import atomic_write_json

KS = (1, 5, 10)


def pricerunner_val(groups: int, root: Path) -> tuple[object, EvalSet]:
    """PriceRunner's val clusters, labelled by the text teacher fitted without test rows."""
    from afmrl.data import load_catalog
    from afmrl.extract.stage import with_attributes
    from afmrl.extract.text_teacher import TextTeacher

    config = load_config(None, ["data.catalog=pricerunner", f"data.max_groups={groups}",
                                f"data.root={root}"])
    catalog = load_catalog(config.data)
    keys = config.extract.attribute_keys
    teacher = TextTeacher.fit(catalog[catalog["split"] != "test"], keys)
    catalog = with_attributes(catalog, teacher.table(catalog))
    return config, build_eval_set(catalog, "val", keys, with_attributes=True)


def grocery_text_val(root: Path) -> tuple[object, EvalSet]:
    """Grocery's text queries of the val split (shop titles, see ``grocery_catalog``) against
    its 81 catalog items; the val photos are left out, hybrid ranks them by dense alone."""
    from afmrl.data import load_catalog

    config = load_config(None, ["data.catalog=grocery", f"data.root={root}"])
    catalog = load_catalog(config.data)
    catalog = catalog[(catalog["split"] != "val") | (catalog["image_uri"] == "")]
    return config, build_eval_set(catalog, "val", config.extract.attribute_keys,
                                  with_attributes=False)


def sweep(eval_set: EvalSet, model, base) -> list[dict]:
    """Recall@1 (and MRR) of every grid candidate on this set."""
    depth = ranking_depth(KS)
    dense, lexical = rank_dense(model, eval_set, depth), rank_lexical(eval_set, depth)
    rows = []
    for candidate in grid(base):
        scores, ids = fuse((dense[1], dense[0]), (lexical[1], lexical[0]), candidate, depth)
        metrics = score_ranking(eval_set, (ids, scores), KS)
        rows.append({**describe(candidate), "recall_at_1": metrics["recall_at_1"],
                     "mrr": metrics["mrr"]})
    return rows


def label(fusion: dict) -> str:
    if fusion["fusion"] == "convex":
        return f"convex alpha {fusion['alpha']:g}"
    if fusion["lexical_weight"] == 0:
        return "dense only"
    if fusion["dense_weight"] == 0:
        return "lexical only"
    return (f"rrf k {fusion['rrf_k']:g} dense {fusion['dense_weight']:g} / "
            f"lexical {fusion['lexical_weight']:g}")


def choose(sweeps: dict[str, list[dict]]) -> tuple[pd.DataFrame, int]:
    """Per-candidate R@1 on each set, regrets, and the position of the least worst-case
    regret (mean regret, then grid order, breaks ties)."""
    table = pd.DataFrame({"fusion": [label(r) for r in next(iter(sweeps.values()))]})
    for name, rows in sweeps.items():
        table[name] = [r["recall_at_1"] for r in rows]
    recalls = table[list(sweeps)].to_numpy()
    regret = recalls.max(axis=0) - recalls
    table["worst regret"], table["mean regret"] = regret.max(axis=1), regret.mean(axis=1)
    order = np.lexsort((np.arange(len(table)), table["mean regret"].round(6),
                        table["worst regret"].round(6)))
    return table, int(order[0])


def markdown(table: pd.DataFrame) -> str:
    cells = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
             for row in table.itertuples(index=False)]
    lines = [list(table.columns), ["---"] * len(table.columns), *cells]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=2000, help="PriceRunner clusters sampled")
    parser.add_argument("--embedder", action="append", default=[], type=Path,
                        help="a PriceRunner-trained embedder export (repeatable)")
    parser.add_argument("--grocery-embedder", action="append", default=[], type=Path,
                        help="a grocery-trained embedder export (repeatable)")
    parser.add_argument("--root", type=Path, default=DEFAULT_SHARED_DATA)
    parser.add_argument("--json", type=Path, help="write the sweeps and the choice here")
    args = parser.parse_args(argv)

    sweeps = {}
    for catalog, (config, eval_set), embedders in (
            ("pricerunner val", pricerunner_val(args.groups, args.root), args.embedder),
            ("grocery val text", grocery_text_val(args.root), args.grocery_embedder)):
        models = {"zero-shot": untrained_embedder(config, eval_set)}
        models.update({p.parent.name if p.name == "embedder" else p.name: load_embedder(p)
                       for p in embedders})
        for name, model in models.items():
            key = f"{catalog}, {name} ({len(eval_set)} q)"
            sweeps[key] = sweep(eval_set, model, config.retrieval)
            print(f"{key}: swept", file=sys.stderr, flush=True)

    table, best = choose(sweeps)
    print(markdown(table))
    print(f"\nchosen default: {table['fusion'][best]} "
          f"(worst regret {table['worst regret'][best]:.3f}, "
          f"mean {table['mean regret'][best]:.3f})")
    if args.json:
        chosen = {k: v for k, v in next(iter(sweeps.values()))[best].items()
                  if k in FUSION_FIELDS}
        atomic_write_json(args.json, {"chosen": chosen, "sweeps": sweeps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
