"""Distributed extraction on real Ray Data + vLLM (CPU): output, resume, bad rows, a killed
actor, and proof that the image reaches the model."""
import os
import re
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from afmrl.config import load_config
from afmrl.data.images import load_image
from afmrl.extract.runner import run_extraction
from afmrl.utils.io import fingerprint_tree


@pytest.fixture(scope="module")
def extract_config():
    # Budget for the worst case: 8 keys x 48-char values, ~1 token per char for a random model.
    return load_config(None, ["extract.batch_size=4", "extract.max_tokens=512",
                              "extract.cpus_per_actor=1"])


def _rows(catalog, n):
    return catalog[catalog["split"] == "catalog"].head(n).reset_index(drop=True)


def test_extract_writes_parsed_attributes_and_resumes(ray_local, mini_catalog, tiny_generator,
                                                      extract_config, tmp_path):
    rows = _rows(mini_catalog, 6)
    model_id = fingerprint_tree(tiny_generator)
    first = run_extraction(rows, tiny_generator, model_id, extract_config.extract,
                           extract_config.ray, tmp_path, 224)
    assert list(first.table["item_id"]) == list(rows["item_id"])
    assert (first.table["parse_error"] == "").all()  # grammar-constrained JSON always parses
    assert first.metrics["rows_new"] == 6 and first.metrics["tokens_per_s"] > 0
    assert pd.read_parquet(first.path)["item_id"].tolist() == list(rows["item_id"])
    again = run_extraction(rows, tiny_generator, model_id, extract_config.extract,
                           extract_config.ray, tmp_path, 224)
    assert again.metrics["rows_new"] == 0
    assert again.table["raw_output"].tolist() == first.table["raw_output"].tolist()


def test_bad_rows_are_kept_and_counted(ray_local, mini_catalog, tiny_generator, extract_config,
                                       tmp_path):
    rows = _rows(mini_catalog, 2).copy()
    rows.loc[1, "error"] = "not a readable image (test)"
    result = run_extraction(rows, tiny_generator, "m", extract_config.extract,
                            extract_config.ray, tmp_path, 224)
    assert len(result.table) == 2
    assert result.table["input_error"].tolist() == ["", "not a readable image (test)"]
    assert result.metrics["input_errors"] == 1


@pytest.mark.timeout(120)
def test_extraction_on_a_cluster_whose_cpus_other_actors_hold_stops_at_the_deadline(
        ray_local, mini_catalog, tiny_generator, tmp_path, caplog):
    """Other work holds every CPU: the job must not wait forever (building the dataset ran a
    task that did), but warn at once and stop at ray.call_timeout_s, saying what is free."""
    import ray

    from afmrl.utils.ray_utils import RemoteCallTimeout

    @ray.remote
    class CpuHolder:
        def ready(self) -> bool:
            return True

    config = load_config(None, ["extract.batch_size=4", "extract.cpus_per_actor=1",
                                "ray.call_timeout_s=4"])
    holder = CpuHolder.options(num_cpus=ray.cluster_resources()["CPU"]).remote()
    try:
        ray.get(holder.ready.remote(), timeout=60)  # placed once earlier work let go of its CPUs
        deadline = time.monotonic() + 30  # Ray's view of free resources lags by a moment
        while ray.available_resources().get("CPU", 0.0) > 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        caplog.set_level("WARNING", logger="afmrl")
        with pytest.raises(RemoteCallTimeout, match=r"extraction: no block moved for 4s"):
            run_extraction(_rows(mini_catalog, 2), tiny_generator, "m", config.extract,
                           config.ray, tmp_path, 64)
    finally:
        ray.kill(holder)
    warned = [m for m in caplog.messages if m.startswith("extraction may wait")]
    assert len(warned) == 1 and re.match(r"extraction may wait: it needs 2 CPU, [\d.]+ GiB memory "
                                         r"free and the cluster has 0 CPU", warned[0]), warned
    assert not list((tmp_path / "parts").iterdir())
    assert not (tmp_path / "attributes.parquet").exists()


def _extractor_pids() -> list[int]:
    """Pids of this test's own extraction actors: the live actors of this driver's Ray job, from
    Ray's actor table (the GCS; the state API would need the dashboard, which the test cluster
    does not run), whose process is the AttributeExtractor map worker and past its __init__.
    Processes of other jobs, clusters or users with the same title are never touched."""
    import ray
    from ray._private.state import actors

    job = ray.JobID.from_hex(ray.get_runtime_context().get_job_id())
    pids = []
    for info in actors(job_id=job, actor_state_name="ALIVE").values():
        try:
            title = Path(f"/proc/{info['Pid']}/cmdline").read_bytes().decode(errors="ignore")
        except OSError:
            continue
        if "AttributeExtractor" in title and "__init__" not in title:
            pids.append(int(info["Pid"]))
    return pids


def test_killed_actor_loses_no_finished_output(ray_local, mini_catalog, tiny_generator,
                                               extract_config, tmp_path):
    rows = _rows(mini_catalog, 16)  # 4 batches: the kill lands while work remains
    parts = tmp_path / "parts"
    killed = []

    def kill_after_first_part():
        deadline = time.time() + 600
        while time.time() < deadline:
            first = sorted(parts.glob("part-*.parquet"))
            pids = _extractor_pids()
            if first and pids:
                killed.append((first[0], first[0].stat().st_mtime_ns))
                os.kill(pids[0], signal.SIGKILL)
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_after_first_part)
    killer.start()
    result = run_extraction(rows, tiny_generator, "m", extract_config.extract,
                            extract_config.ray, tmp_path, 224)
    killer.join()
    assert killed, "the actor was never killed: the test proved nothing"
    part, mtime = killed[0]
    assert part.stat().st_mtime_ns == mtime  # finished output survived, never regenerated
    assert sorted(result.table["item_id"]) == sorted(rows["item_id"])
    assert result.table["resume_key"].is_unique


def test_the_image_reaches_the_model(mini_catalog, tiny_generator, extract_config, tmp_path):
    """Same prompt, different photos -> different next-token distributions, in transformers and
    in vLLM (greedy text of a random model can be identical; its logits cannot)."""
    import torch
    from vllm import SamplingParams

    from afmrl.extract.engines import TransformersEngine, VllmEngine

    photos = mini_catalog[mini_catalog["split"] == "catalog"]["image_uri"].head(2).tolist()
    images = [load_image(p, 224) for p in photos]
    hf = TransformersEngine(tiny_generator, 12, 0.0, 224)
    prompt = hf.prompter.chat("List the attributes.", with_image=True)
    with torch.no_grad():
        logits = [hf.model(**hf.prompter.model_inputs([prompt], [image])).logits[0, -1]
                  for image in images]
    assert not torch.allclose(logits[0], logits[1], atol=1e-4)

    engine = VllmEngine(tiny_generator, extract_config.extract, 224, tmp_path / "cache")
    params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=5)
    outputs = engine.llm.generate([engine.prompter.vllm_request("List the attributes.", image)
                                   for image in images], params, use_tqdm=False)
    first = [{t: round(lp.logprob, 4) for t, lp in o.outputs[0].logprobs[0].items()}
             for o in outputs]
    assert first[0] != first[1]
