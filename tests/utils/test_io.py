"""Atomic writes: a failure leaves the old content and no half-written file."""
import pytest

from afmrl.utils.io import atomic_path, atomic_write_text, fingerprint_tree


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_failed_write_keeps_old_content(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "w.bin").write_text("half")
            raise RuntimeError("crash mid-save")
    assert (target / "w.bin").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_fingerprint_changes_with_content(tmp_path):
    (tmp_path / "a").write_text("x")
    first = fingerprint_tree(tmp_path)
    (tmp_path / "a").write_text("y")
    assert fingerprint_tree(tmp_path) != first
