"""The start-up version check names what is wrong and how to fix it."""
import pytest

from afmrl.utils import versions


def test_installed_stack_passes():
    versions.check_versions()


def test_mismatch_is_explained(monkeypatch):
    monkeypatch.setattr(versions, "pinned_versions", lambda: {"torch": "9.9.9", "nonexistent-pkg": "1.0"})
    with pytest.raises(versions.EnvironmentMismatch, match=r"(?s)torch .* is installed; afmrl is "
                                                          r"tested with torch==9.9.9.*make install"):
        versions.check_versions(required=("torch", "nonexistent-pkg"))
