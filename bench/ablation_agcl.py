"""AGCL ablation, honestly measured: the same model, data and budget with
plain InfoNCE, + BM25 attribute weights, and + false-negative filtering (= AGCL).

  .venv/bin/python bench/ablation_agcl.py --config configs/local.yaml

Uses the attributes of a finished extraction (``<run_dir>/extract/sft``, e.g. from
`make demo` or `afmrl extract`); each variant trains under ``<run_dir>/train/<variant>`` (a
variant the pipeline already trained with the same config is reused, not retrained). Prints the
grocery test-photo metrics per variant, overall and within coarse groups, plus PriceRunner.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from afmrl.utils.job import parse  # noqa: E402

VARIANTS = ("infonce", "weights", "agcl")


def main(argv: list[str] | None = None) -> int:
    config, _ = parse(argv, __doc__)
    from afmrl.data import load_catalog
    from afmrl.extract.stage import load_attributes, with_attributes
    from afmrl.layout import RunLayout
    from afmrl.models.embedders import load_embedder
    from afmrl.eval.protocol import build_eval_set, evaluate_model
    from afmrl.train.stage import ablation_config, run_agcl
    from afmrl.utils.ray_utils import init_ray

    init_ray(config.ray)
    layout = RunLayout.of(config)
    attributes = load_attributes(layout.attributes("sft"))
    catalog = load_catalog(config.data)
    labelled = with_attributes(catalog, attributes)
    benchmarks = {"grocery": build_eval_set(labelled, "test", config.extract.attribute_keys,
                                            config.train.query_attributes)}
    rows = []
    for variant in VARIANTS:
        result = run_agcl(ablation_config(config, variant), attributes, variant, None, catalog)
        model = load_embedder(result.embedder)
        metrics = {}
        for name, benchmark in benchmarks.items():
            metrics.update({f"{name}/{k}": v for k, v in evaluate_model(
                model, benchmark, config.eval.ks).items()})
        rows.append((variant, metrics))
    print(f"\nAGCL ablation: {config.train.epochs} epochs, effective batch "
          f"{config.train.effective_batch_size}, lr {config.train.lr}, tau "
          f"{config.train.temperature}, margin {config.train.false_negative_margin}\n")
    print("| variant | grocery R@1 | R@5 | R@10 | mAP@10 | within-group R@1 | pricerunner R@1 |")
    print("|---|---|---|---|---|---|---|")
    names = {"infonce": "plain InfoNCE", "weights": "+ BM25 attribute weights",
             "agcl": "+ false-negative filtering (AGCL)"}
    for variant, m in rows:
        print(f"| {names[variant]} | {m.get('grocery/recall_at_1', float('nan')):.3f} | "
              f"{m.get('grocery/recall_at_5', float('nan')):.3f} | "
              f"{m.get('grocery/recall_at_10', float('nan')):.3f} | "
              f"{m.get('grocery/map_at_10', float('nan')):.3f} | "
              f"{m.get('grocery/within_group/recall_at_1', float('nan')):.3f} | "
              f"{m.get('pricerunner/recall_at_1', float('nan')):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
