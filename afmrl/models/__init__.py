"""Models: tiny offline builders, the shared multimodal processor, and the embedder registry."""
