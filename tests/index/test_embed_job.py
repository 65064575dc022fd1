"""The catalog embedding job (Ray Data over an embedder actor pool): the shards hold exactly the
usable catalog rows with the vectors in-process embedding gives, and the manifest counts them."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from afmrl.config import load_config
from afmrl.index.embed_job import EMBEDDINGS_MANIFEST, embed_catalog, read_embedding_shard
from afmrl.models.embedders import build_embedder, embed, load_embedder, save_embedder
from afmrl.train.data import catalog_inputs


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    config = load_config(None, ["models.text_tower=tiny"])
    path = tmp_path_factory.mktemp("embedder") / "embedder"
    save_embedder(build_embedder(config.models, path.parent / "cache"), path)
    return path


def test_shards_hold_every_usable_catalog_row_with_its_vector(ray_local, embedder_dir,
                                                              tmp_path):
    rows = 300
    catalog = pd.DataFrame({
        "item_id": [f"item-{i}" for i in range(rows)], "group_id": np.arange(rows) // 3,
        "title": [f"product {i} in colour {i % 7}" for i in range(rows)],
        "split": ["train" if i % 10 == 0 else "catalog" for i in range(rows)],
        "attributes": [json.dumps({"colour": str(i % 7)}) for i in range(rows)]})
    catalog.loc[5, "title"] = ""  # no title, no image: unusable, reported in `error`
    path = tmp_path / "catalog.parquet"
    catalog.to_parquet(path)
    config = load_config(None, ["models.text_tower=tiny", "index.embed_batch_size=32",
                                "index.embed_max_actors=2"])

    out = embed_catalog(config, embedder_dir, path, tmp_path / "embeddings")

    manifest = json.loads((out / EMBEDDINGS_MANIFEST).read_text())
    parts = [read_embedding_shard(out / shard["file"]) for shard in manifest["shards"]]
    assert [len(ids) for _, ids in parts] == [shard["rows"] for shard in manifest["shards"]]
    vectors = np.concatenate([v for v, _ in parts])
    ids = np.concatenate([i for _, i in parts])
    wanted = catalog[(catalog["split"] == "catalog") & (catalog.index != 5)]
    assert sorted(ids) == sorted(wanted["item_id"]) and manifest["rows"] == len(wanted)
    assert manifest["dim"] == vectors.shape[1]
    expected = embed(load_embedder(embedder_dir),
                     catalog_inputs(wanted.assign(text="", image_uri="", coarse_group=""),
                                    config.extract.attribute_keys))
    order = {item: i for i, item in enumerate(wanted["item_id"])}
    np.testing.assert_allclose(vectors, expected[[order[i] for i in ids]], atol=1e-5)
