"""Evaluation for any catalog: the protocol (queries, gallery, leave-one-out), the systems it
compares (embedders, TF-IDF, BM25) and the results table."""
