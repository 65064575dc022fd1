"""Both embedder backbones: forward, gradients, export/reload and the processor contract."""
import numpy as np
import pytest
import torch
from PIL import Image

from afmrl.config import load_config
from afmrl.models.embedders import (EmbedInput, build_embedder, embed, item_text, load_embedder,
                                    save_embedder, takes_images)

RED = Image.new("RGB", (120, 90), (220, 20, 20))
BLUE = Image.new("RGB", (64, 64), (10, 10, 220))


@pytest.mark.parametrize("kind, tower", [("dual", "tiny"), ("dual", "minilm"),
                                         ("vlm2vec", "tiny")])
def test_backbone_trains_and_round_trips(kind, tower, model_cache, tmp_path):
    config = load_config(None, [f"models.embedder={kind}", f"models.text_tower={tower}"])
    model = build_embedder(config.models, model_cache)
    inputs = [EmbedInput("bravo apple juice", RED), EmbedInput("arla milk"), EmbedInput("", BLUE)]
    out = model(**model.collate(inputs))
    assert out.shape == (3, 256)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    out[:, 0].sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    before = embed(model, inputs)
    reloaded = load_embedder(save_embedder(model, tmp_path / "export"))
    assert np.allclose(before, embed(reloaded, inputs), atol=1e-5)


def test_the_image_changes_the_embedding(model_cache):
    model = build_embedder(load_config(None, ["models.text_tower=tiny"]).models, model_cache)
    red, blue = embed(model, [EmbedInput("milk", RED), EmbedInput("milk", BLUE)])
    assert not np.allclose(red, blue, atol=1e-4)


def test_a_text_only_dual_embedder_has_no_image_tower(model_cache, tmp_path):
    """A text-only catalog: no image tower is built, trained or saved, and an image is refused
    with a reason instead of being embedded by a tower nobody trained."""
    config = load_config(None, ["models.text_tower=tiny"]).models
    text_only = build_embedder(config, model_cache, with_images=False)
    full = build_embedder(config, model_cache)
    assert text_only.vision is None and text_only.image_head is None
    assert sum(p.numel() for p in text_only.parameters()) < \
        sum(p.numel() for p in full.parameters())
    assert not any(name.startswith(("vision.", "image_head.")) for name, _ in
                   text_only.named_parameters())
    inputs = [EmbedInput("arla milk"), EmbedInput("bravo apple juice")]
    before = embed(text_only, inputs)
    export = save_embedder(text_only, tmp_path / "export")
    assert not (export / "vision").exists()
    assert not takes_images(export)
    assert takes_images(save_embedder(full, tmp_path / "full"))
    reloaded = load_embedder(export)
    assert reloaded.vision is None
    assert np.allclose(before, embed(reloaded, inputs), atol=1e-5)
    with pytest.raises(ValueError, match="no image tower"):
        embed(reloaded, [EmbedInput("milk", RED)])


def test_empty_input_is_rejected(model_cache):
    model = build_embedder(load_config(None, ["models.text_tower=tiny"]).models, model_cache)
    with pytest.raises(ValueError, match="needs text or an image"):
        model.collate([EmbedInput("")])


def test_load_embedder_explains_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an exported afmrl embedder"):
        load_embedder(tmp_path)


def test_item_text_puts_attributes_first():
    assert item_text("Arla Milk", "Fresh milk", "colour: red") == \
        "colour: red | Arla Milk | Fresh milk"
    assert item_text("", "", "") == ""


@pytest.mark.parametrize("kind", ["dual", "vlm2vec"])
def test_the_seed_gives_the_same_weights_whether_or_not_the_towers_were_cached(kind, tmp_path):
    """The first build in a fresh cache makes the tiny towers (drawing from the RNG); later
    builds load them. Every run of one config must start from the same weights regardless."""
    config = load_config(None, [f"models.embedder={kind}", "models.text_tower=tiny",
                                "models.lora_rank=4"]).models
    first = build_embedder(config, tmp_path / "cache").state_dict()  # cache miss
    second = build_embedder(config, tmp_path / "cache").state_dict()  # cache hit
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.mark.parametrize("kind", ["dual", "vlm2vec"])
def test_an_export_is_the_same_bytes_whether_or_not_the_model_encoded_first(kind, model_cache,
                                                                            tmp_path):
    """A run resumed after a kill exports without encoding anything first; its tokenizer files
    must equal an uninterrupted run's (a fast tokenizer saved the state of its last call)."""
    config = load_config(None, [f"models.embedder={kind}", "models.text_tower=tiny"]).models
    model = build_embedder(config, model_cache)
    fresh = save_embedder(model, tmp_path / "fresh")
    embed(model, [EmbedInput("bravo apple juice", RED), EmbedInput("arla milk")])
    used = save_embedder(model, tmp_path / "used")
    files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(used) for p in used.rglob("*") if p.is_file())
    assert [f for f in files if (fresh / f).read_bytes() != (used / f).read_bytes()] == []
