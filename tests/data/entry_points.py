"""Checks of the ``python -m custom.data.<dataset>`` entry points (``python -m scripts.data.<dataset>`` from a bundle
folder or an exported bundle), shared by ``tests/data/test_<dataset>.py``.

Imported as ``from entry_points import ...``: tests/ has no ``__init__.py`` and pytest's default ``prepend`` import mode
puts the test file's folder on ``sys.path``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _env_without_repo() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _prepare(command: Sequence[str], args: Sequence[str], dst: Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """``python -m <command> <args> --dst dst`` from ``cwd``: succeeds, prints the datalist's path; returns its text."""
    proc = subprocess.run(
        [sys.executable, "-m", *command, *args, "--dst", str(dst)],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(dst / "datalist.json")
    return (dst / "datalist.json").read_text()


def check_matches_cli(dataset: str, args: Sequence[str], tmp_path: Path, bad: Sequence[str], message: str) -> None:
    """``python -m custom.data.<dataset> args`` writes the datalist that ``dycon prepare <dataset> args`` writes;
    with the extra options ``bad`` it fails with the one line ``python -m custom.data.<dataset>: error: <message>``,
    exit status 2, and writes nothing."""
    module = _prepare([f"custom.data.{dataset}"], args, tmp_path / "module", REPO)
    cli = _prepare(["custom", "prepare", dataset], args, tmp_path / "cli", REPO)
    assert module == cli
    proc = subprocess.run(
        [sys.executable, "-m", f"custom.data.{dataset}", *args, *bad, "--dst", str(tmp_path / "bad")],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert f"python -m custom.data.{dataset}: error: {message}" in proc.stderr
    assert not (tmp_path / "bad").exists()


def check_help_from_bundle_folder(dataset: str) -> None:
    """As the bundle's README documents it: ``python -m scripts.data.<dataset> --help`` from ``bundles/dycon_<dataset>``
    (whose ``scripts`` links to ``custom``), without PYTHONPATH."""
    proc = subprocess.run(
        [sys.executable, "-m", f"scripts.data.{dataset}", "--help"],
        capture_output=True, text=True, cwd=REPO / "bundles" / f"dycon_{dataset}", env=_env_without_repo(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr  # fire writes its help to stderr
    assert f"scripts.data.{dataset}" in out and "--labeled" in out


def check_exported_bundle(dataset: str, args: Sequence[str], tmp_path: Path) -> None:
    """``dycon export`` carries the bundle's data preparation (with the split lists it reads): ``python -m
    scripts.data.<dataset> args`` run from the export, without PYTHONPATH, uses the export's own copy and writes what
    ``dycon prepare <dataset> args`` writes."""
    from custom.export import export_bundle

    bundle = export_bundle(f"dycon_{dataset}", tmp_path / "dist")
    env = _env_without_repo()
    exported = _prepare([f"scripts.data.{dataset}"], args, tmp_path / "export", bundle, env)
    assert exported == _prepare(["custom", "prepare", dataset], args, tmp_path / "cli", REPO, env)
    proc = subprocess.run(
        [sys.executable, "-c", f"import scripts.data.{dataset} as m; print(m.__file__)"],
        capture_output=True, text=True, cwd=bundle, env=env, timeout=60,
    )  # fmt: skip
    assert Path(proc.stdout.strip()) == bundle / "scripts" / "data" / f"{dataset}.py", proc.stderr
