"""Model-zoo metadata rules of every bundle (README, "Deployment and scale"): semantic version equal to the newest
changelog entry, changelog newest first, and the pinned versions of pyproject.toml."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUNDLES = sorted(p.name for p in (REPO / "bundles").glob("dycon_*"))
SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def _pins() -> dict[str, str]:
    text = (REPO / "pyproject.toml").read_text()
    deps = text[text.index("dependencies = [") : text.index("]", text.index("dependencies = ["))]
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r'"([A-Za-z0-9_.-]+)==([^"]+)"', deps)}


def test_four_bundles():
    assert BUNDLES == ["dycon_brats19", "dycon_isles22", "dycon_la", "dycon_pancreas"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_version_and_changelog(bundle: str):
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    keys = list(meta["changelog"])
    assert SEMVER.match(meta["version"]), meta["version"]
    assert keys[0] == meta["version"], "version must be the newest (first) changelog entry"
    versions = [tuple(int(x) for x in SEMVER.match(k).groups()) for k in keys]  # type: ignore[union-attr]
    assert versions == sorted(versions, reverse=True) and len(set(versions)) == len(versions), keys
    assert all(isinstance(v, str) and len(v) > 10 for v in meta["changelog"].values())


@pytest.mark.parametrize("bundle", BUNDLES)
def test_pinned_versions_match_pyproject(bundle: str):
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    pins = _pins()
    assert meta["monai_version"] == pins["monai"]
    assert meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    for package, version in meta.get("required_packages_version", {}).items():
        assert pins.get(package.lower()) == version, package
