"""The split contract of training data: pairs and the BM25 corpus never see a test row."""
import json

import numpy as np
import pandas as pd
import pytest

from afmrl.data.schema import validate_catalog
from afmrl.extract.sft import teacher_examples
from afmrl.train.data import bm25_corpus, training_pairs

KEYS = ("category", "brand")


def _catalog():
    """Two products with catalog items and train/val/test rows, plus catalog-less products
    whose train rows pair among themselves; every test row carries the token 'leak'."""
    rows = []
    for product in range(4):
        has_item = product < 2
        if has_item:
            rows.append((f"c{product}", product, f"catalog item {product}", "catalog"))
        for split, count in (("train", 2), ("val", 1), ("test", 2)):
            for n in range(count):
                word = "leak" if split == "test" else split
                rows.append((f"{split}{product}_{n}", product, f"{word} offer {product}", split))
    frame = pd.DataFrame(rows, columns=["item_id", "group_id", "title", "split"])
    frame["attributes"] = [json.dumps({"category": t.split()[0], "brand": f"b{g}"})
                           for t, g in zip(frame["title"], frame["group_id"])]
    return validate_catalog(frame, check_images=False)


def test_pairs_come_from_train_rows_only():
    catalog = _catalog()
    pairs = training_pairs(catalog, KEYS, with_attributes=True, splits=("train",))
    split_of = dict(zip(catalog["item_id"], catalog["split"]))
    assert {split_of[i] for i in pairs.query_item_ids} == {"train"}
    # Products with a catalog item pair with it; the others pair train rows among themselves.
    assert {split_of[i] for i in pairs.candidate_item_ids} == {"catalog", "train"}
    assert sorted(pairs.query_item_ids) == sorted(catalog.loc[catalog["split"] == "train",
                                                               "item_id"])
    for query, candidate, product in zip(pairs.query_item_ids, pairs.candidate_item_ids,
                                         pairs.product_ids):
        assert query != candidate
        assert catalog.set_index("item_id").loc[[query, candidate], "group_id"].tolist() == \
            [product, product]
    texts = [x.text for x in pairs.queries + pairs.candidates] + pairs.attribute_texts
    assert not any("leak" in t for t in texts)
    test_hashes = set(catalog.loc[catalog["split"] == "test", "content_hash"])
    used = set(catalog.set_index("item_id").loc[pairs.query_item_ids + pairs.candidate_item_ids,
                                                 "content_hash"])
    assert not used & test_hashes


@pytest.mark.parametrize("split", ["val", "test"])
def test_val_and_test_can_never_be_pair_splits(split):
    with pytest.raises(ValueError, match="may only come from"):
        training_pairs(_catalog(), KEYS, False, splits=("train", split))


def test_bm25_corpus_has_no_test_rows():
    corpus = bm25_corpus(_catalog(), KEYS)
    assert corpus and not any("leak" in text for text in corpus)
    assert any("category: catalog" in text for text in corpus)  # catalog rows are in it


def test_sft_examples_have_no_test_rows(tmp_path):
    """Even a teacher file that labels every row (test rows included) teaches no test row."""
    catalog = _catalog()
    teacher = tmp_path / "teacher.jsonl"
    teacher.write_text("\n".join(json.dumps({"item_id": i, "attributes": a}) for i, a in
                                 zip(catalog["item_id"], catalog["attributes"])))
    examples = teacher_examples(catalog, KEYS, str(teacher))
    assert examples
    assert not any("leak" in e.target or "leak" in e.item.title for e in examples)


def test_catalog_pairs_are_an_items_image_and_its_own_text(tmp_path):
    from PIL import Image

    image = tmp_path / "item.png"
    Image.new("RGB", (8, 8), "red").save(image)
    frame = pd.DataFrame({"item_id": ["a", "b"], "group_id": [1, 2],
                          "title": ["red dress", "blue dress"], "image_uri": [str(image), ""],
                          "split": ["catalog", "catalog"]})
    pairs = training_pairs(validate_catalog(frame), KEYS, False, splits=("catalog",))
    assert pairs.query_item_ids == ["a"] and pairs.candidate_item_ids == ["a"]  # b has no image
    assert pairs.queries[0].image == str(image) and pairs.queries[0].text == ""
    assert pairs.candidates[0].text == "red dress" and pairs.candidates[0].image is None
    assert np.array_equal(pairs.product_ids, [1])
