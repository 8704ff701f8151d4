"""The model zoo's code-format checks, on custom/ as a whole and on every exported bundle.

A bundle's scripts/ is custom/ copied byte for byte (custom.export), so both must pass what a zoo pull request gets:

* ``runtests.sh --codeformat`` of the zoo: ``black --skip-magic-trailing-comma --check``, ``isort --check``,
  ``flake8`` (bugbear, comprehensions, executable, pep8-naming) with the zoo's setup.cfg / pyproject.toml, run from a
  writable copy of the zoo folder (../shared/tools/model-zoo) into which the bundles are exported;
* the hooks of the zoo's .pre-commit-config.yaml that run offline, through the executables of the pre-commit-hooks
  package (v4.6.0, the zoo's rev), in check mode, on every file of the exported bundles.

The tools are the 'lint' extra of pyproject.toml (``bash scripts/run.sh setup`` installs it), taken from the folder
of this Python (or ``DYCON_LINT_BIN``). Without the zoo copy (a user's fresh clone) the zoo checks skip and custom/
is still checked with the repository's own settings: [tool.black] / [tool.isort] of pyproject.toml (equal to the
zoo's) and the zoo's flake8 settings written out below (compared with its setup.cfg when the copy is present).
"""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("DYCON_MODEL_ZOO") or REPO.parent / "shared" / "tools" / "model-zoo")  # as scripts/run.sh
BUNDLES = sorted(p.name for p in (REPO / "bundles").glob("dycon_*"))
TOOLS = Path(os.environ.get("DYCON_LINT_BIN") or Path(sys.executable).parent)
NO_ZOO = f"no model-zoo copy at {ZOO} (a user's fresh clone still passes; the zoo's own checks need it)"

#: the zoo's setup.cfg [flake8], as command-line options (test_flake8_settings_are_the_zoos compares them)
FLAKE8_SELECT = "B,C,E,F,N,P,T4,W,B9"
FLAKE8_IGNORE = "E203,E501,E741,W503,W504,C408,N812,B023,B905,B028,B907,C419"
FLAKE8_PER_FILE = "__init__.py:F401 __main__.py:F401"
FLAKE8_ARGS = [
    "--isolated",
    f"--select={FLAKE8_SELECT}",
    "--max-line-length=120",
    f"--extend-ignore={FLAKE8_IGNORE}",
    f"--per-file-ignores={FLAKE8_PER_FILE}",
]


def _tool(name: str) -> str:
    exe = TOOLS / name
    if not exe.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable}: the 'lint' extra (bash scripts/run.sh setup)")
    return str(exe)


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"{' '.join(proc.args)} -> {proc.returncode}\n{(proc.stdout + proc.stderr)[-6000:]}"


# ---- custom/ with the repository's settings (no zoo copy needed) -----------------------------------------------------


def test_custom_black():
    _ok(_run([_tool("black"), "--skip-magic-trailing-comma", "--check", "custom"], REPO))


def test_custom_isort():
    _ok(_run([_tool("isort"), "--check", "custom"], REPO))


def test_custom_flake8():
    _ok(_run([_tool("flake8"), *FLAKE8_ARGS, "--count", "--statistics", "custom"], REPO))


def test_flake8_settings_are_the_zoos():
    if not ZOO.is_dir():
        pytest.skip(NO_ZOO)
    cfg = configparser.ConfigParser()
    cfg.read(ZOO / "setup.cfg")
    f8 = cfg["flake8"]

    def items(text: str) -> list[str]:
        return [x.strip() for x in text.replace("\n", ",").split(",") if x.strip() and not x.strip().startswith("#")]

    assert items(f8["select"]) == FLAKE8_SELECT.split(",")
    assert items(f8["ignore"]) == FLAKE8_IGNORE.split(",")
    assert f8["max_line_length"] == "120"
    assert [x.replace(" ", "") for x in items(f8["per_file_ignores"])] == FLAKE8_PER_FILE.split()
    assert cfg["isort"]["profile"] == "black" and cfg["isort"]["line_length"] == "120"


# ---- the zoo's checks in a copy of the zoo folder ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the zoo folder with every bundle exported into models/ and custom/ as a whole next to
    them, in a git repository with everything added (check-added-large-files and check-case-conflict use git)."""
    if not ZOO.is_dir():
        pytest.skip(NO_ZOO)
    from custom.export import export_bundle

    root = tmp_path_factory.mktemp("zoo") / "model-zoo"
    shutil.copytree(ZOO, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    for bundle in BUNDLES:
        export_bundle(bundle, root / "models")
    shutil.copytree(REPO / "custom", root / "custom", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    git = shutil.which("git")
    if git is not None:
        for cmd in (["init", "-q"], ["add", "-A"]):
            _ok(_run([git, *cmd], root))
    return root


CODE = [f"models/{b}" for b in BUNDLES] + ["custom"]


def test_zoo_black(zoo_copy: Path):
    """runtests.sh --black: the zoo's pyproject.toml [tool.black] (found from the zoo copy's root)."""
    _ok(_run([_tool("black"), "--skip-magic-trailing-comma", "--check", *CODE], zoo_copy))


def test_zoo_isort(zoo_copy: Path):
    """runtests.sh --isort: the zoo's setup.cfg [isort]."""
    _ok(_run([_tool("isort"), "--check", *CODE], zoo_copy))


def test_zoo_flake8(zoo_copy: Path):
    """runtests.sh --flake8: the zoo's setup.cfg [flake8]."""
    proc = _run([_tool("flake8"), *CODE, "--count", "--statistics"], zoo_copy)
    _ok(proc)
    assert proc.stdout.strip() == "0", proc.stdout


def _bundle_files(root: Path, suffixes: tuple[str, ...] | None = None) -> list[str]:
    files = []
    for bundle in BUNDLES:
        for path in sorted((root / "models" / bundle).rglob("*")):
            if path.is_file() and (suffixes is None or path.suffix in suffixes):
                files.append(str(path.relative_to(root)))
    return files


def _text_files(root: Path) -> list[str]:
    return [f for f in _bundle_files(root) if Path(f).suffix not in (".pt", ".ts", ".zip")]


# (hook executable, arguments in check mode, which files); .pre-commit-config.yaml of the zoo, pre-commit-hooks v4.6.0
HOOKS = {
    "end-of-file-fixer": ([], "text"),
    "trailing-whitespace": ([], "text"),
    "check-yaml": ([], (".yaml", ".yml")),
    "check-docstring-first": ([], (".py",)),
    "check-executables-have-shebangs": ([], "executable"),
    "check-toml": ([], (".toml",)),
    "check-case-conflict": ([], "all"),
    "check-added-large-files": (["--maxkb=1024", "--enforce-all"], "all"),
    "detect-private-key": ([], "text"),
    "pretty-format-json": (["--no-sort-keys", "--indent=4"], (".json",)),  # the zoo adds --autofix: here a check
    "mixed-line-ending": (["--fix=no"], "text"),
}
EXECUTABLES = {"trailing-whitespace": "trailing-whitespace-fixer"}


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_zoo_pre_commit_hook(zoo_copy: Path, hook: str):
    """The hook on every file of the exported bundles (the fixers would change a file and exit 1: a failure)."""
    args, which = HOOKS[hook]
    if which == "all":
        files = _bundle_files(zoo_copy)
    elif which == "text":
        files = _text_files(zoo_copy)
    elif which == "executable":
        files = [f for f in _text_files(zoo_copy) if os.access(zoo_copy / f, os.X_OK)]
    else:
        files = _bundle_files(zoo_copy, which)
    if hook in ("check-added-large-files", "check-case-conflict") and shutil.which("git") is None:
        pytest.skip(f"{hook} needs git")
    if not files:
        return  # nothing of this type in the bundles (pre-commit would not run the hook)
    _ok(_run([_tool(EXECUTABLES.get(hook, hook)), *args, *files], zoo_copy))
