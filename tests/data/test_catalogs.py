"""Catalog schema, adapters for the shared data sets, and bad input."""
import json

import pandas as pd
import pytest

from afmrl.config import DataConfig
from afmrl.data import (CatalogError, grocery_catalog, load_catalog, pricerunner_catalog,
                        read_catalog_file)
from afmrl.data.images import ImageError, decode_image, load_image
from afmrl.data.catalogs import PRICERUNNER_SPLIT, cluster_split, duplicate_ids
from afmrl.data.schema import CATALOG_COLUMNS, validate_catalog


def test_grocery_adapter(shared_data):
    catalog = grocery_catalog(shared_data, check_images=False)
    assert list(catalog.columns) == list(CATALOG_COLUMNS)
    assert (catalog["split"] == "catalog").sum() == 81
    assert catalog["group_id"].nunique() == 81
    assert catalog["coarse_group"].nunique() == 43
    assert (catalog["error"] == "").all()
    assert catalog["content_hash"].is_unique
    # Catalog titles name the product kind ("green apple" must find Granny Smith by title);
    # a title holding it already ("Watermelon": melon, "Passion Fruit") is left as it is.
    title = catalog.set_index("item_id")["title"]
    assert title["iconic/Granny-Smith"] == "Granny Smith Apple"
    assert title["iconic/Anjou"] == "Anjou Pear"
    assert title["iconic/Watermelon"] == "Watermelon"
    assert title["iconic/Passion-Fruit"] == "Passion Fruit"
    assert title["iconic/Arla-Standard-Milk"] == "Arla Standard Milk"


def test_mini_grocery_validates_images(mini_catalog):
    assert len(mini_catalog) == 186 + 31  # + the shop titles of its 31 products
    assert (mini_catalog["error"] == "").all()
    assert set(mini_catalog["split"]) == {"catalog", "test"}


def test_grocery_text_queries_are_the_shop_titles_of_held_out_products(shared_data):
    catalog = grocery_catalog(shared_data, check_images=False)
    text = catalog[catalog["image_uri"] == ""]
    assert len(text) == 80 and text["item_id"].str.startswith("shop/").all()
    assert (text["text"] == "").all() and (text["title"] != "").all()
    granny = text[text["item_id"] == "shop/iconic/Granny-Smith"].iloc[0]
    assert granny["title"] == "Apple Granny Smith Class 1"
    assert granny["group_id"] == catalog.loc[catalog["item_id"] == "iconic/Granny-Smith",
                                             "group_id"].item()
    # whole products, about half in val and half in test, never in train
    assert text.groupby("split")["group_id"].nunique().to_dict() == {"test": 40, "val": 40}


def test_grocery_query_photos_are_photo_only(shared_data):
    catalog = grocery_catalog(shared_data, check_images=False)
    photos = catalog[(catalog["split"] != "catalog") & (catalog["image_uri"] != "")]
    assert set(photos["split"]) == {"train", "val", "test"}
    assert (photos["title"] == "").all() and (photos["text"] == "").all()
    assert (photos["image_uri"] != "").all()
    assert (catalog.loc[catalog["split"] == "catalog", "title"] != "").all()


def test_pricerunner_adapter_splits_whole_clusters(shared_data):
    offers = pricerunner_catalog(shared_data)
    assert len(offers) == 35311
    assert offers["group_id"].nunique() == 13233
    assert "group_label" not in offers.columns  # the answer is never a model input
    # Every cluster lies in exactly one split: test products are unseen in training.
    assert (offers.groupby("group_id")["split"].nunique() == 1).all()
    shares = offers.drop_duplicates("group_id")["split"].value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.70, "val": 0.15, "test": 0.15}, abs=0.001)
    shares = dict(PRICERUNNER_SPLIT)
    assert cluster_split(offers["group_id"], shares, 0).tolist() == offers["split"].tolist()
    assert cluster_split(offers["group_id"], shares, 1).tolist() != offers["split"].tolist()


def test_max_groups_keeps_whole_products(shared_data):
    from afmrl.config import load_config
    from afmrl.data import load_catalog

    config = load_config(None, [f"data.root={shared_data}", "data.catalog=pricerunner",
                                "data.max_groups=500"])
    sample = load_catalog(config.data)
    assert sample["group_id"].nunique() == 500
    raw = pd.read_csv(shared_data / "pricerunner" / "items.csv", usecols=["group_id"])
    sizes = raw["group_id"].value_counts()
    kept = sample["group_id"].value_counts()
    assert (kept == sizes[kept.index]).all()  # every offer of a kept cluster


def _frame(**overrides):
    rows = {"item_id": ["a", "b"], "group_id": [1, 2], "title": ["red dress", "blue dress"]}
    rows.update(overrides)
    return pd.DataFrame(rows)


def test_missing_column_and_duplicates_raise():
    with pytest.raises(CatalogError, match="missing required column"):
        validate_catalog(_frame().drop(columns=["group_id"]))
    with pytest.raises(CatalogError, match="duplicate item_id"):
        validate_catalog(_frame(item_id=["a", "a"]))
    with pytest.raises(CatalogError, match="must be an integer"):
        validate_catalog(_frame(group_id=[1, "x"]))


def test_row_errors_are_kept_not_dropped(tmp_path, shared_data):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff not really a jpeg")
    frame = _frame(item_id=["a", "b", "c", "d"], group_id=[1, 2, 3, 4],
                   title=["ok", "", "photo", "gone"],
                   image_uri=["", "", str(corrupt), str(tmp_path / "missing.jpg")])
    out = validate_catalog(frame)
    assert len(out) == 4
    assert out["error"].tolist()[0] == ""
    assert out["error"].tolist()[1] == "empty title and no image"
    assert "not a readable image" in out["error"].tolist()[2]
    assert "not found" in out["error"].tolist()[3]


def test_content_hash_tracks_content(tmp_path):
    first = validate_catalog(_frame())
    second = validate_catalog(_frame(title=["red dress", "blue dress v2"]))
    assert first["content_hash"][0] == second["content_hash"][0]
    assert first["content_hash"][1] != second["content_hash"][1]


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_read_catalog_file_with_ray_data(tmp_path, ray_local, suffix):
    frame = _frame(text=["v-neck", "round neck"])
    path = tmp_path / f"catalog{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in frame.to_dict("records")))
    else:
        frame.to_csv(path, index=False)
    out = read_catalog_file(path).to_pandas()
    assert sorted(out["item_id"]) == ["a", "b"]
    assert set(CATALOG_COLUMNS) <= set(out.columns)


def test_read_catalog_file_errors(tmp_path, ray_local):
    with pytest.raises(CatalogError, match="not found"):
        read_catalog_file(tmp_path / "nope.parquet")
    bad = tmp_path / "catalog.txt"
    bad.write_text("x")
    with pytest.raises(CatalogError, match="unsupported catalog format"):
        read_catalog_file(bad)
    dup = tmp_path / "dup.csv"
    _frame(item_id=["a", "a"]).to_csv(dup, index=False)
    with pytest.raises(CatalogError, match="duplicate item_id"):
        read_catalog_file(dup)


def test_duplicate_ids_are_counted_across_blocks(ray_local):
    import ray.data

    ids = [f"i{k}" for k in range(40)] + ["i3", "i3", "i39"]  # repeats land in other blocks
    frame = pd.DataFrame({"item_id": ids, "group_id": range(len(ids)), "title": "x"})
    count, examples = duplicate_ids(ray.data.from_pandas(frame).repartition(4))
    assert count == 3 and sorted(examples) == ["i3", "i39"]
    unique = ray.data.from_pandas(frame.iloc[:40]).repartition(4)
    assert duplicate_ids(unique) == (0, [])


def test_load_catalog_names_the_file_with_duplicate_ids(tmp_path, ray_local):
    path = tmp_path / "shop.csv"
    pd.DataFrame({"item_id": [7, 8, 7], "group_id": [1, 2, 3], "title": ["a", "b", "c"]}
                 ).to_csv(path, index=False)
    with pytest.raises(CatalogError, match=rf"{path}: 1 duplicate item_id\(s\), e.g. \['7'\]"):
        load_catalog(DataConfig(catalog=str(path)))
    with pytest.raises(CatalogError, match=rf"{path}: 1 duplicate item_id\(s\), e.g. \['7'\]"):
        read_catalog_file(path)


def test_images_are_resized_and_bad_ones_named(tmp_path, mini_catalog):
    image = load_image(mini_catalog["image_uri"][0], max_side=64)
    assert max(image.size) == 64 and image.mode == "RGB"
    with pytest.raises(ImageError, match="empty image"):
        decode_image(b"", 64, "upload")
    with pytest.raises(ImageError, match="upload: not a readable image"):
        decode_image(b"GIF89a garbage", 64, "upload")


def test_max_items_is_a_seeded_sample_across_products(shared_data):
    from afmrl.config import load_config
    from afmrl.data import load_catalog

    config = load_config(None, [f"data.root={shared_data}", "data.max_items=300"])
    first, second = load_catalog(config.data), load_catalog(config.data)
    assert first["item_id"].tolist() == second["item_id"].tolist()
    train = first[first["split"] == "train"]
    assert len(train) == 300 and train["group_id"].nunique() > 60  # not the first few products
    assert (first["split"] == "catalog").sum() == 81
    test = first[first["split"] == "test"]  # 300 photos, and the text queries are not crowded out
    assert (test["image_uri"] != "").sum() == 300 and (test["image_uri"] == "").sum() == 40
