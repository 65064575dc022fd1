"""Distributed training of the embedder: batch sampling, the training loop, checkpoints."""
