"""kill -9 anywhere (bench/kill_anywhere.py): the harness itself catches a writer that shows a
half-written file under its final name, and the index job, killed (driver or an embedding
actor) at a seeded moment and rerun, ends with the uninterrupted run's artefacts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import kill_anywhere  # noqa: E402

# A watcher thread that dies (as it did on a temporary folder vanishing mid-walk) stops
# watching: fail the test rather than pass it with a blind watcher.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")

# Writes 64 KiB to out/data.bin in two halves a moment apart, in place or via temp + rename.
WRITER = """
import os, sys, time
from pathlib import Path
out = Path(sys.argv[1]) / "out"
out.mkdir(exist_ok=True)
target = out / "data.bin"
path = target if sys.argv[2] == "in-place" else out / ".data.bin.tmp"
with open(path, "wb") as handle:
    handle.write(b"a" * 32768); handle.flush(); time.sleep(0.5)
    handle.write(b"b" * 32768)
if path != target:
    os.replace(path, target)
"""


def summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("mode, failed", [("in-place", 1), ("atomic", 0)])
def test_the_watcher_sees_a_half_written_final_file(tmp_path, capsys, mode, failed):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    status = kill_anywhere.main(["--artefacts", "out", "--points", "1", "--seed", "1",
                                 "--work", str(tmp_path / "work"), "--",
                                 sys.executable, str(script), "{run_dir}", mode])
    result = summary(capsys)
    assert (status, result["failed"]) == (failed, failed), result
    assert result["watcher_reads"] > 0


@pytest.mark.slow
def test_index_job_killed_anywhere_ends_with_the_uninterrupted_artefacts(shared_data, tmp_path,
                                                                        capsys):
    """One driver kill and one embedding-actor kill at seeded moments (the bench runs more):
    FAISS shards, manifests, items and lexical ids byte for byte; tantivy's segment files,
    named by random UUIDs, by what a search over every item title returns."""
    import pandas as pd

    from afmrl.config import load_config
    from afmrl.index.lexical import ShardedLexicalIndex
    from afmrl.models.embedders import build_embedder, save_embedder

    embedder = tmp_path / "embedder"
    save_embedder(build_embedder(load_config(None, ["models.text_tower=tiny"]).models,
                                 tmp_path / "cache"), embedder)
    work = tmp_path / "work"
    status = kill_anywhere.main([
        "--artefacts", "index", "--ignore", "index/lexical/shard-*/meta.json",
        "--ignore", "index/lexical/shard-*/[0-9a-f]*", "--points", "1",
        "--worker", "CatalogEmbedder", "--seed", "0", "--timeout", "600", "--work", str(work),
        "--", sys.executable, str(REPO / "jobs" / "build_index.py"), "--config",
        str(REPO / "configs" / "mini.yaml"), "--embedder", str(embedder), "run_dir={run_dir}",
        f"data.root={shared_data}", "models.text_tower=tiny", "index.num_shards=2"])
    result = summary(capsys)
    assert status == 0, result
    assert result["trials"] == 2 and result["killed"] == 2, result
    # two FAISS shards (index + ids each), their manifest, items, embedder.json, the lexical
    # manifest and ids of its two shards
    assert result["reference_files"] >= 9, result

    titles = pd.read_parquet(work / "reference" / "index" / "items.parquet")["title"].tolist()
    expected = ShardedLexicalIndex.load(work / "reference" / "index" / "lexical").search(titles,
                                                                                       10)
    for trial in ("driver-0", "CatalogEmbedder-0"):
        found = ShardedLexicalIndex.load(work / trial / "index" / "lexical").search(titles, 10)
        for want, got in zip(expected, found):
            assert (want == got).all(), trial
