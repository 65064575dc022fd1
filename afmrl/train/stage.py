"""Stage 1 as a unit: catalog + attributes -> training pairs and the val benchmark -> AGCL run."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from afmrl.config import AfmrlConfig, replace
from afmrl.data import load_catalog
from afmrl.eval.protocol import EvalSet, build_eval_set
from afmrl.extract.stage import with_attributes
from afmrl.train.data import bm25_corpus, training_pairs
from afmrl.train.trainer import SELECTION_BENCHMARK, TrainResult, train_agcl

log = logging.getLogger("afmrl")


def selection_benchmarks(catalog: pd.DataFrame, keys, with_query_attributes: bool
                         ) -> dict[str, EvalSet]:
    """The benchmarks training may read: the ``val`` split only (none when it has no queries)."""
    try:
        return {SELECTION_BENCHMARK: build_eval_set(catalog, SELECTION_BENCHMARK, keys,
                                                    with_query_attributes)}
    except ValueError as error:
        log.info("no validation benchmark (%s): AGCL keeps its last checkpoint", error)
        return {}


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
    pairs = training_pairs(catalog, keys, with_query_attributes, config.train.pair_splits,
                           config.seed)
    benchmarks = selection_benchmarks(catalog, keys, with_query_attributes)
    return train_agcl(config, tag, pairs, benchmarks, bm25_corpus(catalog, keys), tracker,
                      init_from)
