"""AGCL ablation, honestly measured: the same model, data and budget with
plain InfoNCE, + BM25 attribute weights, and + false-negative filtering (= AGCL), the weighted
variants with both positive weights (w_ii = exp(1 + tanh(BM25_ii)) as in the paper, and w_ii = 1),
each over several training seeds (mean +- sample std).

  .venv/bin/python bench/ablation_agcl.py --config configs/mini.yaml --seeds 0,1,2

Uses the attributes of a finished extraction (``<run_dir>/extract/sft``, e.g. from
`make demo` or `afmrl extract`); each variant and seed trains under
``<run_dir>/train/<variant>-<positive weight>-s<seed>`` (reused, not retrained, when it exists).
Prints the test-split metrics per variant, overall and within coarse groups.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afmrl.utils.job import parse, parser  # noqa: E402

# (variant, positive weight): plain InfoNCE has no weights, so its positive weight is moot.
VARIANTS = (("infonce", "one"), ("weights", "one"), ("weights", "bm25"), ("agcl", "one"),
            ("agcl", "bm25"))
NAMES = {("infonce", "one"): "plain InfoNCE",
         ("weights", "one"): "+ BM25 weights on negatives (w_ii = 1)",
         ("weights", "bm25"): "+ BM25 weights, paper w_ii",
         ("agcl", "one"): "+ false-negative filter (w_ii = 1)",
         ("agcl", "bm25"): "+ false-negative filter, paper w_ii (AGCL)"}
COLUMNS = (("recall_at_1", "R@1"), ("recall_at_5", "R@5"), ("map_at_10", "mAP@10"),
           ("within_group/recall_at_1", "within-group R@1"))


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--seeds", default="0,1,2", help="training seeds, comma-separated")
    config, args = parse(argv, __doc__, p)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    from afmrl.config import replace
    from afmrl.data import load_catalog
    from afmrl.eval.protocol import build_eval_set, evaluate_model
    from afmrl.extract.stage import load_attributes, with_attributes
    from afmrl.layout import RunLayout
    from afmrl.models.embedders import load_embedder
    from afmrl.train.stage import ablation_config, run_agcl
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    layout = RunLayout.of(config)
    attributes = load_attributes(layout.attributes("sft"))
    catalog = load_catalog(config.data)
    test = build_eval_set(with_attributes(catalog, attributes), "test",
                          config.extract.attribute_keys, config.train.query_attributes)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for variant, positive in VARIANTS:
        for seed in seeds:
            base = ablation_config(config, variant)
            run = replace(base, train=replace(base.train, positive_weight=positive, seed=seed))
            result = run_agcl(run, attributes, f"{variant}-{positive}-s{seed}", None, catalog)
            results.setdefault((variant, positive), []).append(
                evaluate_model(load_embedder(result.embedder), test, config.eval.ks))
    train = config.train
    print(f"\nAGCL ablation on {len(test.queries)} test "
          f"queries: {train.epochs} epochs, effective batch {train.effective_batch_size}, lr "
          f"{train.lr}, tau {train.temperature}, margin {train.false_negative_margin}, seeds "
          f"{seeds} (mean ± sample std)\n")
    print("| variant | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for key, runs in results.items():
        cells = [mean_std([m[metric] for m in runs]) if metric in runs[0] else "n/a"
                 for metric, _ in COLUMNS]
        print(f"| {NAMES[key]} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
