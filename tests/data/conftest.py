"""Shared fixtures for the data-preparation tests: tiny synthetic LA releases (raw nrrd and h5)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from custom.data.la import synth_la, synth_la_h5

SHAPE = (48, 44, 20)  # tiny: every test stays fast


def _tree_checksums(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _leftovers(dst: Path) -> list[str]:
    """Anything named like dst (dst itself, dst.partial-*, dst.old-*) in its parent folder."""
    if not dst.parent.exists():
        return []
    return sorted(p.name for p in dst.parent.iterdir() if p.name == dst.name or p.name.startswith(dst.name + "."))


@pytest.fixture(scope="session")
def tree_checksums():
    """The function ``root -> {relative path: sha256}``."""
    return _tree_checksums


@pytest.fixture(scope="session")
def leftovers():
    """The function ``dst -> names of dst / dst.partial-* / dst.old-* present next to it``."""
    return _leftovers


@pytest.fixture(scope="session")
def raw_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic raw challenge release: 8 train + 4 test cases."""
    return synth_la(tmp_path_factory.mktemp("synth") / "raw", n_train=8, n_test=4, shape=SHAPE, seed=0)


@pytest.fixture(scope="session")
def h5_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only synthetic h5 release: 6 train + 3 test cases."""
    return synth_la_h5(tmp_path_factory.mktemp("synth") / "h5", n_train=6, n_test=3, shape=SHAPE, seed=1)


@pytest.fixture()
def h5_copy(h5_release: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic h5 release (to corrupt)."""
    return Path(shutil.copytree(h5_release, tmp_path / "h5src"))


@pytest.fixture()
def raw_copy(raw_release: Path, tmp_path: Path) -> Path:
    """A writable copy of the synthetic raw release (to corrupt)."""
    return Path(shutil.copytree(raw_release, tmp_path / "rawsrc"))
