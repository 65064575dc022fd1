"""The index benchmark's own measurements: exact search must score recall 1.0 against the
numpy baseline, tie-aware recall must not punish duplicates, and the table must print."""
import sys

import numpy as np

from afmrl.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import bench_index  # noqa: E402


def test_tie_aware_recall_counts_duplicates_as_hits():
    gallery = np.vstack([np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)[:1]])
    query = np.array([[1.0, 0.5, 0.1, 0.0]], dtype=np.float32)
    exact = bench_index.numpy_top_k(gallery, query, 2)
    assert bench_index.recall_vs_exact(np.array([[4, 0]]), gallery, query, exact) == 1.0
    assert bench_index.recall_vs_exact(np.array([[4, 1]]), gallery, query, exact) == 0.5
    assert bench_index.recall_vs_exact(np.array([[0, -1]]), gallery, query, exact) == 0.5


def test_small_run_prints_the_table_with_exact_recall(ray_local, capsys):
    assert bench_index.main(["--n", "3000", "--dim", "32", "--queries", "64", "--kinds",
                             "flat,ivf_flat", "--prefixes", "16", "--shards", "2",
                             "--repeats", "1", "-o", "index.nlist=16", "-o",
                             "index.nprobe=16"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line.split("|")[5].strip()
            for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert rows["flat (exact, all 32 dims)"] == "1.000"
    assert rows["ivf_flat"] == "1.000"  # nprobe = nlist: every list searched, exact
    assert float(rows["flat, Matryoshka prefix 16/32"]) < 1.0
    assert rows["flat, 2 Ray shard actors (0.5 CPU each)"] == "1.000"
    assert "ids agree in 100.00% of slots" in out
