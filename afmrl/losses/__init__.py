"""Training losses: AGCL (attribute-weighted, false-negative-filtered InfoNCE) and the BM25
attribute similarity that weights its negatives."""
from afmrl.losses.agcl import AGCLLoss
from afmrl.losses.bm25 import BM25Stats, pairwise_bm25, tokenize

__all__ = ["AGCLLoss", "BM25Stats", "pairwise_bm25", "tokenize"]
