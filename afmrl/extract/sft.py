"""Distillation hook: supervised fine-tuning of the generator on teacher attributes.

The paper distils the generator from a large teacher before RL. Teachers here:
- a file of a bigger model's output (Parquet/JSONL with item_id + attributes JSON), or
- catalog metadata where a catalog has it (``metadata_attributes`` for the grocery data).
The student learns to write the teacher's JSON for the item's image (+ title when the row is a
catalog item; photo only for query rows; a catalog title alone, as a shopper types it), so RL
starts from a generator that emits sensible, schema-valid attributes instead of random tokens.
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from afmrl.extract.schema import JSON_SEPARATORS
from afmrl.models.processor import PromptItem, Prompter, extraction_request, save_tokenizer

log = logging.getLogger("afmrl")

_COLOURS = ("red", "green", "yellow", "orange", "white", "black", "brown", "blue", "purple",
            "pink", "golden", "dark")
_PACKAGING = ("carton", "bottle", "jar", "can", "cup", "bag", "box", "pack", "tube")


@dataclass(frozen=True)
class SFTExample:
    item: PromptItem
    target: str  # JSON object with every schema key, '' when unknown


def target_json(values: dict[str, str], keys: Sequence[str]) -> str:
    """Canonical JSON target: every key in schema order, matching the structured-output schema."""
    return json.dumps({k: values.get(k, "") for k in keys}, separators=JSON_SEPARATORS)


def metadata_attributes(row: pd.Series) -> dict[str, str]:
    """Teacher attributes from grocery metadata: category, brand/size (from 'BRAND , 2l'),
    variant (the title), colour/packaging/flavour words from the description."""
    values = {"category": str(row.get("coarse_group", "")).lower(),
              "variant": str(row.get("title", "")).lower()}
    text = f"{row.get('title', '')} {row.get('text', '')}".lower()
    words = set(re.findall(r"[a-z]+", text))
    colour = next((c for c in _COLOURS if c in words), "")
    packaging = next((p for p in _PACKAGING if p in words), "")
    volume = re.search(r"([A-Z][A-Za-z&' ]+?)\s*,\s*([\d.,]+\s*(?:ml|cl|dl|l|g|kg))",
                       str(row.get("text", "")))
    if volume:
        values["brand"], values["size"] = volume.group(1).strip().lower(), volume.group(2).lower()
    flavour = re.search(r"\b(apple|orange|strawberry|vanilla|blueberry|pear|mango|peach|"
                        r"cherry|raspberry|lemon|banana)\b", text)
    values.update({"colour": colour, "packaging": packaging,
                   "flavour": flavour.group(1) if flavour else ""})
    return {k: v for k, v in values.items() if v}


def teacher_examples(catalog: pd.DataFrame, keys: Sequence[str],
                     teacher_file: str | None = None) -> list[SFTExample]:
    """Catalog rows (with titles) and query photos (no title) paired with teacher attributes.

    Query photos take the attributes of their product's catalog item: what a perfect generator
    would say about the photo. A catalog item with an image or a description also teaches from
    its title alone: a typed text query (served with ``enrich``, or a text-only query row) is
    prompted with a title only, and a generator never taught that prompt wrote noise for it.
    """
    usable = catalog[catalog["error"] == ""]
    if teacher_file:
        teacher = pd.read_parquet(teacher_file) if teacher_file.endswith(".parquet") \
            else pd.read_json(teacher_file, lines=True)
        by_item = {i: json.loads(a) if isinstance(a, str) else dict(a)
                   for i, a in zip(teacher["item_id"], teacher["attributes"])}
    else:
        by_item = {row["item_id"]: metadata_attributes(row) for _, row in usable.iterrows()}
    catalog_rows = usable[usable["split"] == "catalog"]
    by_product = {g: by_item[i] for i, g in zip(catalog_rows["item_id"], catalog_rows["group_id"])
                  if i in by_item}
    examples = []
    for _, row in usable.iterrows():
        # Train rows with a title (text catalogs: their queries are titles) teach from their own.
        own_words = row["split"] == "catalog" or (row["split"] == "train" and row["title"].strip())
        if own_words and row["item_id"] in by_item:
            target = target_json(by_item[row["item_id"]], keys)
            item = PromptItem(row["title"], row["text"], row["image_uri"])
            examples.append(SFTExample(item, target))
            typed = PromptItem(title=row["title"])
            if row["split"] == "catalog" and typed != item:
                examples.append(SFTExample(typed, target))
        elif row["split"] == "train" and row["group_id"] in by_product:
            examples.append(SFTExample(PromptItem(image_uri=row["image_uri"]),
                                       target_json(by_product[row["group_id"]], keys)))
    return examples


def answer_only_labels(input_ids, attention_mask, prompt_lengths):
    """Labels for causal-LM SFT: the token ids, with -100 (ignored by the loss) on every prompt
    token (system/user turns, image placeholders and pads, the assistant header) and on padding.

    input_ids/attention_mask: (b, n) right-padded prompt+answer; prompt_lengths: (b,) tokens of
    each row's prompt alone (its attention-mask sum). Pure, so any SFT loop can reuse it.
    """
    import torch

    positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
    is_prompt = positions < prompt_lengths.to(input_ids.device)[:, None]
    return input_ids.masked_fill(is_prompt | (attention_mask == 0), -100)


def sft_batch(prompter: Prompter, examples: Sequence[SFTExample], keys: Sequence[str]) -> dict:
    """Model inputs for (prompt, teacher JSON) pairs, with ``labels`` set on the answer only."""
    images = [prompter.image(ex.item) for ex in examples]
    users = [extraction_request(ex.item, keys) for ex in examples]
    full = [prompter.chat(u, img is not None, answer=ex.target)
            for u, img, ex in zip(users, images, examples)]
    prompts = [prompter.chat(u, img is not None) for u, img in zip(users, images)]
    inputs = prompter.model_inputs(full, images, padding_side="right")
    prompt_lengths = prompter.model_inputs(prompts, images,
                                           padding_side="right")["attention_mask"].sum(1)
    inputs["labels"] = answer_only_labels(inputs["input_ids"], inputs["attention_mask"],
                                          prompt_lengths)
    return inputs


def sft_generator(base_path: str | Path, out_path: str | Path, examples: Sequence[SFTExample],
                  keys: Sequence[str], steps: int, batch_size: int = 8, lr: float = 2e-3,
                  image_size: int = 224, seed: int = 0, tracker=None, device="cpu") -> Path:
    """Train the generator on (prompt, teacher JSON) pairs; loss on the answer tokens only.
    ``device``: where the model trains (the Ray Train worker's, from afmrl.utils.device)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText

    from afmrl.utils.io import atomic_path

    if not examples:
        raise ValueError("SFT needs teacher examples; none were found in the catalog")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    prompter = Prompter(base_path, image_size)
    model = AutoModelForImageTextToText.from_pretrained(str(base_path), dtype=torch.float32
                                                        ).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps,
                                                   pct_start=0.1)
    for step in tqdm(range(steps), desc="sft generator"):
        batch = rng.sample(list(examples), min(batch_size, len(examples)))
        loss = model(**sft_batch(prompter, batch, keys).to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if tracker is not None and (step % 10 == 0 or step == steps - 1):
            tracker.log_metrics({"sft_loss": loss.item()}, step=step)
    model.eval()
    with atomic_path(out_path) as tmp:
        model.save_pretrained(tmp)
        save_tokenizer(prompter.processor, tmp)
    log.info("SFT generator saved to %s (final loss %.3f)", out_path, loss.item())
    return Path(out_path)
