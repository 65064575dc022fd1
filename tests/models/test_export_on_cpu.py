"""`afmrl export --format sentence-transformers`: the exported model, loaded by
sentence-transformers itself, encodes text to the vectors afmrl's own ``embed`` gives."""
import numpy as np
import pytest
import torch

from afmrl.cli import main as cli_main
from afmrl.config import load_config
from afmrl.models.embedders import EmbedInput, build_embedder, embed, save_embedder
from afmrl.models.export import ExportError, export_sentence_transformers

TEXTS = ["Sony Cyber-shot DSC-W120P pink", "crème brûlée torch — Küchenprofi",
         "samsung galaxy s9 64gb midnight black sm-g960f " * 30,  # truncated at 96 tokens
         "brand: apple | iphone 8 plus 64 gb silver"]


@pytest.mark.parametrize("tower", ["tiny", "minilm"])
def test_sentence_transformers_export_encodes_like_afmrl(tower, model_cache, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = build_embedder(load_config(None, [f"models.text_tower={tower}"]).models, model_cache)
    with torch.no_grad():  # a head unlike any default init: the export must carry the weights
        model.text_head.weight.mul_(torch.linspace(0.5, 2.0, model.embed_dim)[:, None])
    embedder_dir = save_embedder(model, tmp_path / "embedder")
    out = tmp_path / "st"
    assert cli_main(["export", "--embedder", str(embedder_dir), "--format",
                     "sentence-transformers", str(out)]) == 0
    expected = embed(model, [EmbedInput(t) for t in TEXTS])
    got = SentenceTransformer(str(out), device="cpu").encode(TEXTS, batch_size=3)
    assert got.shape == expected.shape == (len(TEXTS), model.embed_dim)
    assert np.allclose(got, expected, atol=1e-5)


def test_vlm2vec_export_is_refused_clearly(model_cache, tmp_path):
    model = build_embedder(load_config(None, ["models.embedder=vlm2vec"]).models, model_cache)
    embedder_dir = save_embedder(model, tmp_path / "embedder")
    with pytest.raises(ExportError, match="vlm2vec embedders cannot be exported"):
        export_sentence_transformers(embedder_dir, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_export_of_a_folder_that_is_no_embedder_exits_2(tmp_path, capsys):
    assert cli_main(["export", "--embedder", str(tmp_path), str(tmp_path / "st")]) == 2
    assert "not an exported afmrl embedder" in capsys.readouterr().err
