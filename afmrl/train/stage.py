"""Stage 1 as a unit: catalog + attributes -> training pairs and benchmarks -> AGCL run."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from afmrl.config import AfmrlConfig, replace
from afmrl.data import load_catalog, pricerunner_catalog
from afmrl.extract.schema import attribute_text
from afmrl.extract.stage import with_attributes
from afmrl.train.data import (RetrievalSet, grocery_benchmark, grocery_pairs,
                              leave_one_out_benchmark, text_pairs)
from afmrl.train.trainer import TrainResult, train_agcl

log = logging.getLogger("afmrl")

Benchmarks = dict[str, tuple[RetrievalSet, np.ndarray | None]]


def benchmarks_for(config: AfmrlConfig, catalog: pd.DataFrame,
                   with_attributes: bool) -> Benchmarks:
    """The benchmarks logged during training: grocery photos and PriceRunner titles."""
    keys = config.extract.attribute_keys
    out: Benchmarks = {}
    if config.data.catalog == "grocery":
        out["grocery"] = (grocery_benchmark(catalog, keys, with_attributes), None)
    if config.eval.pricerunner_clusters != 0:
        try:
            offers = pricerunner_catalog(config.data.root)
        except ValueError as error:  # data set absent on this machine: say so, go on
            log.warning("pricerunner benchmark skipped: %s", error)
        else:
            out["pricerunner"] = leave_one_out_benchmark(offers, config.eval.pricerunner_clusters,
                                                         config.seed)
    return out


def ablation_config(config: AfmrlConfig, variant: str) -> AfmrlConfig:
    """'infonce' (plain), 'weights' (+ BM25 attribute weights), 'agcl' (+ false-negative filter)."""
    switches = {"infonce": (False, False), "weights": (True, False), "agcl": (True, True)}
    if variant not in switches:
        raise ValueError(f"unknown AGCL variant {variant!r}; choose from {sorted(switches)}")
    weights, filtering = switches[variant]
    return replace(config, train=replace(config.train, attribute_weights=weights,
                                         false_negative_filter=filtering))


def run_agcl(config: AfmrlConfig, attributes: pd.DataFrame | None, tag: str, tracker=None,
             catalog: pd.DataFrame | None = None, init_from: Path | None = None) -> TrainResult:
    """Train AGCL on the configured catalog labelled with ``attributes`` (an extraction table)."""
    catalog = load_catalog(config.data) if catalog is None else catalog
    if attributes is not None:
        catalog = with_attributes(catalog, attributes)
    keys = config.extract.attribute_keys
    with_query_attributes = config.train.query_attributes and attributes is not None
    if config.data.catalog == "grocery":
        pairs = grocery_pairs(catalog, keys, with_query_attributes, config.train.pair_splits)
    else:
        pairs = text_pairs(catalog, keys, config.seed)
    corpus = [attribute_text(a, keys) for a in catalog["attributes"]]
    corpus = [t for t in corpus if t] or [""]
    benchmarks = benchmarks_for(config, catalog, with_query_attributes)
    if tracker is not None and "pricerunner" in benchmarks:
        from afmrl.train.evaluation import prefixed, tfidf_baseline

        benchmark, positions = benchmarks["pricerunner"]
        tracker.log_metrics(prefixed(tfidf_baseline(benchmark, positions, config.eval.ks),
                                     "pricerunner_tfidf"))
    return train_agcl(config, tag, pairs, benchmarks, corpus, tracker, init_from)
