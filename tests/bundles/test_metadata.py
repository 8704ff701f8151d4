"""Model-zoo metadata rules of every bundle (README, "Deployment and scale"): semantic version equal to the newest
changelog entry, changelog newest first, the pinned versions of pyproject.toml, required_packages_version covering
every third-party package the exported scripts/ and the configs use, a spatial_shape the network accepts."""

from __future__ import annotations

import ast
import json
import re
import sys
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


#: import name -> distribution name where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "skimage": "scikit-image", "ignite": "pytorch-ignite", "nrrd": "pynrrd",
                 "PIL": "pillow", "sklearn": "scikit-learn"}  # fmt: skip
#: packages the configs use through MONAI / ignite / the bundle CLI rather than through an import in scripts/:
#: ProgressBar (tqdm), TensorBoardStatsHandler (tensorboard), KeepLargestConnectedComponentd on the CPU
#: (scikit-image), SaveImaged (nibabel), the yaml configs and ``python -m monai.bundle`` (pyyaml, fire)
CONFIG_PACKAGES = {"tqdm", "tensorboard", "scikit-image", "nibabel", "pyyaml", "fire"}


def _top_level_imports(scripts: Path) -> set[str]:
    """Top-level names of the absolute imports anywhere in ``scripts`` (also inside functions), standard library
    excluded."""
    found: set[str] = set()
    for path in scripts.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "__future__"}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_required_packages_cover_imports(bundle: str, tmp_path: Path):
    """Every third-party package that the exported scripts/ import (AST scan: every module, every function), and
    every package the configs load through MONAI / ignite, is pinned in the metadata (the zoo installs only those:
    tests/bundles/test_zoo_ci.py proves it in such an environment)."""
    from custom.export import export_bundle

    out = export_bundle(bundle, tmp_path)
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    declared = {"monai", "torch", "numpy"} | {name.lower() for name in meta["required_packages_version"]}
    used = {DISTRIBUTIONS.get(name, name).lower() for name in _top_level_imports(out / "scripts")}
    assert "pytorch-ignite" in used and "scipy" in used  # the scan sees the code
    assert sorted(used - declared) == [], f"imported but not in required_packages_version of {bundle}"
    assert sorted(CONFIG_PACKAGES - declared) == [], f"used by the configs but not in {bundle}'s metadata"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_spatial_shape_fits_the_unet(bundle: str):
    """UNet3D downsamples 4 times (sizes divisible by 16) and instance norm needs more than one voxel at the bottom
    (at least 32): the zoo's verify_net_in_out builds its fake input at n=1 (monai.bundle.scripts)."""
    from monai.bundle.scripts import _get_fake_spatial_shape

    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    for io in ("inputs", "outputs"):
        for spec in meta["network_data_format"][io].values():
            for n in (1, 2, 3):
                shape = _get_fake_spatial_shape(spec["spatial_shape"], n=n)
                assert len(shape) == 3 and all(s % 16 == 0 and s >= 32 for s in shape), (io, n, shape)
