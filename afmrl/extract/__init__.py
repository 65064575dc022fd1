"""Stage 0: attribute extraction (schema, prompts, distributed vLLM generation, SFT)."""
