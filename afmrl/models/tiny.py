"""Tiny models built offline, deterministically from a seed: no weights from any hub.

- ``build_tiny_generator``: a Qwen2-VL-family attribute generator (vision tower + causal LM) with
  its processor and a byte-level BPE tokenizer trained on local text. vLLM, transformers, TRL and
  DeepSpeed all load it from disk exactly like Qwen2.5-VL-3B on a GPU cluster.
- ``build_tiny_vision_tower``: a small CLIP vision encoder (image tower of the dual embedder).
- ``build_tiny_text_tower``: a small BERT sentence encoder (offline alternative to MiniLM).

Each builder is idempotent: the output directory carries a stamp of the build recipe, so a second
call returns immediately and a changed recipe rebuilds.
"""
from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path
from typing import Iterable

from afmrl.utils.io import atomic_path, sha256_json

# Qwen2-VL special tokens, in the order the real tokenizer numbers them after its BPE vocabulary.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)

# The Qwen2-VL chat template (images as <|vision_start|><|image_pad|><|vision_end|>).
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Pixel budget of the tiny generator's processor: 112x112 -> 64 patches -> 16 image tokens.
TINY_MIN_PIXELS = 56 * 56
TINY_MAX_PIXELS = 112 * 112

_RECIPE_VERSION = 1
_STAMP = "afmrl_build.json"


def _done(path: Path, recipe: dict) -> bool:
    stamp = path / _STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("recipe") == sha256_json(recipe)


def _stamp(path: Path, recipe: dict) -> None:
    (path / _STAMP).write_text(json.dumps({"recipe": sha256_json(recipe), **recipe}, indent=2))


def train_tokenizer(corpus: Iterable[str], vocab_size: int):
    """A byte-level BPE (Qwen's scheme) trained on local text, with Qwen's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)
    tokenizer.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, bos_token=None, model_max_length=4096,
        additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]))
    fast.chat_template = QWEN_CHAT_TEMPLATE
    return fast


def tokenizer_corpus(extra_texts: Iterable[str] = ()) -> list[str]:
    """Text the tiny tokenizer learns from: JSON syntax, attribute vocabulary, product words."""
    from afmrl.extract.schema import DEFAULT_ATTRIBUTE_KEYS

    words = ["{", "}", '"', ":", ",", "[", "]", "null", "true", "false", "system", "user",
             "assistant", "You are a helpful assistant.", *DEFAULT_ATTRIBUTE_KEYS]
    corpus = [" ".join(words), json.dumps({k: "value" for k in DEFAULT_ATTRIBUTE_KEYS})]
    corpus.extend(extra_texts)
    corpus.extend(str(i) for i in range(1000))
    return corpus


def build_tiny_generator(out_dir: str | Path, seed: int = 0,
                         extra_texts: Iterable[str] = (), vocab_size: int = 2048) -> Path:
    """A ~3M-parameter Qwen2-VL saved with ``save_pretrained`` (+ tokenizer + processor)."""
    import torch
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    out_dir = Path(out_dir)
    corpus = tokenizer_corpus(extra_texts)
    recipe = {"kind": "tiny-qwen2-vl", "version": _RECIPE_VERSION, "seed": seed,
              "vocab_size": vocab_size, "corpus": sha256_json(corpus)}
    if _done(out_dir, recipe):
        return out_dir
    tokenizer = train_tokenizer(corpus, vocab_size)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": 128, "intermediate_size": 256,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "max_position_embeddings": 4096, "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [16, 8, 8]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={"depth": 2, "embed_dim": 64, "hidden_size": 128, "num_heads": 2,
                       "mlp_ratio": 2, "patch_size": 14, "spatial_merge_size": 2,
                       "temporal_patch_size": 2},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    image_processor = Qwen2VLImageProcessor(min_pixels=TINY_MIN_PIXELS,
                                            max_pixels=TINY_MAX_PIXELS)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                 video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=QWEN_CHAT_TEMPLATE)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        _stamp(tmp, recipe)
    return out_dir


def build_tiny_vision_tower(out_dir: str | Path, seed: int = 0, image_size: int = 96) -> Path:
    """A small CLIP vision encoder (random init): the dual embedder's image tower on CPU."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    out_dir = Path(out_dir)
    recipe = {"kind": "tiny-clip-vision", "version": _RECIPE_VERSION, "seed": seed,
              "image_size": image_size}
    if _done(out_dir, recipe):
        return out_dir
    config = CLIPVisionConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                              num_attention_heads=4, image_size=image_size, patch_size=16)
    torch.manual_seed(seed)
    model = CLIPVisionModel(config)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        _stamp(tmp, recipe)
    return out_dir


def build_tiny_text_tower(out_dir: str | Path, seed: int = 0,
                          extra_texts: Iterable[str] = ()) -> Path:
    """A small BERT encoder + tokenizer trained offline (when MiniLM is not wanted)."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    corpus = tokenizer_corpus(extra_texts)
    recipe = {"kind": "tiny-bert", "version": _RECIPE_VERSION, "vocab": "sorted-words",
              "seed": seed, "corpus": sha256_json(corpus)}
    if _done(out_dir, recipe):
        return out_dir
    # A WordPiece vocabulary built directly (whole words by frequency, then characters as the
    # fallback): the tokenizers trainer breaks frequency ties in hash order, which would make
    # two builds from the same seed differ.
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts = Counter(word for text in corpus for word, _ in
                     splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted({c for word in counts for c in word} | set(string.ascii_lowercase + string.digits))
    words = sorted(counts, key=lambda w: (-counts[w], w))[:4096 - len(specials) - 2 * len(chars)]
    vocab = specials + chars + [f"##{c}" for c in chars] + sorted(set(words) - set(chars))
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = splitter
    from tokenizers.processors import TemplateProcessing
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]",
                                        cls_token="[CLS]", sep_token="[SEP]",
                                        mask_token="[MASK]", model_max_length=512)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=256)
    torch.manual_seed(seed)
    model = BertModel(config)
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _stamp(tmp, recipe)
    return out_dir
