"""Generation engines behind one interface: vLLM (structured JSON) or transformers ``generate``.

Both take (prompt text, image or None) pairs built by ``afmrl.models.processor.Prompter`` and
return (text, generated token count). vLLM is the production path (xgrammar-constrained JSON,
continuous batching, tensor parallelism on GPUs); transformers is the baseline and the fallback
where vLLM is not installed.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol, Sequence

from PIL import Image

from afmrl.config import ExtractConfig
from afmrl.extract.schema import JSON_SEPARATORS, json_schema
from afmrl.models.processor import Prompter
from afmrl.utils.console import is_verbose

Request = tuple[str, Image.Image | None]  # (user text, image)


class Engine(Protocol):
    def generate(self, requests: Sequence[Request]) -> list[tuple[str, int]]: ...


def configure_vllm_env(config: ExtractConfig, cache_root: str | Path) -> None:
    """vLLM CPU settings that must be in the environment before ``import vllm``."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(cache_root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Keep the engine core in this process: killing the actor then kills the engine with it.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")


class VllmEngine:
    def __init__(self, model_path: str | Path, config: ExtractConfig, image_size: int,
                 cache_root: str | Path, seed: int = 0):
        configure_vllm_env(config, cache_root)
        from vllm import LLM, SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        self.prompter = Prompter(model_path, image_size)
        self.llm = LLM(
            model=str(model_path), enforce_eager=config.enforce_eager, seed=seed,
            tensor_parallel_size=config.tensor_parallel_size, max_model_len=2048,
            # Tensor-parallel ranks as subprocesses on the GPUs Ray gave this actor (the Ray
            # executor would ask Ray for GPUs the actor already holds).
            distributed_executor_backend="mp" if config.tensor_parallel_size > 1 else None,
            limit_mm_per_prompt={"image": 1},
            # Without disable_any_whitespace a weak model under a grammar emits whitespace
            # until max_tokens (stack.md).
            structured_outputs_config={"backend": "xgrammar", "disable_any_whitespace": True},
            use_tqdm_on_load=is_verbose())  # a sub-second bar per engine start otherwise
        self.params = SamplingParams(
            max_tokens=config.max_tokens, temperature=config.temperature, seed=seed,
            structured_outputs=StructuredOutputsParams(json=json_schema(config.attribute_keys)))

    def generate(self, requests: Sequence[Request]) -> list[tuple[str, int]]:
        prompts = [self.prompter.vllm_request(text, image) for text, image in requests]
        outputs = self.llm.generate(prompts, self.params, use_tqdm=False)
        return [(o.outputs[0].text, len(o.outputs[0].token_ids)) for o in outputs]


class TransformersEngine:
    """Batched ``generate`` on one model; also the rollout engine of RAR on CPU.

    With ``schema`` the output is constrained to it by xgrammar, the grammar backend of the
    vLLM path, in the same layout (no whitespace, ``JSON_SEPARATORS``): xgrammar's default
    ", " and ": " put the generator off the layout it was taught, and it wrote junk values.
    """

    def __init__(self, model_path: str | Path, max_tokens: int, temperature: float,
                 image_size: int, model=None, device: str = "cpu", schema: dict | None = None):
        import torch
        from transformers import AutoModelForImageTextToText

        self.prompter = Prompter(model_path, image_size)
        self.model = model or AutoModelForImageTextToText.from_pretrained(
            str(model_path), dtype=torch.float32).to(device).eval()
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.grammar = None
        if schema is not None:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(
                self.prompter.tokenizer, vocab_size=self.model.config.get_text_config().vocab_size)
            self.grammar = xgrammar.GrammarCompiler(info).compile_json_schema(
                schema, any_whitespace=False, separators=JSON_SEPARATORS)

    def _logits_processors(self) -> list:
        if self.grammar is None:
            return []
        from xgrammar.contrib.hf import LogitsProcessor

        return [LogitsProcessor(self.grammar)]  # one per generate call (it keeps state)

    def generate(self, requests: Sequence[Request]) -> list[tuple[str, int]]:
        import torch

        texts = [self.prompter.chat(text, image is not None) for text, image in requests]
        # On the model's device: a policy being trained on a GPU, or a model loaded there.
        inputs = self.prompter.model_inputs(texts, [image for _, image in requests]
                                            ).to(self.model.device)
        sampling = {"do_sample": True, "temperature": self.temperature} \
            if self.temperature > 0 else {"do_sample": False}
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_tokens,
                                         logits_processor=self._logits_processors(), **sampling)
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        eos = set(self.model.generation_config.eos_token_id or [])
        results = []
        for row in new_tokens.tolist():
            kept = [t for t in row if t not in eos and t != self.prompter.tokenizer.pad_token_id]
            text = self.prompter.tokenizer.decode(kept, skip_special_tokens=True)
            results.append((text, len(kept)))
        return results


def make_engine(config: ExtractConfig, model_path: str | Path, image_size: int,
                cache_root: str | Path, seed: int = 0, device: str = "cpu") -> Engine:
    """``device``: the actor's torch device (vLLM places itself on the GPUs Ray assigned)."""
    if config.engine == "vllm":
        return VllmEngine(model_path, config, image_size, cache_root, seed)
    return TransformersEngine(model_path, config.max_tokens, config.temperature, image_size,
                              device=device)
