"""The retrieval core shared by evaluation, the RL reward and serving.

``faiss_index`` (one FAISS index with ids and a manifest), ``sharded`` (the index split over Ray
actors), ``evaluator`` (Recall@k / AP@k against a gallery, in-process or as a named actor group)
and ``metrics`` (the metric definitions).
"""
from afmrl.index.evaluator import GalleryScorer, RecallEvaluator, evaluate_retrieval
from afmrl.index.faiss_index import IndexMismatchError, VectorIndex, load_index
from afmrl.index.metrics import QueryMetrics, summarise
from afmrl.index.sharded import IndexShard, ShardedIndex, ShardUnavailable

__all__ = ["GalleryScorer", "IndexMismatchError", "IndexShard", "QueryMetrics", "RecallEvaluator",
           "ShardUnavailable", "ShardedIndex", "VectorIndex", "evaluate_retrieval", "load_index",
           "summarise"]
