"""``dycon export BUNDLE --dst DIR [--zip]``: the bundle folder as a model-zoo pull request would contain it.

A bundle's configs name their components ``scripts.<module>.<name>`` (``scripts.engines.MeanTeacherTrainer``), the
model zoo's convention for a bundle's own code: ``scripts/`` is a package inside the bundle folder, importable
because every way of running a bundle puts the bundle folder on ``sys.path`` (``python -m monai.bundle run`` from
the bundle folder, the zoo's ``ci/verify_bundle.py``, MONAI Label, which also unloads one bundle's ``scripts``
before it loads the next one's).

In this repository ``bundles/<name>/scripts`` is a symbolic link to this package (``custom/``, which imports its
own modules relatively and so works under any package name): the repository's bundles run in place, from their
folder, on the one copy of the code. The export ``DST/<bundle_name>/`` holds

* the bundle folder (``LICENSE``, ``configs/``, ``docs/``, ``large_files.yml``, ``models/`` when present; never
  ``eval/`` outputs or ``__pycache__``), unchanged;
* ``scripts/``: the modules of this package that the bundle uses, byte for byte: the modules its configs and its
  ``docs/*.md`` name (``scripts.engines.MeanTeacherTrainer`` in a config, ``python -m scripts.data.la`` in the
  README: the bundle carries its own data preparation) and every module those import, with the ``__init__.py`` of
  each package on the way and the data files those modules read next to them (the official split lists of
  ``data/splits/<dataset>/``) (:func:`code_files`). The CLI, the MONAI Label app set-up, this exporter and the
  other datasets' preparation are not part of it.

With ``--zip`` the folder is also written as ``DST/<bundle_name>.zip`` with the bundle folder at the top of the
archive, as the MONAI model zoo expects. ``model`` copies a ``model.pt`` (a state dict of ``network_def``) to
``models/model.pt``; ``torchscript=True`` then runs ``python -m monai.bundle ckpt_export network_def --filepath
models/model.ts`` on the export (with ``ckpt_overrides``, e.g. the network size the weights were trained with).
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "CODE_PACKAGE",
    "bundle_code",
    "ExportError",
    "check_metadata",
    "code_files",
    "config_modules",
    "export_bundle",
    "resolve_bundle",
    "zip_bundle",
]

#: the name of a bundle's code package, as the model zoo and MONAI Label know it
CODE_PACKAGE = "scripts"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_BUNDLES = PACKAGE_DIR.parent / "bundles"

#: never copied (outputs, caches); ``scripts`` of a repository bundle is the link to this package
_SKIP_DIRS = {"eval", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
_DOTTED = re.compile(rf"(?<![\w.]){CODE_PACKAGE}((?:\.\w+)+)")


@contextmanager
def bundle_code(bundle_root: str | os.PathLike[str]) -> Iterator[None]:
    """Inside the block, ``import scripts`` (what a bundle's configs import) is the code package of the bundle folder
    ``bundle_root``, as when the bundle runs from its folder, for parsing its configs in this process: the folder
    first on ``sys.path`` and every ``scripts`` / ``scripts.*`` module dropped from ``sys.modules`` before (another
    bundle's) and after, which is how MONAI Label switches between bundles (``sys.path.insert(0, bundle_path);
    unload_module("scripts")``); ``sys.path`` is restored. Objects made inside keep their ``scripts.<module>``
    classes, which are other module objects than this package's."""

    def unload() -> None:
        for name in [m for m in sys.modules if m == CODE_PACKAGE or m.startswith(CODE_PACKAGE + ".")]:
            del sys.modules[name]

    saved = sys.path[:]
    unload()
    sys.path.insert(0, str(bundle_root))
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.path[:] = saved
        unload()


class ExportError(ValueError):
    """A bundle that cannot be exported (unknown name, bad metadata, destination problems)."""


def resolve_bundle(bundle: str | os.PathLike[str]) -> Path:
    """A bundle name (``dycon_la`` or ``la``) of this repository, or the path of a bundle folder."""
    text = str(bundle)
    for candidate in (Path(text), REPO_BUNDLES / text, REPO_BUNDLES / f"dycon_{text}"):
        if (candidate / "configs" / "metadata.json").is_file():
            return candidate.resolve()
    known = sorted(p.parent.parent.name for p in REPO_BUNDLES.glob("*/configs/metadata.json"))
    raise ExportError(f"no bundle {text!r} (a folder with configs/metadata.json, or one of {known})")


def check_metadata(meta: Mapping[str, Any], where: str = "metadata.json") -> None:
    """``version`` is a semantic version and a key of ``changelog``."""
    version = meta.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+([-+][\w.]+)?", version):
        raise ExportError(f"{where}: version {version!r} is not a semantic version MAJOR.MINOR.PATCH")
    changelog = meta.get("changelog")
    if not isinstance(changelog, Mapping) or version not in changelog:
        raise ExportError(f"{where}: version {version} has no changelog entry")


def _module_file(parts: tuple[str, ...]) -> Path | None:
    """The file of module ``parts`` (relative to this package: ``("data", "loaders")``), or None."""
    base = PACKAGE_DIR.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if parts and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def config_modules(texts: Iterable[str]) -> set[tuple[str, ...]]:
    """The modules of the code package that config (or docs) texts name (``scripts.data.load_split`` ->
    ``("data",)``, ``python -m scripts.data.la`` -> ``("data", "la")``: the longest prefix of each dotted name that is
    a module)."""
    found: set[tuple[str, ...]] = {()}
    for text in texts:
        for dotted in _DOTTED.findall(text):
            parts = tuple(dotted.strip(".").split("."))
            for i in range(len(parts), 0, -1):
                if _module_file(parts[:i]) is not None:
                    found.add(parts[:i])
                    break
    return found


def _imported(parts: tuple[str, ...], path: Path) -> set[tuple[str, ...]]:
    """The modules of this package that module ``parts`` (file ``path``) imports, anywhere in its body."""
    package = parts if path.name == "__init__.py" else parts[:-1]
    out: set[tuple[str, ...]] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue  # absolute imports are third-party packages: this package imports itself relatively
        base = package[: len(package) - (node.level - 1)] + tuple(node.module.split(".") if node.module else ())
        if _module_file(base) is not None:
            out.add(base)
        for alias in node.names:  # ``from . import loaders``
            if _module_file(base + (alias.name,)) is not None:
                out.add(base + (alias.name,))
    return out


def code_files(texts: Iterable[str]) -> list[Path]:
    """The files of this package (relative paths) that a bundle whose configs and docs read ``texts`` needs: the
    modules they name, everything those import (transitively), the ``__init__.py`` of every package on the way, and
    the data files of those modules (:func:`_package_data`)."""
    todo = sorted(config_modules(texts))
    seen: set[tuple[str, ...]] = set()
    while todo:
        parts = todo.pop()
        if parts in seen:
            continue
        seen.add(parts)
        todo += [parts[:i] for i in range(len(parts))]  # parent packages run their __init__.py
        todo += sorted(_imported(parts, _module_file(parts)))
    files = {_module_file(p) for p in seen}
    files |= {f for p in seen for f in _package_data(_module_file(p))}
    return sorted(f.relative_to(PACKAGE_DIR) for f in files)


def _package_data(path: Path) -> list[Path]:
    """The data files that module ``path`` reads next to it: each folder of its package that is not a package and
    whose name is a string constant of the module, narrowed to the subfolders that constants name too
    (``"splits"``, ``"BraTS2019"`` in ``data/brats19.py`` -> the files of ``data/splits/BraTS2019/``)."""
    names = {n.value for n in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(n, ast.Constant)}

    def named(folder: Path) -> list[Path]:
        return [
            d
            for d in sorted(folder.iterdir())
            if d.is_dir() and d.name in names and d.name not in _SKIP_DIRS and not (d / "__init__.py").is_file()
        ]

    folders = [sub for top in named(path.parent) for sub in (named(top) or [top])]
    return [f for d in folders for f in sorted(d.rglob("*")) if f.is_file() and f.suffix not in _SKIP_SUFFIXES]


def _ignore(directory: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n in _SKIP_DIRS or Path(n).suffix in _SKIP_SUFFIXES}
    if (Path(directory) / "configs" / "metadata.json").is_file():
        skip.add(CODE_PACKAGE)  # written from code_files()
    return skip


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}


def ckpt_export(root: Path, overrides: Mapping[str, Any] | None = None, timeout: int = 900) -> Path:
    """``python -m monai.bundle ckpt_export network_def`` of ``root/models/model.pt`` -> ``root/models/model.ts``,
    run from the bundle folder as the zoo's README commands are."""
    ts = root / "models" / "model.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", "models/model.ts",
        "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json",
        "--config_file", "configs/inference.yaml",
        "--bundle_root", ".",
        "--key_in_ckpt", "",
    ]  # fmt: skip
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    proc = subprocess.run(cmd, cwd=root, env=_subprocess_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not ts.is_file():
        raise RuntimeError(f"ckpt_export failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-4000:]}")
    return ts


def zip_bundle(root: Path, archive: Path) -> Path:
    """``archive`` with ``root``'s folder at the top (``<name>/configs/...``)."""
    archive.unlink(missing_ok=True)
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not (set(path.relative_to(root).parts) & _SKIP_DIRS):
                zf.write(path, Path(root.name) / path.relative_to(root))
    return archive


def export_bundle(
    bundle: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    zip: bool = False,
    model: str | os.PathLike[str] | None = None,
    torchscript: bool = False,
    ckpt_overrides: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Export ``bundle`` (name or folder) to ``dst/<name>/`` (default: the bundle's folder name; an earlier export
    there is replaced); returns that folder, or ``dst/<name>.zip`` when ``zip``. ``model``: a model.pt to ship as
    ``models/model.pt``; ``torchscript``: also write ``models/model.ts`` with ``ckpt_export`` (``ckpt_overrides``:
    config overrides such as ``{"network_def#features": [4, 8, 16, 32, 64]}``)."""
    src = resolve_bundle(bundle)
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    check_metadata(meta, str(src / "configs" / "metadata.json"))
    dst = Path(dst).resolve()
    out = dst / (name or src.name)
    if out == src or src in out.parents:
        raise ExportError(f"destination {out} is inside the bundle {src}")
    if out.exists():
        if not (out / "configs" / "metadata.json").is_file() or not (out / CODE_PACKAGE / "__init__.py").is_file():
            raise ExportError(f"{out} exists and is not an earlier export: remove it or choose another --dst")
        shutil.rmtree(out)
    dst.mkdir(parents=True, exist_ok=True)

    shutil.copytree(src, out, ignore=_ignore)
    configs = [p for p in sorted((out / "configs").iterdir()) if p.suffix in (".yaml", ".json")]
    docs = sorted((out / "docs").glob("*.md")) if (out / "docs").is_dir() else []
    for rel in code_files(p.read_text() for p in configs + docs if p.name != "metadata.json"):
        (out / CODE_PACKAGE / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PACKAGE_DIR / rel, out / CODE_PACKAGE / rel)

    if model is not None:
        (out / "models").mkdir(exist_ok=True)
        shutil.copyfile(model, out / "models" / "model.pt")
    if torchscript:
        if not (out / "models" / "model.pt").is_file():
            raise ExportError("torchscript needs models/model.pt: pass --model PATH")
        ckpt_export(out, ckpt_overrides)
    if zip:
        return zip_bundle(out, dst / f"{out.name}.zip")
    return out
