"""The one multimodal processor utility used by extraction, training, RL and serving.

Qwen-VL models need the image placeholder (<|vision_start|><|image_pad|><|vision_end|>) in the
prompt to match exactly the images passed beside it; a mismatch silently drops images or crashes
deep in the model (verl#841). Every caller builds prompts and model inputs through ``Prompter``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from afmrl.data.images import load_image


@dataclass(frozen=True)
class PromptItem:
    """What the generator sees of one product: an optional image and optional title/text."""
    title: str = ""
    text: str = ""
    image_uri: str = ""


EXTRACT_INSTRUCTION = (
    "List the key attributes of this product as a JSON object with the keys {keys}. "
    "Use short lower-case values; use an empty string when unknown.")


def extraction_request(item: PromptItem, keys: Sequence[str]) -> str:
    """The user turn of the attribute-extraction prompt (versioned by extract.prompt_version)."""
    lines = [EXTRACT_INSTRUCTION.format(keys=", ".join(keys))]
    if item.title:
        lines.append(f"Title: {item.title}")
    if item.text:
        lines.append(f"Description: {item.text[:300]}")
    return "\n".join(lines)


class Prompter:
    """Chat prompts + images for a Qwen-VL-family model directory (tiny or real)."""

    def __init__(self, model_path: str | Path, image_size: int = 224):
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(model_path))
        self.tokenizer = self.processor.tokenizer
        self.image_size = image_size

    def chat(self, user_text: str, with_image: bool, answer: str | None = None) -> str:
        """The prompt text; with ``answer`` the full conversation (for SFT), else generation."""
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": user_text})
        messages = [{"role": "user", "content": content}]
        if answer is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return self.processor.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=answer is None)

    def image(self, item: PromptItem) -> Image.Image | None:
        return load_image(item.image_uri, self.image_size) if item.image_uri else None

    def vllm_request(self, user_text: str, image: Image.Image | None) -> dict[str, Any]:
        request: dict[str, Any] = {"prompt": self.chat(user_text, image is not None)}
        if image is not None:
            request["multi_modal_data"] = {"image": image}
        return request

    def model_inputs(self, texts: Sequence[str], images: Sequence[Image.Image | None],
                     padding_side: str = "left"):
        """Batched tensors for transformers; images only for prompts that carry a placeholder."""
        present = [img for img in images if img is not None]
        self.tokenizer.padding_side = padding_side
        return self.processor(text=list(texts), images=present or None, return_tensors="pt",
                              padding=True)


def save_tokenizer(tokenizer: Any, path: Path) -> None:
    """``save_pretrained`` of a tokenizer (or a processor holding one) whose bytes do not
    depend on what it encoded before: a fast tokenizer's ``tokenizer.json`` records the
    truncation and padding of its last call, so an export made after a resume (nothing encoded
    yet) differed from an uninterrupted run's (found by ``bench/kill_anywhere.py``). Every
    call sets both again, so clearing them changes no encoding."""
    backend = getattr(getattr(tokenizer, "tokenizer", tokenizer), "backend_tokenizer", None)
    if backend is not None:
        backend.no_truncation()
        backend.no_padding()
    tokenizer.save_pretrained(path)
