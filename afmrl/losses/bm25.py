"""Okapi BM25 between the short attribute texts of a batch ("category: milk; brand: arla").

AGCL weights each in-batch negative by how much its attributes overlap the anchor's: a negative
that shares brand and category is a hard negative and should weigh more. BM25 rather than raw
token overlap, because IDF makes a shared rare token ("laktosfri") count more than a shared
schema key ("category") that every text contains.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

_TOKEN = re.compile(r"[^\W_]+")  # runs of Unicode letters/digits: "Mjölk" stays one token


def tokenize(text: str) -> list[str]:
    """Lower-case, split on non-alphanumerics: 'colour: Red/Blue' -> ['colour', 'red', 'blue']."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class BM25Stats:
    """Corpus statistics (document frequencies, average length) fitted once on the catalog.

    Batch-level statistics are noisy (a token in 3 of 16 texts looks common); fitting on the whole
    catalog gives every batch the same, stable IDF.
    """

    num_docs: int
    avg_len: float
    doc_freq: Mapping[str, int]

    @classmethod
    def fit(cls, texts: Iterable[str]) -> BM25Stats:
        doc_freq: Counter[str] = Counter()
        num_docs = total_len = 0
        for text in texts:
            tokens = tokenize(text)
            doc_freq.update(set(tokens))
            num_docs += 1
            total_len += len(tokens)
        if num_docs == 0:
            raise ValueError("BM25Stats.fit needs at least one text (got an empty corpus)")
        return cls(num_docs=num_docs, avg_len=total_len / num_docs, doc_freq=dict(doc_freq))

    def idf(self, tokens: Sequence[str]) -> torch.Tensor:
        """log(1 + (N - n + 0.5) / (n + 0.5)): the +1 keeps every IDF positive, so BM25 >= 0."""
        n = torch.tensor([self.doc_freq.get(t, 0) for t in tokens], dtype=torch.float64)
        return torch.log1p((self.num_docs - n + 0.5) / (n + 0.5))


def pairwise_bm25(texts: Sequence[str], corpus_stats: BM25Stats | None = None,
                  k1: float = 1.2, b: float = 0.75) -> torch.Tensor:
    """(B, B) float32 matrix: entry (i, j) is the BM25 score of text j as the *document* for text i
    as the *query*.

    BM25 is asymmetric: the sum runs over the query's tokens (a repeated query token counts each
    time, as in rank_bm25) and the length normalisation uses the document's length, so
    ``B[i, j] != B[j, i]`` in general. AGCL reads row i as "how well do the attributes of negative
    j answer anchor i's attributes", the retrieval direction at serving time, and uses the same
    row for both directions of a symmetric loss because the anchor is item i either way.

    Document frequencies and average length come from ``corpus_stats`` (fit once on the catalog
    with ``BM25Stats.fit``) or, if None, from ``texts`` themselves.
    """
    docs = [tokenize(t) for t in texts]
    stats = corpus_stats if corpus_stats is not None else BM25Stats.fit(texts)
    vocab = sorted({token for doc in docs for token in doc})
    column = {token: j for j, token in enumerate(vocab)}
    counts = torch.zeros(len(docs), len(vocab), dtype=torch.float64)
    for i, doc in enumerate(docs):
        for token, count in Counter(doc).items():
            counts[i, column[token]] = count
    lengths = counts.sum(dim=1, keepdim=True)
    avg_len = stats.avg_len or 1.0  # an all-empty corpus: every score is 0 anyway
    saturated = counts * (k1 + 1) / (counts + k1 * (1 - b + b * lengths / avg_len))
    scores = counts @ (saturated * stats.idf(vocab)).T
    return scores.to(torch.float32)

