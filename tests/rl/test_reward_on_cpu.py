"""The RAR reward on real actors: it follows the generated attributes, penalises malformed
output, logs its components and reports (and optionally drops) uniform groups."""
from __future__ import annotations

import numpy as np
import pytest

from afmrl.config import replace
from afmrl.extract.stage import attributes_by_item
from afmrl.rl.reward import RecallReward, uniform_groups

pytestmark = pytest.mark.usefixtures("ray_local")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, rl_config, catalog, attributes_table, embedder_dir, perfect_answers):
    config = rl_config(tmp_path_factory.mktemp("run"))
    reward = RecallReward.start(config, embedder_dir, catalog,
                                attributes_by_item(attributes_table), name="test-reward")
    queries, answers = perfect_answers
    yield config, reward, queries, answers
    reward.shutdown()


def test_reward_follows_the_attributes(setup):
    config, reward, queries, answers = setup
    uris, products = queries["image_uri"].tolist(), queries["group_id"].tolist()
    shifted = answers[7:] + answers[:7]  # every photo described as another product
    right = reward.score(answers, uris, products)
    wrong = reward.score(shifted, uris, products)
    broken = reward.score(["{not json"] * len(uris), uris, products)

    assert right.summary()["recall_at_3"] > wrong.summary()["recall_at_3"]
    assert right.summary()["mean_rank"] < wrong.summary()["mean_rank"]
    assert not right.malformed.any() and not wrong.malformed.any()
    # The reward is 1 exactly when the photo's product is in the top k, else 0; both occur.
    for batch in (right, wrong):
        np.testing.assert_array_equal(batch.rewards, (batch.rank <= 3).astype(float))
    assert 1.0 in right.rewards and 0.0 in wrong.rewards
    assert config.rl.malformed_penalty == -0.1  # the paper's penalty is the default
    np.testing.assert_allclose(broken.rewards, -0.1)
    assert broken.summary()["malformed_rate"] == 1.0
    # Wrong keys are schema errors, so they are malformed too.
    assert reward.score(['{"price": "3"}'], uris[:1], products[:1]).malformed.all()


def test_trl_call_logs_components_and_uniform_groups(setup):
    config, reward, queries, answers = setup
    a, b = queries["image_uri"].tolist()[:2]
    product_a, product_b = queries["group_id"].tolist()[:2]
    # Group a: every completion malformed (uniform). Group b: right, wrong, malformed (mixed).
    completions = [[{"role": "assistant", "content": text}] for text in
                   ["oops", "{", "[]", answers[1], answers[5], "nope"]]
    logged: dict[str, float] = {}
    rewards = reward(prompts=[[]] * 6, completions=completions, image_uri=[a] * 3 + [b] * 3,
                     group_id=[product_a] * 3 + [product_b] * 3, log_metric=logged.__setitem__)

    assert rewards[:3] == [-0.1] * 3
    # Photo b described as itself finds it (1), described as product 5 misses it (0).
    assert rewards[3:] == [1.0, 0.0, -0.1]
    assert logged["reward/uniform_groups"] == 1.0
    assert logged["reward/uniform_group_frac"] == 0.5
    assert logged["reward/malformed_rate"] == pytest.approx(4 / 6)
    assert logged["reward/reward_mean"] == pytest.approx(np.mean(rewards))
    assert "reward/recall_at_3" in logged and "reward/mean_rank" in logged

    dropping = RecallReward(reward.embedder, reward.evaluator,
                            replace(config.rl, drop_uniform_groups=True),
                            reward.keys, reward.depth)
    dropped = dropping(prompts=[[]] * 6, completions=completions, image_uri=[a] * 3 + [b] * 3,
                       group_id=[product_a] * 3 + [product_b] * 3)
    assert dropped[:3] == [None] * 3 and dropped[3:] == rewards[3:]


def test_uniform_groups_by_prompt_key():
    assert uniform_groups([1, 1, 0, 1, 0.5, 0.5], ["a", "a", "b", "b", "c", "c"]) == [[0, 1],
                                                                                      [4, 5]]
    assert uniform_groups([1.0], ["a"]) == []  # a single completion is not a group


def test_a_reward_actor_that_dies_is_restarted_and_scores_the_same(setup):
    """A crashed embedder or evaluator actor (OOM, a lost node) costs a restart, not the RAR
    job: Ray restarts it and retries the call, and the rewards do not change."""
    import ray

    _, reward, queries, answers = setup
    uris, products = queries["image_uri"].tolist(), queries["group_id"].tolist()
    before = reward.score(answers, uris, products)
    for actor in (reward.embedder, *reward.evaluator.actors):
        ray.kill(actor, no_restart=False)  # the process dies as in a crash; Ray may restart it
    after = reward.score(answers, uris, products)
    np.testing.assert_array_equal(after.rewards, before.rewards)
    np.testing.assert_array_equal(after.rank, before.rank)
