"""The tantivy lexical index: product-code analysis, incremental add/remove, save/load and the
manifest checks that keep it in step with the FAISS index beside it."""
import json

import numpy as np
import pytest

from afmrl.index.faiss_index import IndexMismatchError
from afmrl.index.lexical import (MANIFEST, Analysis, ShardedLexicalIndex, analyse,
                                 attribute_prose, items_fingerprint)
from afmrl.index.sharded import shard_of

ROWS = {
    "item_id": ["cam-1", "cam-2", "cam-3", "phone-64", "phone-128", "milk"],
    "title": ["Sony Cyber-shot DSC-W120P compact camera", "Sony Cyber-shot DSC-W130 camera",
              "Sony Cyber-shot DSC-W120 camera", "Samsung Galaxy S9 64GB Midnight Black",
              "Samsung Galaxy S9 128GB Midnight Black", "Arla organic milk 1.5 l"],
    "text": ["", "", "", "", "", "pasteurised"],
    "attribute_text": ["", "", "", "black", "black", "red carton"],
}
HASHES = [f"h{i}" for i in range(len(ROWS["item_id"]))]


def top(index, query, k=1, attributes=None):
    return index.search([query], k, None if attributes is None else [attributes])[1][0].tolist()


@pytest.mark.parametrize("spelling", ["DSC-W120P", "dscw120p", "dsc w120p", "Dsc-w120p"])
def test_every_spelling_of_a_product_code_finds_it_first(spelling):
    index = ShardedLexicalIndex.build(ROWS, num_shards=1)
    assert top(index, spelling) == ["cam-1"]


def test_codes_field_joins_adjacent_words_so_spellings_share_a_token():
    tokens = [set(analyse(s, "", "", Analysis())["codes"]) for s in
              ("DSC-W120P", "dscw120p", "dsc w120p")]
    assert set.intersection(*tokens) == {"dscw120p"}


def test_capacity_decides_between_variants_and_fields_are_searched():
    index = ShardedLexicalIndex.build(ROWS, num_shards=1)
    assert top(index, "galaxy s9 128gb") == ["phone-128"]
    assert top(index, "galaxy s9 64gb") == ["phone-64"]
    assert top(index, "pasteurised") == ["milk"]  # the text field
    assert top(index, "", attributes="red carton") == ["milk"]  # the attribute field
    scores, ids = index.search(["zzzz qqqq"], 3)  # nothing matches: all padding
    assert ids[0].tolist() == ["", "", ""] and np.isneginf(scores).all()


def test_shards_follow_the_faiss_routing():
    index = ShardedLexicalIndex.build(ROWS, num_shards=3)
    ids = np.array(ROWS["item_id"])
    for shard, part in enumerate(index.shards):
        assert sorted(part.ids.tolist()) == sorted(ids[shard_of(ids, 3) == shard].tolist())


def test_add_remove_save_load_round_trip(tmp_path):
    path = tmp_path / "lexical"
    index = ShardedLexicalIndex.build(ROWS, 2, path=path, content_hashes=HASHES)
    index.save(path)
    loaded = ShardedLexicalIndex.load(path, items_fingerprint(ROWS["item_id"], HASHES), 2)
    assert len(loaded) == 6 and top(loaded, "dsc w130", 3) == top(index, "dsc w130", 3)

    loaded.remove(["cam-2"])
    loaded.add({"item_id": ["cam-4"], "title": ["Sony DSC-W130 silver"]})
    loaded.commit()
    assert top(loaded, "dsc w130") == ["cam-4"]
    with pytest.raises(ValueError, match="duplicate item ids"):
        loaded.add({"item_id": ["cam-4"], "title": ["again"]})
    loaded.save(path)
    reopened = ShardedLexicalIndex.load(path)
    assert "cam-2" not in top(reopened, "dsc w130", 6) and top(reopened, "dsc w130") == ["cam-4"]
    assert len(reopened) == 6


def test_private_copy_leaves_the_saved_index_untouched(tmp_path):
    path = tmp_path / "lexical"
    ShardedLexicalIndex.build(ROWS, 2, path=path).save(path)
    replica = ShardedLexicalIndex.load(path, private_copy=tmp_path / "replica")
    replica.remove(["milk"])
    replica.commit()
    assert top(replica, "arla milk") != ["milk"]
    assert top(ShardedLexicalIndex.load(path), "arla milk") == ["milk"]


def test_private_copies_take_writes_at_the_same_time(tmp_path):
    """Two Serve replicas each hold a private copy and apply the same update concurrently: their
    writer locks must be their own (hard-linked lock files made one fail with LockBusy)."""
    path = tmp_path / "lexical"
    ShardedLexicalIndex.build(ROWS, 2, path=path).save(path)
    first = ShardedLexicalIndex.load(path, private_copy=tmp_path / "first")
    second = ShardedLexicalIndex.load(path, private_copy=tmp_path / "second")
    for replica in (first, second):  # both writers open before either commits
        replica.remove(["milk"])
        replica.add({"item_id": ["milk-2"], "title": ["Arla milk 1l"]})
    for replica in (first, second):
        replica.commit()
        assert top(replica, "arla milk") == ["milk-2"]
    assert top(ShardedLexicalIndex.load(path), "arla milk") == ["milk"]


def test_load_refuses_a_mismatched_manifest(tmp_path):
    path = tmp_path / "lexical"
    ShardedLexicalIndex.build(ROWS, 2, path=path, content_hashes=HASHES).save(path)
    changed = items_fingerprint(ROWS["item_id"], ["other"] + HASHES[1:])
    with pytest.raises(IndexMismatchError, match="other catalog rows"):
        ShardedLexicalIndex.load(path, expected_fingerprint=changed)
    with pytest.raises(IndexMismatchError, match="2 shards but the FAISS index beside it 4"):
        ShardedLexicalIndex.load(path, expected_shards=4)
    manifest = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexMismatchError, match="rebuild the index"):
        ShardedLexicalIndex.load(path)
    (path / MANIFEST).write_text(json.dumps({**manifest, "item_count": 5}))
    with pytest.raises(IndexMismatchError, match="inconsistent"):
        ShardedLexicalIndex.load(path)
    with pytest.raises(FileNotFoundError, match="not a saved afmrl lexical index"):
        ShardedLexicalIndex.load(tmp_path)


def test_saving_an_in_memory_index_is_refused(tmp_path):
    with pytest.raises(ValueError, match="build it with path="):
        ShardedLexicalIndex.build(ROWS, 1).save(tmp_path)


def test_attribute_prose_keeps_values_in_key_order():
    assert attribute_prose('{"colour": "red", "brand": "arla"}', ["brand", "colour"]) == \
        "arla red"
    assert attribute_prose({}, None) == ""
