"""Untrusted input checks: image paths stay inside the image root, ids and filters are sane."""
from __future__ import annotations

import pytest

from afmrl.extract.schema import DEFAULT_ATTRIBUTE_KEYS
from afmrl.serve.validation import (ApiError, check_attributes, check_filters, check_item_id,
                                    check_k, resolve_image_path)


@pytest.fixture
def roots(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.jpg").write_bytes(b"x")
    (root / "out").symlink_to(tmp_path / "secret.jpg")
    (root / "in").symlink_to(root / "sub" / "a.jpg")
    (root / "dir-out").symlink_to(tmp_path)
    return root


@pytest.mark.parametrize("path", ["sub/a.jpg", "in", "./sub/../sub/a.jpg"])
def test_paths_inside_the_root_resolve(roots, path):
    assert resolve_image_path(path, str(roots)) == (roots / "sub" / "a.jpg").resolve()


def test_absolute_paths_inside_the_root_are_accepted(roots):
    assert resolve_image_path(str(roots / "sub" / "a.jpg"), str(roots)).is_file()


@pytest.mark.parametrize("path", ["../secret.jpg", "out", "dir-out/secret.jpg",
                                  "sub/../../secret.jpg", "/etc/passwd", "sub", "missing.jpg",
                                  "a\0b"])
def test_escapes_and_non_files_are_refused(roots, path):
    with pytest.raises(ApiError) as error:
        resolve_image_path(path, str(roots))
    assert error.value.status == 404 and str(roots.parent) not in error.value.message


def test_paths_are_refused_without_an_image_root(roots):
    with pytest.raises(ApiError, match="serve.image_root"):
        resolve_image_path("sub/a.jpg", None)


@pytest.mark.parametrize("item_id", ["iconic/Bravo-Apple-Juice", "a", "x.y~z_1-2/b"])
def test_catalog_style_ids_are_valid(item_id):
    assert check_item_id(item_id) == item_id


@pytest.mark.parametrize("item_id", ["", "a b", "a//b", "/a", "a/", "../a", "a/./b", "a/image",
                                     "é", "x" * 201])
def test_bad_ids_are_422(item_id):
    with pytest.raises(ApiError) as error:
        check_item_id(item_id)
    assert error.value.status == 422


def test_k_filters_and_attributes():
    assert check_k(5, 10) == 5
    for k in (0, 11, -1):
        with pytest.raises(ApiError, match="1..10"):
            check_k(k, 10)
    assert check_filters({"colour": " Red "}, DEFAULT_ATTRIBUTE_KEYS) == {"colour": "red"}
    with pytest.raises(ApiError, match="unknown filter key"):
        check_filters({"shape": "round"}, DEFAULT_ATTRIBUTE_KEYS)
    with pytest.raises(ApiError, match="empty"):
        check_filters({"colour": "  "}, DEFAULT_ATTRIBUTE_KEYS)
    assert check_attributes({"brand": "Arla ", "size": ""}, DEFAULT_ATTRIBUTE_KEYS) == \
        {"brand": "arla"}
    with pytest.raises(ApiError, match="unknown attribute key"):
        check_attributes({"price": "3"}, DEFAULT_ATTRIBUTE_KEYS)
