"""The RAR reward: Recall@k of the shopper's photo enriched with the generated attributes.

A batched contract (one call scores a whole GRPO generation batch), served by actors so trainer
ranks never hold the embedder:

- ``EmbedderActor``: the frozen stage-1 embedder in its own Ray process;
- ``RecallEvaluator`` (``afmrl.index``): named actors holding the catalog gallery, embedded once
  as in AGCL (``catalog_inputs``: title, text and the generated attributes, + the catalog image).

For each completion: output that does not parse into the attribute schema earns
``rl.malformed_penalty``; otherwise the query ``EmbedInput(attribute_text(values), photo)`` is
embedded and its reward is Recall@k (1 if the true product is in the top ``rl.recall_k``).

Choosing k: the paper's k=50 (the ``rl.recall_k`` default) is meant for galleries of many
thousands of items. On the grocery gallery (81 products; 31 in the mini list) nearly every
well-formed query has its product in the top 50, so groups are uniform and GRPO learns only
"emit valid JSON". Keep k a small share of the gallery's products: about 10 for the 81-product
grocery gallery, 5 in configs/mini.yaml (the tests use 3). ``RecallReward.start`` warns when k
covers every product.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import ray

from afmrl.config import AfmrlConfig, EvalConfig, IndexConfig, RLConfig, replace
from afmrl.extract.schema import attribute_text, parse_attributes
from afmrl.index.embed_job import embed_in_order
from afmrl.index.evaluator import HybridGallery, RecallEvaluator
from afmrl.layout import RunLayout
from afmrl.models.embedders import EmbedInput, embed, load_embedder
from afmrl.train.data import catalog_inputs
from afmrl.utils.device import (Placement, recall_evaluators, reward_embedder,
                                 torch_device)
from afmrl.utils.ray_utils import RESTART_PURE_ACTOR, get_with_timeout, kill_actors

log = logging.getLogger("afmrl")

REWARD_NAME = "recall_reward"
# First-hit ranks are searched this deep (or the whole gallery, if smaller): mean_rank is exact
# on small galleries and stays cheap on large ones (deeper misses count as depth + 1).
RANK_DEPTH = 100
# An exact index: the reward must not depend on approximate-search noise.
EXACT = IndexConfig(kind="flat", metric="ip", num_shards=1)


@ray.remote
class EmbedderActor:
    """A frozen embedder in its own process (trainer ranks never load it), on the device its
    ``placement`` (``afmrl.utils.device.reward_embedder``) names."""

    def __init__(self, path: str, placement: Placement) -> None:
        self.model = load_embedder(path, torch_device(placement))

    def embed(self, inputs: list[EmbedInput]) -> np.ndarray:
        return embed(self.model, inputs)


@dataclass(frozen=True)
class RewardBatch:
    """Per-completion reward and its components (recall and rank are NaN where malformed)."""
    rewards: np.ndarray
    malformed: np.ndarray
    recall: np.ndarray
    rank: np.ndarray
    k: int

    def summary(self) -> dict[str, float]:
        """Means with MLflow-safe keys; a malformed completion counts as a miss in recall_at_k."""
        parsed = ~self.malformed
        return {"reward_mean": float(self.rewards.mean()),
                f"recall_at_{self.k}": float(np.where(parsed, self.recall, 0.0).mean()),
                "malformed_rate": float(self.malformed.mean()),
                "mean_rank": float(self.rank[parsed].mean()) if parsed.any() else math.nan}


def uniform_groups(rewards: Sequence[float], group_keys: Sequence[Any]) -> list[list[int]]:
    """Groups (indices sharing a prompt key) whose completions all got the same reward.

    GRPO's advantage is reward minus the group mean, so such a group teaches nothing.
    """
    groups: dict[Any, list[int]] = defaultdict(list)
    for index, key in enumerate(group_keys):
        groups[key].append(index)
    return [members for members in groups.values()
            if len(members) > 1 and np.ptp([rewards[i] for i in members]) == 0]


def reward_gallery(catalog: pd.DataFrame, attributes: Mapping[str, str], keys: Sequence[str]
                   ) -> pd.DataFrame:
    """The usable catalog items, labelled with the generator's ``attributes`` (item id ->
    JSON): embedded as in AGCL, ``catalog_inputs`` (attributes + title + text, the image)."""
    gallery = catalog[(catalog["split"] == "catalog") & (catalog["error"] == "")]
    if gallery.empty:
        raise ValueError("the catalog has no usable 'catalog' rows to build the reward gallery")
    labels = [attribute_text(attributes.get(i), keys) for i in gallery["item_id"]]
    if not any(labels):
        raise ValueError("no catalog item has extracted attributes; run `afmrl extract` with "
                         "'catalog' in extract.splits first")
    if not all(labels):
        log.warning("reward gallery: %d of %d catalog items have no attributes",
                    sum(not label for label in labels), len(gallery))
    return gallery.assign(attributes=[attributes.get(i) for i in gallery["item_id"]])


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """TRL passes plain strings for text prompts and message lists for conversational ones."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


class RecallReward:
    """A TRL reward function (``reward_funcs=[RecallReward(...)]``) backed by Ray actors.

    Picklable (it holds only actor handles and configs), so the driver builds it once and Ray
    Train workers receive it. ``shutdown`` ends the actors.
    """

    def __init__(self, embedder: Any, evaluator: RecallEvaluator, rl: RLConfig,
                 keys: Sequence[str], depth: int) -> None:
        self.__name__ = REWARD_NAME  # TRL names the reward's metrics after it
        self.embedder = embedder
        self.evaluator = evaluator
        self.rl = rl
        self.keys = tuple(keys)
        self.depth = depth

    @classmethod
    def start(cls, config: AfmrlConfig, embedder_path: str | Path, catalog: pd.DataFrame,
              attributes: Mapping[str, str], name: str = "rar-reward") -> "RecallReward":
        """Start the embedder actor, embed the gallery once (by the embedding job from
        ``eval.embed_job_min_rows`` rows), start the evaluator group ``name``.

        Every remote call (here and per batch) is bounded by ``rl.reward_timeout_s``.
        """
        rl, keys = config.rl, config.extract.attribute_keys
        rows = reward_gallery(catalog, attributes, keys)
        inputs, products = catalog_inputs(rows, keys), rows["group_id"].to_numpy()
        gallery = None
        if len(rows) >= config.eval.embed_job_min_rows:  # before the actor takes its device
            gallery = embed_in_order(config, embedder_path, rows,
                                     RunLayout.of(config).rar / ".embedding-job",
                                     "the RL reward gallery")
        placement = reward_embedder(config)
        embedder = EmbedderActor.options(**placement.ray_options(), **RESTART_PURE_ACTOR
                                         ).remote(str(embedder_path), placement)
        try:
            if gallery is None:
                gallery = get_with_timeout(embedder.embed.remote(inputs), rl.reward_timeout_s,
                                           "embedding the reward gallery")
            depth = max(rl.recall_k, min(len(products), RANK_DEPTH))
            hybrid = HybridGallery(tuple(i.text for i in inputs), config.retrieval) \
                if rl.reward_retrieval == "hybrid" else None
            evaluator = RecallEvaluator.get_or_create(
                name, gallery, products, EXACT,
                EvalConfig(ks=(rl.recall_k, depth), num_evaluators=config.eval.num_evaluators),
                replace(config.ray, call_timeout_s=rl.reward_timeout_s),
                recall_evaluators(config).cpus, hybrid)
        except BaseException:
            kill_actors([embedder])
            raise
        if rl.recall_k >= len(set(products.tolist())):
            log.warning("rl.recall_k=%d covers every one of the %d gallery products: every "
                        "well-formed query scores 1 and GRPO only learns to emit valid JSON; "
                        "use a k well below the gallery size", rl.recall_k, len(set(products)))
        return cls(embedder, evaluator, rl, keys, depth)

    def score(self, texts: Sequence[str], image_uris: Sequence[str],
              products: Sequence[int]) -> RewardBatch:
        """Rewards for generated attribute texts, each enriching its query photo."""
        parsed = [parse_attributes(text, self.keys) for text in texts]
        malformed = np.array([not p.ok for p in parsed], dtype=bool)
        rewards = np.full(len(texts), self.rl.malformed_penalty, dtype=np.float64)
        recall = np.full(len(texts), np.nan)
        rank = np.full(len(texts), np.nan)
        rows = np.flatnonzero(~malformed)
        if len(rows):
            queries = [EmbedInput(text=attribute_text(parsed[i].values, self.keys),
                                  image=image_uris[i]) for i in rows]
            embeddings = get_with_timeout(self.embedder.embed.remote(queries),
                                          self.rl.reward_timeout_s, "reward embedder")
            texts = [q.text for q in queries] if self.rl.reward_retrieval == "hybrid" else None
            metrics = self.evaluator.evaluate(embeddings, np.asarray(products)[rows],
                                              query_texts=texts)
            recall[rows] = metrics.recall[self.rl.recall_k]
            rank[rows] = np.minimum(metrics.first_rank, self.depth + 1)
            rewards[rows] = recall[rows]
        return RewardBatch(rewards, malformed, recall, rank, self.rl.recall_k)

    def __call__(self, prompts: list, completions: list, image_uri: list[str],
                 group_id: list[int], log_metric: Callable[[str, float], None] | None = None,
                 **kwargs: Any) -> list[float | None]:
        """TRL's reward signature; ``image_uri`` / ``group_id`` are dataset columns.

        ``log_metric`` (TRL) averages each component into the step's logs as ``reward/<name>``.
        With ``rl.drop_uniform_groups`` a uniform group's rewards are returned as None: TRL then
        treats those completions as unscorable, i.e. their advantage is forced to 0 (it already
        is for a uniform group) and they leave the logged reward statistics. Their tokens still
        count in the loss normaliser and the KL term; TRL cannot resample a replacement group.
        Uniform groups are counted per call: with several ranks a group may be split between
        ranks, and TRL's own ``frac_reward_zero_std`` is then the exact global figure.
        """
        batch = self.score([completion_text(c) for c in completions], image_uri, group_id)
        uniform = uniform_groups(batch.rewards.tolist(), image_uri)
        n_groups = len(set(image_uri))
        stats = {**batch.summary(), "uniform_groups": float(len(uniform)),
                 "uniform_group_frac": len(uniform) / max(n_groups, 1)}
        if log_metric is not None:
            for key, value in stats.items():
                if math.isfinite(value):
                    log_metric(f"reward/{key}", value)
        rewards: list[float | None] = batch.rewards.tolist()
        if self.rl.drop_uniform_groups:
            for members in uniform:
                for index in members:
                    rewards[index] = None
        return rewards

    def shutdown(self) -> None:
        self.evaluator.shutdown()
        kill_actors([self.embedder])
