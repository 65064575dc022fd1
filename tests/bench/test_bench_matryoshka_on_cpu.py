"""The Matryoshka benchmark's measurement: the full dimension is its own reference and scores
what the evaluation protocol scores; a short prefix really is searched with fewer dimensions."""
import sys

import numpy as np
import pandas as pd

from afmrl.config import REPO_ROOT, load_config
from afmrl.data.schema import validate_catalog
from afmrl.eval.protocol import build_eval_set, evaluate_model
from afmrl.models.embedders import build_embedder

sys.path.insert(0, str(REPO_ROOT / "bench"))
import bench_matryoshka  # noqa: E402


def test_prefix_rows_measure_each_prefix_against_the_full_dimension(tmp_path):
    config = load_config(None, ["models.text_tower=tiny"])
    model = build_embedder(config.models, tmp_path / "cache")
    rows = [(f"g{i}", i, f"product {i} shade {i % 5} size {i % 3}", "catalog") for i in range(60)]
    rows += [(f"t{i}", i, f"shade {i % 5} product {i}", "test") for i in range(60)]
    catalog = validate_catalog(pd.DataFrame(rows, columns=["item_id", "group_id", "title",
                                                           "split"]), check_images=False)
    test = build_eval_set(catalog, "test", ("category",), with_attributes=False)
    full = config.models.embed_dim

    by_dim = {row["dim"]: row for row in bench_matryoshka.prefix_rows(model, test, [4, full],
                                                                      [1, 10])}
    assert by_dim[full]["vs_exact"] == 1.0
    expected = evaluate_model(model, test, [1, 10])
    assert np.isclose(by_dim[full]["recall_at_1"], expected["recall_at_1"])
    assert by_dim[4]["vs_exact"] < 0.9
