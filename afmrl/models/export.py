"""Export a trained afmrl embedder for other tools: ``afmrl export --format sentence-transformers``.

The dual embedder's text path is exactly a sentence-transformers pipeline: the text tower
(tokenised to ``MAX_TEXT_TOKENS``), mean pooling over the attention mask, the bias-free
``text_head`` projection, L2 normalisation. So the export is ``Transformer -> Pooling(mean) ->
Dense(no bias, identity) -> Normalize`` and ``SentenceTransformer(OUT).encode(texts)`` gives the
vectors afmrl's ``embed`` gives for the same texts. The image side is not exported:
sentence-transformers' image module expects a full CLIP model, not afmrl's vision tower + head.
The vlm2vec embedder (chat-templated Qwen2-VL prompt, last-token pooling) has no
sentence-transformers equivalent and is refused with a clear error.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from afmrl.models.embedders import EMBEDDER_FILE, MAX_TEXT_TOKENS, DualEncoder, load_embedder
from afmrl.models.processor import save_tokenizer
from afmrl.utils.io import atomic_path

FORMATS = ("sentence-transformers",)


class ExportError(ValueError):
    """The embedder cannot be exported in the requested format; the message says why."""


def export_sentence_transformers(embedder_dir: str | Path, out: str | Path) -> Path:
    """Write the dual embedder's text side as a sentence-transformers model folder (atomic)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules

    embedder_dir = Path(embedder_dir)
    meta_file = embedder_dir / EMBEDDER_FILE
    kind = json.loads(meta_file.read_text()).get("kind") if meta_file.is_file() else None
    if kind == "vlm2vec":
        raise ExportError(f"{embedder_dir}: vlm2vec embedders cannot be exported to "
                          f"sentence-transformers (a chat-templated Qwen2-VL prompt with "
                          f"last-token pooling has no sentence-transformers module); serve it "
                          f"with `afmrl serve` instead")
    model = load_embedder(embedder_dir)  # FileNotFoundError names a folder that is no embedder
    if not isinstance(model, DualEncoder):
        raise ExportError(f"{embedder_dir}: unsupported embedder kind {model.kind!r}")
    out = Path(out)
    with tempfile.TemporaryDirectory() as tower, atomic_path(out) as tmp:
        model.text.save_pretrained(tower)
        save_tokenizer(model.tokenizer, tower)
        transformer = modules.Transformer(tower, max_seq_length=MAX_TEXT_TOKENS)
        pooling = modules.Pooling(transformer.get_embedding_dimension(), "mean")
        dense = modules.Dense(model.text_head.in_features, model.text_head.out_features,
                             bias=False, activation_function=torch.nn.Identity())
        with torch.no_grad():
            dense.linear.weight.copy_(model.text_head.weight)
        SentenceTransformer(modules=[transformer, pooling, dense, modules.Normalize()],
                            device="cpu").save(str(tmp))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="afmrl export", description="Export a trained embedder for other tools (text side).")
    parser.add_argument("--embedder", required=True,
                        help="exported afmrl embedder folder (holds embedder.json)")
    parser.add_argument("--format", choices=FORMATS, default=FORMATS[0])
    parser.add_argument("out", help="output folder")
    args = parser.parse_args(argv)
    try:
        out = export_sentence_transformers(args.embedder, args.out)
    except (ExportError, FileNotFoundError) as error:
        print(f"afmrl export: {error}", file=sys.stderr)
        return 2
    print(f"{out}: sentence-transformers model (load with SentenceTransformer({str(out)!r}))")
    return 0
