"""`make test` for a developer who cannot install Chromium: the browser tests skip, with the
reason, while CI (which installs it) fails without it."""

from __future__ import annotations

import pytest

import spine_pipeline_tests.conftest as root_conftest


def test_a_missing_chromium_skips_with_its_reason(request, monkeypatch, tmp_path):
    monkeypatch.setattr(root_conftest, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"could not install it \(needs root and apt"):
        request.getfixturevalue("chromium")


def test_a_missing_chromium_fails_in_ci(request, monkeypatch, tmp_path):
    monkeypatch.setattr(root_conftest, "CHROMIUM", str(tmp_path / "no-chromium"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs it"):
        request.getfixturevalue("chromium")
