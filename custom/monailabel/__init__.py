"""MONAI Label integration of the DyCON bundles (optional: ``pip install -e '.[monailabel]'``, see README).

* :class:`DyCONBundleTrainTask` (:mod:`custom.monailabel.train_task`): MONAI Label train task that uses the
  datastore's unlabeled studies as DyCON's unlabeled set (supervised when there are none);
* :func:`install_into_app` / :func:`copy_bundle` / :func:`sample_app_dir` (:mod:`custom.monailabel.app`): set up the
  ``monaibundle`` sample app with DyCON bundles (``python -m custom.monailabel APP_DIR --bundles dycon_la``).

monailabel itself is imported only by :mod:`custom.monailabel.train_task` (on first use of
``DyCONBundleTrainTask``), so the set-up helpers work in any environment.
"""

from __future__ import annotations

from typing import Any

from .app import copy_bundle, install_into_app, is_installed, sample_app_dir

__all__ = ["DyCONBundleTrainTask", "copy_bundle", "install_into_app", "is_installed", "sample_app_dir"]


def __getattr__(name: str) -> Any:
    if name == "DyCONBundleTrainTask":
        from .train_task import DyCONBundleTrainTask

        return DyCONBundleTrainTask
    raise AttributeError(f"module 'custom.monailabel' has no attribute {name!r}")
