"""The evaluator benchmark runs the real actor group and checks it against the in-process
scorer (it raises on disagreement), and exact search finds every hit numpy finds."""
import sys

from afmrl.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "bench"))
import bench_evaluator  # noqa: E402


def test_small_run_matches_the_numpy_baseline(ray_local, capsys):
    assert bench_evaluator.main(["--n", "2000", "--dim", "32", "--batches", "16,64",
                                 "--repeats", "1", "--k", "10"]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert [r[1].strip() for r in rows] == ["16", "64"]
    assert all(r[7].strip() == "100.0%" for r in rows)  # flat = exact: same hits as numpy
