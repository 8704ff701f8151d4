"""``dycon export BUNDLE --dst DIR [--zip]``: a self-contained copy of a bundle that runs without this repository.

The export ``DST/<bundle_name>/`` holds

* the bundle folder (``LICENSE``, ``configs/``, ``docs/``, ``large_files.yml``, ``models/`` when present; never
  ``eval/`` outputs or ``__pycache__``), with ``configs/metadata.json`` copied unchanged;
* ``custom/``: a copy of this package (its sources and package data such as ``custom/data/splits/**``);
* ``scripts/load_custom.py``: the loader that the exported configs call to import that copy;
* ``docs/RELEASING.md``: the version / changelog rules below.

With ``--zip`` the folder is also written as ``DST/<bundle_name>.zip`` with the bundle folder at the top of the
archive, as the MONAI model zoo expects.

How the exported bundle finds its ``custom``
--------------------------------------------
MONAI evaluates every ``$import ...`` of a config as soon as the first id is resolved, before
``ConfigWorkflow.run()`` puts the bundle root on ``sys.path`` (and ``ckpt_export`` / ``verify_net_in_out`` never do),
and a failed import silently becomes a placeholder. The repository's configs rely on ``custom`` being installed.
The *exported* configs instead

* drop the ``$import custom...`` lines;
* define one id, ``custom``, whose expression runs ``scripts/load_custom.py`` (by file path, so nothing needs to be
  importable): it puts the bundle root first on ``sys.path``, imports ``custom`` and the sub-modules that the
  configs use, and raises ``ImportError`` when the ``custom`` that would run is not the one inside the bundle (for
  example a different ``custom`` already imported in the process);
* refer to it as ``@custom.…`` in expressions and ``_target_: "$@custom.…"`` in components, so that every use of
  the package resolves the ``custom`` id first, whatever command (``run``, ``ckpt_export``, ``verify_net_in_out``)
  and working directory.

The repository's own configs are not changed.

Versioning rules (also written to the export's ``docs/RELEASING.md``)
--------------------------------------------------------------------
Every change of a released bundle (configs, code, weights, docs) bumps ``version`` in ``configs/metadata.json``
(semantic versioning: MAJOR for incompatible config ids / weights, MINOR for new features, PATCH for fixes) and adds
a ``changelog`` entry keyed by the new version; ``version`` must be a key of ``changelog``. The export copies
``metadata.json`` unchanged and refuses a bundle whose ``version`` is not a ``changelog`` key.

``model`` copies a ``model.pt`` (a state dict of ``network_def``) to ``models/model.pt``; ``torchscript=True``
then runs ``python -m monai.bundle ckpt_export network_def --filepath models/model.ts`` on the export (with
``ckpt_overrides``, e.g. the network size the weights were trained with).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "custom"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_BUNDLES = PACKAGE_DIR.parent / "bundles"

#: never copied (outputs, caches)
_SKIP_DIRS = {"eval", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}

_IMPORT_LINE = re.compile(r"""^\s*-\s*["']?\$\s*import\s+custom(\.\w+)*\s*["']?\s*(#.*)?$""")
_TARGET = re.compile(r"""(_target_:\s*)["']?(custom(?:\.\w+)+)["']?""")
_EXPR_USE = re.compile(r"(?<![\w.@'\"/])custom\.(?=\w)")
_DOTTED = re.compile(r"(?<![\w.])custom(?:\.\w+)+")

LOADER = '''\
"""Imports the ``custom`` package of THIS bundle folder (written by ``dycon export``; run by path from the configs'
``custom`` id, so it needs nothing on ``sys.path``). Raises ImportError rather than run another ``custom``."""

import importlib
import os
import sys


def _inside(path, root):
    return path is not None and os.path.realpath(path).startswith(root + os.sep)


def load_custom(bundle_root, modules=()):
    root = os.path.realpath(os.path.abspath(bundle_root))
    if not os.path.isfile(os.path.join(root, "custom", "__init__.py")):
        raise ImportError(f"exported bundle {root} has no custom/__init__.py")
    for name, mod in list(sys.modules.items()):
        if (name == "custom" or name.startswith("custom.")) and not _inside(getattr(mod, "__file__", None), root):
            raise ImportError(
                f"module {name!r} from {getattr(mod, '__file__', None)} is already imported in this process; "
                f"the exported bundle {root} needs its own copy: run it in a fresh process"
            )
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    importlib.invalidate_caches()
    package = importlib.import_module("custom")
    for name in modules:
        importlib.import_module(name)
    for name, mod in list(sys.modules.items()):
        if (name == "custom" or name.startswith("custom.")) and not _inside(getattr(mod, "__file__", None), root):
            raise ImportError(f"module {name!r} was imported from {getattr(mod, '__file__', None)}, not from {root}")
    return package
'''

RELEASING = """\
# Releasing this bundle

* Every change (configs, code under `custom/`, weights, docs) bumps `version` in `configs/metadata.json`, following
  semantic versioning: MAJOR for incompatible changes (renamed config ids, weights that need other configs), MINOR
  for new features, PATCH for fixes.
* Every bump adds a `changelog` entry keyed by the new version (newest first); `version` must be a key of
  `changelog` (the MONAI model-zoo checks it).
* Pinned package versions (`monai_version`, `pytorch_version`, `numpy_version`, `required_packages_version`) are
  the ones the bundle was tested with; changing them is a change, too.
* Weights are not stored in git: `large_files.yml` points to `models/model.pt`; `models/model.ts` is produced with
  `python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt
  --meta_file configs/metadata.json --config_file configs/inference.yaml --bundle_root . --key_in_ckpt ""`.

This folder is self-contained: `custom/` is the DyCON package the configs use (their `custom` id loads it through
`scripts/load_custom.py` and refuses any other copy), so only the packages listed in `configs/metadata.json` need to
be installed:

    python -m monai.bundle run --bundle_root . --config_file configs/inference.yaml --input_path /data/case.nii.gz
"""


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


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP_DIRS or Path(n).suffix in _SKIP_SUFFIXES}


def _module_exists(package_root: Path, dotted: str) -> bool:
    parts = dotted.split(".")
    base = package_root.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def used_modules(texts: Sequence[str], package_root: Path) -> list[str]:
    """The modules of the package named in the configs (``custom.data.load_split`` -> ``custom.data``)."""
    found: set[str] = set()
    for text in texts:
        for dotted in _DOTTED.findall(text):
            parts = dotted.split(".")
            for i in range(2, len(parts) + 1):
                name = ".".join(parts[:i])
                if _module_exists(package_root.parent, name):
                    found.add(name)
                else:
                    break
    return sorted(found)


def _custom_entry(modules: Sequence[str]) -> str:
    # no "import" in this expression: MONAI would take it for an import statement (and fail to parse the @refs)
    expr = f"$runpy.run_path(@bundle_root + '/scripts/load_custom.py')['load_custom'](@bundle_root, {list(modules)!r})"
    return (
        "# exported bundle: `custom` is the package inside this folder, loaded by scripts/load_custom.py (which fails\n"
        "# loudly when another `custom` would run); every use below refers to it as @custom.\n"
        '_custom_loader: "$import runpy"\n'
        f"custom: {json.dumps(expr)}\n"
    )


def rewrite_config(text: str, modules: Sequence[str]) -> str:
    """The exported version of one YAML config (see the module docstring); comments are kept."""
    lines = [line for line in text.splitlines(keepends=True) if not _IMPORT_LINE.match(line)]
    out = []
    for line in lines:
        line = _TARGET.sub(lambda m: f'{m.group(1)}"$@{m.group(2)}"', line)
        if "$" in line and '"$@custom.' not in line:
            line = _EXPR_USE.sub("@custom.", line)
        out.append(line)
    body = "".join(out)
    # the `custom` id goes right after the imports block (or first, when the file has none)
    match = re.search(r"^imports:[^\n]*\n(?:(?:[ \t]+[^\n]*|[ \t]*)\n)*", body, flags=re.M)
    pos = match.end() if match else _first_entry(body)
    head = body[:pos].rstrip("\n")
    new = (head + "\n\n" if head else "") + _custom_entry(modules) + "\n" + body[pos:].lstrip("\n")
    _check_rewrite(text, new, modules)
    return new


def _first_entry(body: str) -> int:
    match = re.search(r"^[^#\s]", body, flags=re.M)
    return match.start() if match else len(body)


def _expected(node: Any, key: str | None = None) -> Any:
    """The same transformation on the parsed YAML, to check the text rewrite."""
    if isinstance(node, dict):
        return {k: _expected(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [
            _expected(v)
            for v in node
            if not (isinstance(v, str) and re.fullmatch(r"\$\s*import\s+custom(\.\w+)*\s*", v))
        ]
    if isinstance(node, str):
        if key == "_target_" and node.startswith("custom."):
            return f"$@{node}"
        if node.startswith("$"):
            return _EXPR_USE.sub("@custom.", node)
    return node


def _check_rewrite(old: str, new: str, modules: Sequence[str]) -> None:
    before, after = yaml.safe_load(old) or {}, yaml.safe_load(new) or {}
    assert isinstance(after, dict) and "custom" in after, "exported config lacks the `custom` id"
    expect = _expected(before)
    expect["custom"] = after["custom"]
    expect["_custom_loader"] = after.get("_custom_loader")
    if after != expect:
        raise ExportError("the exported config differs from the expected rewrite (an unusual use of `custom`?)")
    after.pop("custom")
    after.pop("_custom_loader")
    leftover = [s for s in _strings(after) if re.search(r"(?<![\w.@])custom\.\w", s) and s.startswith("$")]
    if leftover:
        raise ExportError(f"expressions still use the global name `custom`: {leftover[:3]}")


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


def _subprocess_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1"}


def ckpt_export(root: Path, overrides: Mapping[str, Any] | None = None, timeout: int = 900) -> Path:
    """``python -m monai.bundle ckpt_export network_def`` of ``root/models/model.pt`` -> ``root/models/model.ts``,
    in a fresh process (the exported configs refuse a process that already imported another ``custom``)."""
    ts = root / "models" / "model.ts"
    cmd = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(ts),
        "--ckpt_file", str(root / "models" / "model.pt"),
        "--meta_file", str(root / "configs" / "metadata.json"),
        "--config_file", str(root / "configs" / "inference.yaml"),
        "--bundle_root", str(root),
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
) -> Path:
    """Export ``bundle`` (name or folder) to ``dst/<bundle_name>/`` (replacing an earlier export there); returns that
    folder, or ``dst/<bundle_name>.zip`` when ``zip``. ``model``: a model.pt to ship as ``models/model.pt``;
    ``torchscript``: also write ``models/model.ts`` with ``ckpt_export`` (``ckpt_overrides``: config overrides such
    as ``{"network_def#features": [4, 8, 16, 32, 64]}``)."""
    src = resolve_bundle(bundle)
    meta = json.loads((src / "configs" / "metadata.json").read_text())
    check_metadata(meta, str(src / "configs" / "metadata.json"))
    dst = Path(dst).resolve()
    out = dst / src.name
    if out == src or src in out.parents:
        raise ExportError(f"destination {out} is inside the bundle {src}")
    if out.exists():
        if not (out / "configs" / "metadata.json").is_file() or not (out / "scripts" / "load_custom.py").is_file():
            raise ExportError(f"{out} exists and is not an earlier export: remove it or choose another --dst")
        shutil.rmtree(out)
    dst.mkdir(parents=True, exist_ok=True)

    shutil.copytree(src, out, ignore=_ignore)
    shutil.copytree(PACKAGE_DIR, out / PACKAGE, ignore=_ignore)
    (out / "scripts").mkdir(exist_ok=True)
    (out / "scripts" / "load_custom.py").write_text(LOADER)
    (out / "docs").mkdir(exist_ok=True)
    (out / "docs" / "RELEASING.md").write_text(RELEASING)

    configs = sorted((out / "configs").glob("*.yaml")) + sorted((out / "configs").glob("*.json"))
    configs = [p for p in configs if p.name != "metadata.json"]
    for p in configs:
        if p.suffix == ".json":
            raise ExportError(f"{p.name}: only YAML configs can be exported")
    texts = [p.read_text() for p in configs]
    modules = used_modules(texts, out / PACKAGE)
    for p, text in zip_(configs, texts):
        if re.search(r"(?<![\w.])custom\b", text):
            p.write_text(rewrite_config(text, modules))

    if model is not None:
        (out / "models").mkdir(exist_ok=True)
        shutil.copyfile(model, out / "models" / "model.pt")
    if torchscript:
        if not (out / "models" / "model.pt").is_file():
            raise ExportError("torchscript needs models/model.pt: pass --model PATH")
        ckpt_export(out, ckpt_overrides)
    if zip:
        return zip_bundle(out, dst / f"{src.name}.zip")
    return out


zip_ = zip  # the builtin, shadowed by export_bundle's ``zip`` argument
