"""Importers on small real-shaped inputs: Magellan pair folders (quotes, newlines, commas and
non-ASCII text inside fields, string ids colliding across tables) and image folders."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from afmrl.cli import main as cli_main
from afmrl.data.importers import ImportFormatError, import_folder, import_pairs
from afmrl.data.schema import CATALOG_COLUMNS

TABLE_A = [
    ["id", "title", "brand", "description", "price"],
    ["x1", 'Sony Cyber-shot "DSC-W120P", pink', "Sony",
     "Compact camera,\n7.2 MP with a 4x zoom and a very long description line here", "129.99"],
    ["x2", "Crème brûlée torch — Küchenprofi", "Küchenprofi", "", "19,95"],
    ["7", "Apple iPhone 8 Plus 64GB Silver", "Apple", "", ""],
    ["lonely", "Unpaired kettle 1.7 l", "", "no pair at all, a gallery distractor only", "9"],
    ["x5", "Samsung Galaxy S9 SM-G960F", "Samsung", "", "499"],
]
TABLE_B = [
    ["id", "title", "brand", "description", "price"],
    ["7", "sony dscw120p digital camera pink", "sony", "", "120.00"],
    ["b2", "Küchenprofi crème brûlée burner", "", "Gas burner for desserts, refillable\nand "
     "safe to use in every kitchen drawer", ""],
    ["b3", "iphone 8 plus 64 gb silver", "apple", "", "700"],
    ["b4", "galaxy s9 64gb midnight black", "samsung", "", ""],
]


def write_csv(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)


def write_pair_folder(root: Path, test=(("x1", "7", "1"), ("x1", "b3", "0")),
                      valid=(("x2", "b2", "1"),), train=(("7", "b3", "1"), ("x5", "b4", "1"))):
    root.mkdir(parents=True, exist_ok=True)
    write_csv(root / "tableA.csv", TABLE_A)
    write_csv(root / "tableB.csv", TABLE_B)
    for name, pairs in (("test.csv", test), ("valid.csv", valid), ("train.csv", train)):
        write_csv(root / name, [["ltable_id", "rtable_id", "label"], *map(list, pairs)])
    return root


def test_pairs_protocol_groups_and_splits(tmp_path):
    frame = import_pairs(write_pair_folder(tmp_path / "em")).set_index("item_id")
    assert list(frame.reset_index().columns) == list(CATALOG_COLUMNS)
    # Ids collide across tables ("7"): prefixes keep both.
    assert {"a:7", "b:7"} <= set(frame.index)
    # Splits: every tableB record is gallery; tableA by its positive pair's file.
    assert (frame.loc[[i for i in frame.index if i.startswith("b:")], "split"] == "catalog").all()
    assert frame.loc["a:x1", "split"] == "test"
    assert frame.loc["a:x2", "split"] == "val"
    assert frame.loc["a:7", "split"] == "train" and frame.loc["a:x5", "split"] == "train"
    assert frame.loc["a:lonely", "split"] == "catalog"
    # Products = connected components of the positive pairs (a negative pair joins nothing).
    group = frame["group_id"]
    assert group["a:x1"] == group["b:7"] != group["b:b3"]
    assert group["a:7"] == group["b:b3"] and group["a:x5"] == group["b:b4"]
    assert group["a:lonely"] not in set(group.drop("a:lonely"))
    assert frame["error"].eq("").all()


def test_pairs_fields_title_text_attributes(tmp_path):
    frame = import_pairs(write_pair_folder(tmp_path / "em")).set_index("item_id")
    row = frame.loc["a:x1"]
    assert row["title"] == 'Sony Cyber-shot "DSC-W120P", pink'
    assert "129.99" not in row["title"] and "129.99" not in row["text"]  # price: attribute only
    assert json.loads(row["attributes"]) == {"brand": "Sony", "price": "129.99"}
    assert "brand: Sony" in row["text"] and "Compact camera, 7.2 MP" in row["text"]
    assert frame.loc["a:x2", "title"] == "Crème brûlée torch — Küchenprofi"
    assert json.loads(frame.loc["a:x2", "attributes"]) == {"brand": "Küchenprofi",
                                                           "price": "19,95"}
    assert frame.loc["a:7", "text"] == "brand: Apple"  # empty values leave no trace
    assert frame.loc["b:b2", "attributes"] == ""  # only a long description: text, no attributes


def test_title_falls_back_to_first_text_column_and_category_is_coarse_group(tmp_path):
    root = tmp_path / "em"
    root.mkdir()
    write_csv(root / "tableA.csv", [["id", "price", "productName", "category"],
                                    ["1", "3.5", "usb cable 2m", "Cables"]])
    write_csv(root / "tableB.csv", [["id", "price", "productName", "category", "ean"],
                                    ["1", "4", "USB-Kabel 2 m", "Cables", "4006381333931"],
                                    ["2", "9", "hdmi switch", "Video", ""]])
    write_csv(root / "test.csv", [["ltable_id", "rtable_id", "label"], ["1", "1", "1"]])
    frame = import_pairs(root).set_index("item_id")
    assert frame.loc["a:1", "title"] == "usb cable 2m"
    assert frame.loc["b:2", "coarse_group"] == "Video"
    assert frame.loc["b:1", "text"] == "category: Cables; ean: 4006381333931"  # B-only column kept
    assert frame.loc["a:1", "coarse_group_id"] == frame.loc["b:1", "coarse_group_id"] != \
        frame.loc["b:2", "coarse_group_id"]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: write_csv(r / "tableA.csv", [["key", "title"], ["1", "a"]]),
     r"tableA.csv:1: no 'id' column"),
    (lambda r: write_csv(r / "test.csv", [["ltable_id", "rtable_id", "label"], ["x1", "7", "1"],
                                          ["x1", "nope", "0"]]),
     r"test.csv:3: rtable_id 'nope' is not an id of tableB.csv"),
    (lambda r: write_csv(r / "train.csv", [["ltable_id", "rtable_id", "label"],
                                           ["7", "b3", "yes"]]),
     r"train.csv:2: label must be 0 or 1, got 'yes'"),
    (lambda r: write_csv(r / "tableB.csv", TABLE_B + [["b3", "again", "", "", ""]]),
     r"tableB.csv:7: duplicate id 'b3' \(line 5\)"),
    (lambda r: (r / "tableA.csv").write_bytes("id,title\n1,caf\xe9\n".encode("latin-1")),
     r"tableA.csv:2: not UTF-8"),
    (lambda r: (r / "valid.csv").write_text('ltable_id,rtable_id,label\nx2,b2\n'),
     r"valid.csv:2: 2 fields, the header has 3"),
])
def test_pairs_bad_input_names_file_and_line_and_writes_nothing(tmp_path, mutate, message):
    root = write_pair_folder(tmp_path / "em")
    mutate(root)
    with pytest.raises(ImportFormatError, match=message):
        import_pairs(root)
    out = tmp_path / "catalog.parquet"
    assert cli_main(["catalog", "import-pairs", str(root), "--out", str(out)]) == 2
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pairs_line_numbers_count_newlines_inside_quoted_fields(tmp_path):
    root = write_pair_folder(tmp_path / "em")
    # Row 3 of tableA (x2) starts on line 4 because x1's description spans two lines.
    write_csv(root / "tableA.csv", TABLE_A[:2] + [["", "no id", "", "", ""]])
    with pytest.raises(ImportFormatError, match=r"tableA.csv:4: empty id"):
        import_pairs(root)


def test_cli_import_pairs_end_to_end(tmp_path, capsys):
    root = write_pair_folder(tmp_path / "em")
    out = tmp_path / "out" / "catalog.parquet"
    assert cli_main(["catalog", "import-pairs", str(root), "--out", str(out)]) == 0
    frame = pd.read_parquet(out)
    assert len(frame) == len(TABLE_A) - 1 + len(TABLE_B) - 1
    assert frame["split"].value_counts().to_dict() == {"catalog": 5, "train": 2, "test": 1,
                                                       "val": 1}
    assert "9 rows" in capsys.readouterr().out


def make_folder(root: Path, products: dict[str, int], titles: dict[str, str]) -> Path:
    for name, count in products.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (32, 24), (10 * i, 80, 160)).save(folder / f"img{i}.jpg")
        if name in titles:
            (folder / "title.txt").write_text(titles[name] + "\n", encoding="utf-8")
    return root


def test_folder_seeded_split_one_gallery_image_per_product(tmp_path):
    root = make_folder(tmp_path / "photos", {"oat-milk": 7, "kaffe-é": 2, "solo": 1},
                       {"oat-milk": "Oatly Oat Drink  1 l", "kaffe-é": "Kaffe Crème"})
    frame = import_folder(root, seed=3)
    assert frame["error"].eq("").all()
    per_product = frame.groupby("group_id")["split"].agg(lambda s: sorted(s))
    assert sorted(map(tuple, per_product)) == sorted([
        ("catalog", "test"), ("catalog",),
        ("catalog", "test", "train", "train", "train", "train", "val")])
    gallery = frame[frame["split"] == "catalog"].set_index("group_id")
    assert sorted(gallery["title"]) == ["", "Kaffe Crème", "Oatly Oat Drink 1 l"]
    assert (frame.loc[frame["split"] != "catalog", "title"] == "").all()  # photos carry no title
    assert all(Path(u).is_absolute() and Path(u).is_file() for u in frame["image_uri"])
    pd.testing.assert_frame_equal(frame, import_folder(root, seed=3))
    other = import_folder(root, seed=4)
    assert not frame["split"].equals(other["split"])  # the seed decides


def test_folder_without_images_is_kept_as_an_error_row(tmp_path):
    root = make_folder(tmp_path / "photos", {"a": 2}, {})
    (root / "empty").mkdir()
    frame = import_folder(root).set_index("item_id")
    assert frame.loc["empty", "error"] == "empty title and no image"


def test_cli_import_folder_end_to_end(tmp_path, capsys):
    root = make_folder(tmp_path / "photos", {"a": 3, "b": 4}, {"a": "Product A"})
    out = tmp_path / "catalog.jsonl"
    assert cli_main(["catalog", "import-folder", str(root), "--out", str(out), "--seed", "1"]) == 0
    frame = pd.read_json(out, lines=True, dtype={"item_id": str})
    assert (frame["split"] == "catalog").sum() == 2 and len(frame) == 7
    assert "7 rows, 2 products" in capsys.readouterr().out
