"""The RAR reward's gallery embedded by the Ray Data embedding job (``eval.embed_job_min_rows``).

A module of its own: the job needs free CPUs for its read tasks, and the reward of
``test_reward_on_cpu`` holds the test cluster's while its module runs (as the GRPO workers
would; ``grpo.train`` starts the reward, and so the job, before them)."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.config import replace
from afmrl.extract.stage import attributes_by_item
from afmrl.rl.reward import RecallReward

pytestmark = pytest.mark.usefixtures("ray_local")


def test_a_large_reward_gallery_is_embedded_by_the_job_with_the_same_rewards(
        tmp_path, rl_config, catalog, attributes_table, embedder_dir, perfect_answers, caplog):
    """From ``eval.embed_job_min_rows`` rows the gallery goes through the embedding job instead
    of the reward's one embedder actor: every reward and rank stays as it was."""
    config = rl_config(tmp_path)
    attributes = attributes_by_item(attributes_table)
    queries, answers = perfect_answers
    gallery = catalog[catalog["split"] == "catalog"]
    uris, products = queries["image_uri"].tolist(), queries["group_id"].tolist()
    caplog.set_level("INFO", logger="afmrl")
    scored = {}
    for min_rows in (0, len(gallery) + 1):
        caplog.clear()
        reward = RecallReward.start(replace(config, eval=replace(
            config.eval, embed_job_min_rows=min_rows)), embedder_dir, catalog, attributes,
            name=f"test-reward-{min_rows}")
        try:
            jobs = sum(m.startswith("embed job:") for m in caplog.messages)
            assert jobs == (1 if min_rows == 0 else 0)
            scored[min_rows] = [reward.score(texts, uris, products)
                                for texts in (answers, answers[7:] + answers[:7])]
        finally:
            reward.shutdown()
    for by_job, by_actor in zip(*scored.values()):
        np.testing.assert_array_equal(by_job.rewards, by_actor.rewards)
        np.testing.assert_array_equal(by_job.rank, by_actor.rank)
    assert 1.0 in scored[0][0].rewards and 0.0 in scored[0][1].rewards  # not all one value
    assert not (tmp_path / "rar" / ".embedding-job").exists()
