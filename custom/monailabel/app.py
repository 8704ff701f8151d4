"""Set up MONAI Label's ``monaibundle`` sample app for DyCON bundles (nothing here imports monailabel).

    python -m custom.monailabel APP_DIR --bundles dycon_la [--model model.pt]

* :func:`sample_app_dir` finds the ``monaibundle`` sample app that ships inside the monailabel wheel
  (``<sys.prefix>/monailabel/sample-apps/monaibundle``);
* :func:`install_into_app` copies it to ``APP_DIR`` when ``APP_DIR`` has no ``main.py`` yet, and adds two lines at
  the end of its ``main.py`` (between ``# >>> dycon-monai`` / ``# <<< dycon-monai``; delete them to undo)::

      from custom.monailabel.train_task import DyCONBundleTrainTask as BundleTrainTask

  The app's ``MyApp.init_trainers`` looks ``BundleTrainTask`` up when it runs, so every bundle's trainer becomes a
  :class:`~custom.monailabel.train_task.DyCONBundleTrainTask`: DyCON bundles also train on the unlabeled studies,
  other bundles exactly as before. Inference needs no change (``BundleInferTask`` runs ``inference.yaml``);
* :func:`copy_bundle` puts a bundle into ``APP_DIR/model/<name>`` (replacing an earlier copy): a bundle of this
  repository (its ``scripts`` is the link to this package) as its export (:func:`custom.export.export_bundle`: the
  bundle folder plus ``scripts/`` with only the modules it uses, byte for byte), any other bundle folder (an export,
  a model-zoo bundle) as it is; optionally with weights as ``models/model.pt`` (MONAI Label's inference needs one).

Each copied bundle carries its own code as ``scripts/``, the model zoo's way. MONAI Label puts a bundle's folder first
on ``sys.path`` and unloads any ``scripts`` module before it runs the bundle's inference or training
(``monailabel/tasks/{infer,train}/bundle.py``), so several bundles, each with its own ``scripts/``, work in one app;
the app itself imports only ``custom.monailabel`` (the installed package), never a bundle's ``scripts``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MARKER_BEGIN", "MARKER_END", "copy_bundle", "install_into_app", "is_installed", "sample_app_dir"]

MARKER_BEGIN = "# >>> dycon-monai"
MARKER_END = "# <<< dycon-monai"
PATCH = f"""

{MARKER_BEGIN}: DyCON bundles train on the datastore's unlabeled studies too (custom.monailabel.install_into_app;
# delete these lines to undo). MyApp.init_trainers looks BundleTrainTask up at run time; other bundles are unchanged.
from custom.monailabel.train_task import DyCONBundleTrainTask as BundleTrainTask  # noqa: E402,F811
{MARKER_END}
"""

_SKIP_DIRS = {"eval", "__pycache__", ".ipynb_checkpoints", ".pytest_cache"}


def sample_app_dir(name: str = "monaibundle") -> Path:
    """The folder of a MONAI Label sample app shipped with the installed monailabel (the places that
    ``monailabel apps`` searches)."""
    candidates = []
    spec = importlib.util.find_spec("monailabel")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).resolve().parent.parent / "sample-apps" / name)  # source checkout
    candidates += [
        Path(sys.prefix) / "monailabel" / "sample-apps" / name,
        Path(sys.prefix) / "local" / "monailabel" / "sample-apps" / name,
        Path.home() / ".local" / "monailabel" / "sample-apps" / name,
    ]
    for c in candidates:
        if (c / "main.py").is_file():
            return c
    where = ", ".join(str(c) for c in candidates)
    hint = "" if spec is not None else " (monailabel is not installed: pip install -e '.[monailabel]', see README)"
    raise FileNotFoundError(f"MONAI Label sample app {name!r} not found in {where}{hint}")


def is_installed(app_dir: str | os.PathLike[str]) -> bool:
    """True when ``app_dir/main.py`` already carries the DyCON lines."""
    main = Path(app_dir) / "main.py"
    return main.is_file() and MARKER_BEGIN in main.read_text()


def _ignore(_dir: str, names: list[str]) -> set[str]:
    return {n for n in names if n in _SKIP_DIRS or n.endswith((".pyc", ".pyo"))}


def _is_repository_bundle(src: Path) -> bool:
    """``src/scripts`` is (a link to) this package: a bundle that runs on the repository's one copy of the code."""
    from ..export import PACKAGE_DIR

    scripts = src / "scripts"
    return scripts.exists() and scripts.resolve() == PACKAGE_DIR


def copy_bundle(
    bundle: str | os.PathLike[str],
    app_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    name: str | None = None,
) -> Path:
    """Copy ``bundle`` (a name of this repository such as ``dycon_la`` / ``la``, or a bundle folder) to
    ``app_dir/model/<name>`` (replacing an earlier copy): a repository bundle as its export (``scripts/`` with the
    modules it uses, not the whole package the link points to), any other bundle folder as it is (without
    ``eval/`` outputs and caches); ``model``: a ``model.pt`` state dict to ship as ``models/model.pt``. Returns the
    copy."""
    from ..export import export_bundle, resolve_bundle

    src = resolve_bundle(bundle)
    dst = Path(app_dir).resolve() / "model" / (name or src.name)
    if dst == src or src in dst.parents:
        raise ValueError(f"destination {dst} is inside the bundle {src}")
    if dst.exists():
        if not (dst / "configs" / "metadata.json").is_file():
            raise FileExistsError(f"{dst} exists and is not a bundle: remove it first")
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if _is_repository_bundle(src):
        return export_bundle(src, dst.parent, model=model, name=dst.name)
    shutil.copytree(src, dst, ignore=_ignore)
    if model is not None:
        (dst / "models").mkdir(exist_ok=True)
        shutil.copyfile(model, dst / "models" / "model.pt")
    return dst


def install_into_app(
    app_dir: str | os.PathLike[str],
    bundles: Sequence[str | os.PathLike[str]] = (),
    model: str | os.PathLike[str] | None = None,
) -> Path:
    """Make ``app_dir`` a ``monaibundle`` app whose trainers are DyCON-aware (see the module docstring).

    ``app_dir`` without ``main.py`` receives a copy of the installed sample app first; an existing app must be the
    ``monaibundle`` sample app (its ``main.py`` builds ``BundleTrainTask(...)`` in ``init_trainers``). Patching
    twice is a no-op. ``bundles`` are copied into ``app_dir/model/`` (``model``: weights for each of them).
    Returns ``app_dir``.
    """
    app = Path(app_dir)
    main = app / "main.py"
    if not main.is_file():
        if app.exists() and any(app.iterdir()):
            raise FileNotFoundError(f"{app} is not empty and has no main.py: not a MONAI Label app")
        shutil.copytree(sample_app_dir("monaibundle"), app, dirs_exist_ok=True, ignore=_ignore)
    text = main.read_text()
    if MARKER_BEGIN not in text:
        if "def init_trainers" not in text or "BundleTrainTask(" not in text:
            raise ValueError(
                f"{main} is not MONAI Label's monaibundle sample app (no BundleTrainTask(...) in init_trainers); "
                "use custom.monailabel.DyCONBundleTrainTask in your app's init_trainers instead"
            )
        main.write_text(text.rstrip("\n") + "\n" + PATCH)
    for b in bundles:
        copy_bundle(b, app, model=model)
    return app
