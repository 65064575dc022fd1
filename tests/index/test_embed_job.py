"""The catalog embedding job (Ray Data over an embedder actor pool): the shards hold exactly the
usable catalog rows with the vectors in-process embedding gives, the manifest counts them, and
index shard actors build the sharded index from them."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest

from afmrl.config import IndexConfig, RayConfig, load_config
from afmrl.index.embed_job import (EMBEDDINGS_MANIFEST, embed_catalog, embed_rows,
                                   embeddings_in_order, read_embedding_shard)
from afmrl.index.faiss_index import VectorIndex, as_ids
from afmrl.index.sharded import ShardedIndex, files_per_shard, shard_of
from afmrl.models.embedders import build_embedder, embed, load_embedder, save_embedder
from afmrl.train.data import catalog_inputs
from afmrl.utils.ray_utils import RemoteCallTimeout


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    config = load_config(None, ["models.text_tower=tiny"])
    path = tmp_path_factory.mktemp("embedder") / "embedder"
    save_embedder(build_embedder(config.models, path.parent / "cache"), path)
    return path


def embed_sample(embedder_dir, tmp_path, rows: int = 300):
    """A catalog with an unusable row and non-catalog rows, embedded by the job."""
    catalog = pd.DataFrame({
        "item_id": [f"item-{i}" for i in range(rows)], "group_id": np.arange(rows) // 3,
        "title": [f"product {i} in colour {i % 7}" for i in range(rows)],
        "split": ["train" if i % 10 == 0 else "catalog" for i in range(rows)],
        "attributes": [json.dumps({"colour": str(i % 7)}) for i in range(rows)]})
    catalog.loc[5, "title"] = ""  # no title, no image: unusable, reported in `error`
    path = tmp_path / "catalog.parquet"
    catalog.to_parquet(path)
    config = load_config(None, ["models.text_tower=tiny", "index.embed_batch_size=32",
                                "index.embed_max_actors=2", "index.num_shards=3"])
    return catalog, config, embed_catalog(config, embedder_dir, path, tmp_path / "embeddings")


def read_all(out):
    manifest = json.loads((out / EMBEDDINGS_MANIFEST).read_text())
    parts = [read_embedding_shard(out / shard["file"]) for shard in manifest["shards"]]
    return manifest, parts


def test_shards_hold_every_usable_catalog_row_with_its_vector(ray_local, embedder_dir,
                                                              tmp_path):
    catalog, config, out = embed_sample(embedder_dir, tmp_path)

    manifest, parts = read_all(out)
    assert [len(ids) for _, ids in parts] == [shard["rows"] for shard in manifest["shards"]]
    # split by index shard: each file holds only rows its index shard owns, all shards present
    assert manifest["num_shards"] == 3
    assert {shard["index_shard"] for shard in manifest["shards"]} == {0, 1, 2}
    for shard, (_, ids) in zip(manifest["shards"], parts):
        assert set(shard_of(as_ids(ids), 3)) == {shard["index_shard"]}
    # so each of 3 index shards reads only its files; another shard count reads them all
    own = files_per_shard(manifest, out, 3)
    assert sorted(sum(own.values(), [])) == sorted(str(out / s["file"])
                                                  for s in manifest["shards"])
    assert all(path.startswith(str(out / f"shard={i}")) for i in own for path in own[i])
    assert all(len(files) == len(manifest["shards"])
               for files in files_per_shard(manifest, out, 2).values())
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


def test_a_catalog_read_as_one_block_is_embedded_in_blocks_of_block_rows(
        ray_local, embedder_dir, tmp_path, monkeypatch):
    """A Parquet file of one row group is read as one block. Cut before the actor pool, it
    reaches the actors in blocks of BLOCK_ROWS: each is written as soon as it is embedded (so
    the stall deadline sees progress) and the blocks spread over the pool."""
    from afmrl.index import embed_job

    monkeypatch.setattr(embed_job, "BLOCK_ROWS", 64)  # the cut, at a test's size
    BLOCK_ROWS = embed_job.BLOCK_ROWS
    rows = 2 * BLOCK_ROWS + 10
    catalog = pd.DataFrame({"item_id": [f"i{i}" for i in range(rows)], "group_id": range(rows),
                            "title": [f"item {i}" for i in range(rows)]})
    path = tmp_path / "one_block.parquet"
    catalog.to_parquet(path, row_group_size=rows)
    config = load_config(None, ["models.text_tower=tiny", "index.embed_max_actors=2",
                                "index.num_shards=1"])
    manifest, _ = read_all(embed_catalog(config, embedder_dir, path, tmp_path / "out"))
    assert manifest["rows"] == rows
    assert len(manifest["shards"]) >= 3 and max(s["rows"] for s in manifest["shards"]) \
        <= BLOCK_ROWS, manifest["shards"]


def test_shard_actors_build_the_index_from_the_embedding_files(ray_local, embedder_dir,
                                                               tmp_path):
    """Each shard actor reads the files and keeps its own rows: together they hold every row
    once, and the sharded search is the exact search over all the vectors."""
    _, config, out = embed_sample(embedder_dir, tmp_path)
    manifest, parts = read_all(out)
    vectors = np.concatenate([v for v, _ in parts])
    ids = np.concatenate([i for _, i in parts])
    ray_config = RayConfig(namespace="afmrl-test-embed-job", call_timeout_s=60.0)

    reference = VectorIndex.build(vectors, ids, IndexConfig(kind="flat"), "m")
    expected_scores, expected_ids = reference.search(vectors[:25], 10)
    # 3 shards: each actor reads only the files split for it; 2: every actor reads all files
    for num_shards in (3, 2):
        index = ShardedIndex.build_from_embeddings(
            out, IndexConfig(kind="flat", num_shards=num_shards), manifest["model_hash"],
            ray_config)
        try:
            assert len(index) == manifest["rows"]
            scores, found = index.search(vectors[:25], 10)
            np.testing.assert_array_equal(found, expected_ids)
            np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
        finally:
            index.shutdown()
    with pytest.raises(ValueError, match="rerun the embedding job"):
        ShardedIndex.build_from_embeddings(out, IndexConfig(kind="flat"), "another-model",
                                           ray_config)


@pytest.mark.timeout(120)
def test_a_stalled_embedding_job_stops_at_the_call_deadline_and_writes_nothing(
        ray_local, embedder_dir, tmp_path):
    import ray.data

    def stuck_read(rows: pd.DataFrame) -> pd.DataFrame:
        """A read that hangs, like one on a dead storage mount (bounded, so a job that ignored
        its deadline still frees the CPU before the next test). Nested: Ray ships it by value."""
        time.sleep(45)
        return rows

    config = load_config(None, ["models.text_tower=tiny", "ray.call_timeout_s=4"])
    rows = pd.DataFrame({"item_id": ["a", "b"], "group_id": ["1", "2"], "title": ["x", "y"],
                         "text": "", "image_uri": "", "coarse_group": "",
                         "attributes": "{}"})
    stuck = ray.data.from_pandas(rows).map_batches(stuck_read, batch_format="pandas")

    started = time.monotonic()
    with pytest.raises(RemoteCallTimeout, match=r"no block moved for 4s \(ray.call_timeout_s\)"):
        embed_rows(config, embedder_dir, stuck, tmp_path / "embeddings", {})
    assert time.monotonic() - started < 40
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(120)
def test_a_job_whose_free_cpus_other_actors_hold_warns_and_its_timeout_says_so(
        ray_local, embedder_dir, tmp_path, caplog):
    """Other work holds all but half a CPU: the embedder actor (0.5 CPU) fits, the read task
    (1 CPU) never does. The pre-flight passes (it checks totals); the warning at the start and
    the stall error name what is free, not only "stuck"."""
    import ray

    @ray.remote
    class CpuHolder:
        def ready(self) -> bool:
            return True

    # from_pandas runs a task at once: before the CPUs are taken
    rows = ray.data.from_pandas(pd.DataFrame({
        "item_id": ["a", "b"], "group_id": ["1", "2"], "title": ["x", "y"], "text": "",
        "image_uri": "", "coarse_group": "", "attributes": "{}"}))
    holder = CpuHolder.options(num_cpus=ray.cluster_resources()["CPU"] - 0.5).remote()
    try:
        ray.get(holder.ready.remote(), timeout=60)  # placed once earlier work let go of its CPUs
        deadline = time.monotonic() + 30  # Ray's view of free resources lags by a moment
        while ray.available_resources().get("CPU", 0.0) > 0.5 and time.monotonic() < deadline:
            time.sleep(0.2)
        config = load_config(None, ["models.text_tower=tiny", "ray.call_timeout_s=4"])
        caplog.set_level("WARNING", logger="afmrl")
        # by the time of the error, the figures may lag what the stopped job released
        with pytest.raises(RemoteCallTimeout, match=r"When it stopped, it needs 1\.5 CPU free "
                                                    r"and the cluster has [\d.]+ CPU free"):
            embed_rows(config, embedder_dir, rows, tmp_path / "embeddings", {})
    finally:
        ray.kill(holder)
    warned = [m for m in caplog.messages if m.startswith("embedding job may wait")]
    assert len(warned) == 1 and warned[0].startswith(
        "embedding job may wait: it needs 1.5 CPU free and the cluster has 0.5 CPU free"), warned
    assert list(tmp_path.iterdir()) == []


def test_embeddings_come_back_in_the_asked_order_from_any_shard_layout(tmp_path):
    """The job's shards hold rows in shard order; the reader puts each vector at its id's place
    and names ids that have none (no Ray: the files as the job writes them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = {f"id-{i}": np.full(3, i, dtype=np.float32) for i in range(5)}
    layout = {"shard=0/a.parquet": ["id-3", "id-0"], "shard=1/b.parquet": ["id-4", "id-1", "id-2"],
              "shard=2/c.parquet": []}
    for name, ids in layout.items():
        (tmp_path / name).parent.mkdir()
        pq.write_table(pa.table({"item_id": pa.array(ids, pa.string()), "embedding": pa.array(
            [vectors[i].tolist() for i in ids], pa.list_(pa.float32()))}), tmp_path / name)
    (tmp_path / EMBEDDINGS_MANIFEST).write_text(json.dumps({"rows": 5, "dim": 3, "shards": [
        {"file": name, "rows": len(ids)} for name, ids in layout.items()]}))

    asked = ["id-2", "id-0", "id-4", "id-1", "id-3"]
    np.testing.assert_array_equal(embeddings_in_order(tmp_path, asked),
                                  np.stack([vectors[i] for i in asked]))
    with pytest.raises(ValueError, match=r"2 of 3 item ids have no embedding"):
        embeddings_in_order(tmp_path, ["id-1", "id-9", "id-8"])
