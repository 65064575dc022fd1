"""Property-based bad input for the catalog schema and the importers (Hypothesis): every input
either imports with nothing dropped, or fails with a ``CatalogError`` naming the file/field;
row problems land in the ``error`` column. No other exception escapes."""
from __future__ import annotations

import csv
import io
import math
import unicodedata
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from afmrl.data.importers import ImportFormatError, import_pairs, read_csv_table
from afmrl.data.schema import CATALOG_COLUMNS, CatalogError, validate_catalog

PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
# Text with quotes, separators, newlines, non-ASCII and look-alike characters.
CELL = st.text(alphabet=st.sampled_from(list('ab1 ,"\n\r\té\u0065\u0301ﬁ１ß\u00a0;\'Ω')),
               max_size=12)
ID = st.text(alphabet=st.sampled_from(list("a1é\u0065\u0301ﬁ１fi")), min_size=1, max_size=3)


def write_rows(path: Path, rows: list[list[str]]) -> None:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    path.write_bytes(buffer.getvalue().encode("utf-8"))


def pair_folder(root: Path, a_rows, b_rows, pairs) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_rows(root / "tableA.csv", [["id", "title", "price"], *a_rows])
    write_rows(root / "tableB.csv", [["id", "title", "price"], *b_rows])
    write_rows(root / "test.csv", [["ltable_id", "rtable_id", "label"], *pairs])
    return root


@PROPERTY
@given(data=st.binary(max_size=400))
def test_random_bytes_never_crash_the_csv_reader(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "tableA.csv"
    path.write_bytes(data)
    try:
        table = read_csv_table(path)
    except ImportFormatError as error:
        assert str(path) in str(error)
        return
    assert all(len(row) == len(table.header) for row in table.rows)


@PROPERTY
@given(rows=st.lists(st.tuples(ID, CELL, CELL), min_size=1, max_size=6),
       b_rows=st.lists(st.tuples(ID, CELL, CELL), min_size=1, max_size=6))
def test_any_text_imports_completely_or_names_the_duplicate(tmp_path_factory, rows, b_rows):
    root = pair_folder(tmp_path_factory.mktemp("em"), rows, b_rows,
                       [[rows[0][0].strip(), b_rows[0][0].strip(), "1"]])
    try:
        frame = import_pairs(root)
    except ImportFormatError as error:
        message = str(error)
        keys = [[unicodedata.normalize("NFKC", r[0].strip()) for r in t] for t in (rows, b_rows)]
        assert ("empty id" in message or "duplicate id" in message
                or "looks identical" in message), message
        assert "tableA.csv:" in message or "tableB.csv:" in message
        assert any(len(set(k)) < len(k) or "" in k for k in keys)
        return
    assert len(frame) == len(rows) + len(b_rows)  # nothing silently dropped
    assert list(frame.columns) == list(CATALOG_COLUMNS)
    titles = dict(zip(frame["item_id"], frame["title"]))
    for prefix, table in (("a", rows), ("b", b_rows)):
        for item, title, _ in table:
            assert titles[f"{prefix}:{item.strip()}"] == " ".join(title.split())
    bad = frame[frame["error"] != ""]
    assert (bad["title"].str.strip() == "").all()  # an empty title is recorded, not dropped


@PROPERTY
@given(text=st.text(min_size=1, max_size=30), encoding=st.sampled_from(["latin-1", "utf-16",
                                                                         "cp1252", "utf-32"]))
def test_wrong_encodings_are_named(tmp_path_factory, text, encoding):
    try:
        encoded = f"id,title\n1,{text}\n".encode(encoding)
    except UnicodeEncodeError:
        assume(False)
    try:
        encoded.decode("utf-8")
        assume(False)  # also valid UTF-8: not a wrong encoding
    except UnicodeDecodeError:
        pass
    root = pair_folder(tmp_path_factory.mktemp("enc"), [["1", "x", ""]], [["1", "y", ""]],
                       [["1", "1", "1"]])
    (root / "tableB.csv").write_bytes(encoded)
    with pytest.raises(ImportFormatError, match=r"tableB.csv:\d+: not UTF-8"):
        import_pairs(root)


def test_huge_field_is_an_error_naming_the_line(tmp_path):
    root = pair_folder(tmp_path / "em", [["1", "x", ""], ["2", "y" * 200_000, ""]],
                       [["1", "z", ""]], [["1", "1", "1"]])
    with pytest.raises(ImportFormatError, match=r"tableA.csv:3: malformed CSV \(field larger"):
        import_pairs(root)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "", "None", "null"])
def test_nan_and_inf_words_are_kept_as_text(tmp_path, value):
    root = pair_folder(tmp_path / "em", [["1", value, value]], [["1", "tv", value]],
                       [["1", "1", "1"]])
    frame = import_pairs(root).set_index("item_id")
    assert frame.loc["a:1", "title"] == value
    assert frame.loc["a:1", "error"] == ("empty title and no image" if not value else "")
    if value:
        assert frame.loc["b:1", "attributes"] == f'{{"price": "{value}"}}'


@PROPERTY
@given(images=st.lists(st.binary(max_size=64), min_size=1, max_size=4),
       title=st.binary(max_size=40))
def test_folder_of_random_files_records_every_image(tmp_path_factory, images, title):
    from afmrl.data.importers import import_folder

    root = tmp_path_factory.mktemp("photos")
    product = root / "prod-ü"
    product.mkdir()
    for i, data in enumerate(images):
        (product / f"img{i}.jpg").write_bytes(data)
    (product / "title.txt").write_bytes(title)
    try:
        frame = import_folder(root)
    except ImportFormatError as error:
        assert "title.txt: not UTF-8" in str(error)
        return
    assert len(frame) == len(images)  # every file is a row; unreadable ones say why
    assert (frame["error"] != "").all()


FRAME_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))


COLUMN = st.lists(FRAME_VALUE, min_size=3, max_size=3)


@PROPERTY
@given(required=st.fixed_dictionaries({
    "item_id": st.one_of(st.lists(ID, min_size=3, max_size=3), COLUMN),
    "group_id": st.one_of(st.lists(st.integers(0, 3) | st.integers(0, 3).map(float), min_size=3,
                                   max_size=3), COLUMN),
    "title": COLUMN}),
       columns=st.dictionaries(st.sampled_from(list(CATALOG_COLUMNS) + ["extra"]), COLUMN))
def test_validate_catalog_raises_catalog_error_or_returns_the_schema(required, columns):
    columns = {**required, **columns}
    frame = pd.DataFrame(columns)
    try:
        out = validate_catalog(frame, "fuzz.parquet", check_images=False)
    except CatalogError as error:
        assert str(error).startswith("fuzz.parquet: ")
        return
    assert list(out.columns) == list(CATALOG_COLUMNS) and len(out) == len(frame)
    assert out["item_id"].is_unique and (out["item_id"] != "").all()
    for column in ("group_id", "coarse_group_id"):
        if column in columns:  # integral values only: 1.5 must not silently become 1
            assert all(float(v) == int(v) for v in frame[column])


@pytest.mark.parametrize("group_id, message", [
    (1.5, "must be an integer"), (math.inf, "must be an integer"), (math.nan, "must be an integer"),
    ("x", "must be an integer"), (2**70, "must be an integer")])
def test_non_integral_group_ids_are_named(group_id, message):
    frame = pd.DataFrame({"item_id": ["a", "b"], "group_id": [1, group_id], "title": ["x", "y"]})
    with pytest.raises(CatalogError, match=rf"cat.csv: column group_id {message}; bad rows \['b'\]"):
        validate_catalog(frame, "cat.csv", check_images=False)


def test_empty_or_missing_item_id_is_named():
    frame = pd.DataFrame({"item_id": ["a", None], "group_id": [1, 2], "title": ["x", "y"]})
    with pytest.raises(CatalogError, match=r"cat.csv: 1 empty item_id"):
        validate_catalog(frame, "cat.csv", check_images=False)
