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


# Writes out/data.bin (temp + rename), then works 4 s on its first two runs (the warm-up and
# the reference) and 1 s on every later one: a trial faster than the reference.
SPEEDING_UP = """
import os, sys, time
from pathlib import Path
runs = Path(sys.argv[2])
done = int(runs.read_text()) if runs.is_file() else 0
runs.write_text(str(done + 1))
out = Path(sys.argv[1]) / "out"
out.mkdir(exist_ok=True)
(out / ".data.tmp").write_bytes(b"x" * 1024)
os.replace(out / ".data.tmp", out / "data.bin")
time.sleep(4.0 if done < 2 else 1.0)
"""


def test_a_trial_that_ends_before_its_moment_is_aimed_again(tmp_path, capsys):
    """Seed 0 draws 81% of the 4 s reference; the 1 s trial has ended by then (the index job's
    kill test missed its driver kill so in CI): the harness re-aims within the trial's length
    and the kill lands."""
    script = tmp_path / "speeding_up.py"
    script.write_text(SPEEDING_UP)
    status = kill_anywhere.main(["--artefacts", "out", "--points", "1", "--seed", "0",
                                 "--work", str(tmp_path / "work"), "--", sys.executable,
                                 str(script), "{run_dir}", str(tmp_path / "runs")])
    result = summary(capsys)
    assert status == 0, result
    assert (result["trials"], result["killed"], result["reruns"]) == (1, 1, 1), result


# A later stage: reads in/seed.txt from its run folder (an earlier stage's output), fails
# without it, and writes it on as out/data.bin after a second's work.
LATER_STAGE = """
import os, sys, time
from pathlib import Path
run = Path(sys.argv[1])
seed = (run / "in" / "seed.txt").read_bytes()
time.sleep(1.0)
(run / "out").mkdir(exist_ok=True)
(run / "out" / ".data.tmp").write_bytes(seed * 100)
os.replace(run / "out" / ".data.tmp", run / "out" / "data.bin")
"""


def test_inputs_are_copied_into_every_run_folder(tmp_path, capsys):
    """RAR reads the earlier stages' outputs from its run folder: ``--inputs`` gives every run
    (warm-up, reference, each trial and its reruns) a fresh copy of them. An artefact the
    inputs already hold (a results table the job rewrites whole) is not a half-written file."""
    script = tmp_path / "later_stage.py"
    script.write_text(LATER_STAGE)
    inputs = tmp_path / "inputs"
    (inputs / "in").mkdir(parents=True)
    (inputs / "in" / "seed.txt").write_bytes(b"seed")
    (inputs / "out").mkdir()
    (inputs / "out" / "data.bin").write_bytes(b"an earlier stage's version")
    status = kill_anywhere.main(["--artefacts", "out", "--points", "1", "--seed", "0",
                                 "--inputs", str(inputs), "--work", str(tmp_path / "work"),
                                 "--", sys.executable, str(script), "{run_dir}"])
    result = summary(capsys)
    assert status == 0, result
    assert (result["trials"], result["killed"], result["failed"]) == (1, 1, 0), result
    assert (tmp_path / "work" / "driver-0" / "out" / "data.bin").read_bytes() == b"seed" * 100


# Starts (2 s), writes a marker (its first checkpoint, say), works 2 s more and writes
# out/data.bin; notes each phase in a journal outside the run folder.
MARKED = """
import os, sys, time
from pathlib import Path
run, journal = Path(sys.argv[1]), Path(sys.argv[2])
def note(word):
    with open(journal, "a") as handle:
        handle.write(word + "\\n")
note("start")
time.sleep(2.0)
(run / "marker").write_text("x")
note("marker")
time.sleep(2.0)
(run / "out").mkdir(exist_ok=True)
(run / "out" / ".data.tmp").write_bytes(b"y" * 1024)
os.replace(run / "out" / ".data.tmp", run / "out" / "data.bin")
note("end")
"""


def test_after_aims_the_kill_past_the_marker_file(tmp_path, capsys):
    """``--after marker``: the moment (seed 0: 81% of the 2 s after the marker) counts from the
    marker's appearance, so the killed run had written it and not finished; counted from the
    start, the kill would land before the marker (at about 1.6 s of 4)."""
    script, journal = tmp_path / "marked.py", tmp_path / "journal"
    script.write_text(MARKED)
    status = kill_anywhere.main(["--artefacts", "out", "--points", "1", "--seed", "0",
                                 "--after", "marker", "--work", str(tmp_path / "work"), "--",
                                 sys.executable, str(script), "{run_dir}", str(journal)])
    result = summary(capsys)
    assert status == 0, result
    assert (result["trials"], result["killed"], result["reruns"]) == (1, 1, 1), result
    runs = " ".join(journal.read_text().split()).split("start")[1:]
    # warm-up, reference, the killed run (marker written, not ended), its rerun
    assert [run.split() for run in runs] == [["marker", "end"]] * 2 + [["marker"],
                                                                      ["marker", "end"]]


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
