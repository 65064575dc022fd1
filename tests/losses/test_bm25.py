import math

import pytest
import torch

from afmrl.losses.bm25 import BM25Stats, pairwise_bm25, tokenize

CORPUS = [
    "category: milk; brand: arla",
    "category: milk; brand: garant; size: 1 l",
    "category: juice; brand: arla; flavour: orange",
    "category: chocolate milk; variant: milk chocolate",
    "Category: Mjölk; Brand: Arla_Ko",
]


def direct_bm25(query: str, doc: str, corpus: list[str], k1: float = 1.2, b: float = 0.75) -> float:
    """Okapi BM25 written out term by term, as in the textbook."""
    docs = [tokenize(t) for t in corpus]
    avg_len = sum(len(d) for d in docs) / len(docs)
    doc_tokens = tokenize(doc)
    score = 0.0
    for term in tokenize(query):
        n = sum(term in d for d in docs)
        idf = math.log(1 + (len(docs) - n + 0.5) / (n + 0.5))
        tf = doc_tokens.count(term)
        score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len(doc_tokens) / avg_len))
    return score


def test_tokenize_lowercases_and_splits_on_non_alphanumerics():
    assert tokenize("Category: Mjölk; Brand: Arla_Ko, 1.5 l") == [
        "category", "mjölk", "brand", "arla", "ko", "1", "5", "l"]


def test_one_entry_by_hand():
    scores = pairwise_bm25(CORPUS[:3])
    # Query "category milk brand arla" vs document 2 (6 tokens); 17 tokens over 3 docs.
    # Shared: category (in 3 docs), brand (3 docs), arla (2 docs); milk is absent from doc 2.
    saturated = 2.2 / (1 + 1.2 * (0.25 + 0.75 * 6 / (17 / 3)))
    expected = (2 * math.log(1 + 0.5 / 3.5) + math.log(1 + 1.5 / 2.5)) * saturated
    assert scores[0, 2].item() == pytest.approx(expected, rel=1e-6)


def test_batch_statistics_match_the_direct_formula():
    scores = pairwise_bm25(CORPUS)
    expected = torch.tensor([[direct_bm25(q, d, CORPUS) for d in CORPUS] for q in CORPUS])
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, scores.T), "BM25 is asymmetric"
    assert (scores >= 0).all()


def test_corpus_statistics_are_used_instead_of_the_batch():
    batch = CORPUS[:2]
    stats = BM25Stats.fit(CORPUS)
    assert stats.num_docs == 5 and stats.doc_freq["arla"] == 3
    scores = pairwise_bm25(batch, corpus_stats=stats)
    expected = torch.tensor([[direct_bm25(q, d, CORPUS) for d in batch] for q in batch])
    torch.testing.assert_close(scores, expected)
    assert not torch.allclose(scores, pairwise_bm25(batch))


def test_texts_without_shared_tokens_score_zero_and_empty_corpus_is_refused():
    scores = pairwise_bm25(["brand: arla", "colour: red", ""])
    assert scores[0, 1] == 0 and scores[2].abs().sum() == 0 and scores[0, 0] > 0
    with pytest.raises(ValueError, match="empty corpus"):
        BM25Stats.fit([])
