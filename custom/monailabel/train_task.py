"""DyCON training from MONAI Label: the datastore's unlabeled studies become DyCON's unlabeled set.

MONAI Label's :class:`~monailabel.tasks.train.bundle.BundleTrainTask` trains a bundle on the studies that have a
``final`` label (``datastore.datalist()``), split into training / validation lists passed as the overrides
``train#dataset#data`` / ``validate#dataset#data``. :class:`DyCONBundleTrainTask` adds, for a DyCON bundle (a train
config with ``train#unlabeled#dataset#data``):

* the unlabeled set: every study of the datastore without a ``final`` label
  (``datastore.get_unlabeled_images()``), as ``[{"image": path}]`` only: their labels (for example ``original``
  masks saved from an inference) never reach training;
* ``datalist``: a ``datalist.json`` written to ``<output_dir>/monailabel_datalist.json`` with the ``training``,
  ``validation`` and ``unlabeled`` lists of this run, which the bundle's ``initialize`` step checks
  (``custom.data.check_dataset``) and which records what the run was trained on;
* ``val_interval`` (epochs between validations) lowered to the request's ``max_epochs`` when it is larger and there
  is a validation list, so that a training shorter than the bundle's interval still validates once, at its end, and
  writes ``models/model.pt`` (the bundle saves the model of the best validation; without a validation list it saves
  the final model itself).

The length of a run needs nothing else: MONAI Label overrides ``train#trainer#max_epochs`` with the request's
``max_epochs`` (each epoch is the bundle's ``epoch_length`` iterations), and DyCON's schedules (beta) are defined
over ``@train#trainer#max_epochs * @epoch_length``, so they span the requested run.

Without unlabeled studies (or with ``semi_supervised: false`` in the request) the unlabeled list is empty, the
bundle's unlabeled loader is ``None`` and :class:`custom.engines.MeanTeacherTrainer` trains supervised only. Any other
bundle is trained exactly as by :class:`BundleTrainTask`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.tasks.train.bundle import BundleConstants, BundleTrainTask
from monailabel.utils.others.generic import strtobool

from ..export import bundle_code

logger = logging.getLogger(__name__)

__all__ = ["DyCONBundleTrainTask", "UNLABELED_KEY", "DATALIST_NAME", "VAL_INTERVAL_KEY"]

#: the train config id of DyCON's unlabeled list (its presence marks a DyCON bundle)
UNLABELED_KEY = "train#unlabeled#dataset#data"
#: written to the bundle's output_dir by every DyCON run
DATALIST_NAME = "monailabel_datalist.json"
#: the train config id of the number of epochs between validations
VAL_INTERVAL_KEY = "val_interval"


class DyCONBundleTrainTask(BundleTrainTask):
    """MONAI Label train task of a DyCON bundle (semi-supervised active learning).

    A drop-in replacement of :class:`BundleTrainTask` (same arguments): DyCON bundles train on the datastore's
    labeled studies plus its unlabeled ones (see the module docstring); other bundles as with the base class.

    Args:
        path: the bundle folder (``<app>/model/<name>``).
        conf: the app's ``--conf`` settings.
        const: the config ids of the bundle (default :class:`BundleConstants`).
        enable_tracking: MLflow tracking by default (as in :class:`BundleTrainTask`).
        model_dict_key: key of the network in ``models/model.pt`` checkpoints that hold several objects.
        load_strict: strict loading of the pretrained ``models/model.pt``.
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        const: BundleConstants | None = None,
        enable_tracking: bool = False,
        model_dict_key: str = "model",
        load_strict: bool = False,
    ) -> None:
        super().__init__(path, conf, const, enable_tracking, model_dict_key, load_strict)
        self.dycon: bool = bool(self.valid) and self.bundle_config.get(UNLABELED_KEY) is not None
        self._unlabeled: list[dict[str, str]] | None = None
        self._why_supervised = ""

    def config(self) -> dict[str, Any]:
        """The base options plus ``semi_supervised`` (DyCON bundles): use the unlabeled studies."""
        options = super().config()
        if self.dycon:
            options["semi_supervised"] = True
        return options

    def unlabeled_datalist(self, datastore: Datastore) -> list[dict[str, str]]:
        """``[{"image": path}]`` of the studies without a ``final`` label (sorted by id; no label key ever)."""
        labeled = set(datastore.get_labeled_images())
        out = []
        for image_id in sorted(set(datastore.get_unlabeled_images()) - labeled):
            uri = datastore.get_image_uri(image_id)
            if uri:
                out.append({"image": uri})
            else:
                logger.warning("DyCON: unlabeled study %s has no image file; skipped", image_id)
        return out

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        if not self.dycon:
            return super().__call__(request, datastore)
        use = request.get("semi_supervised", True)
        use = strtobool(use) if isinstance(use, str) else bool(use)
        self._unlabeled = self.unlabeled_datalist(datastore) if use else []
        self._why_supervised = "no unlabeled studies in the datastore" if use else "semi_supervised is false"
        try:
            return super().__call__(request, datastore)
        finally:
            self._unlabeled = None

    def _parsed(self, key: str, default: Any = None) -> Any:
        """The resolved value of config id ``key`` (``default`` when the bundle has none or it cannot be resolved
        before the run)."""
        if self.bundle_config.get(key) is None:
            return default
        try:
            with bundle_code(self.bundle_path):  # its `$import scripts...` lines run on every resolution
                return self.bundle_config.get_parsed_content(key, instantiate=True)
        except Exception as err:  # noqa: BLE001 (an id that only resolves inside the run)
            logger.warning("DyCON: config id %r of %s not resolved (%s); using %r", key, self.bundle_path, err, default)
            return default

    def _output_dir(self) -> str:
        out = self._parsed("output_dir")
        return str(out) if out else os.path.join(self.bundle_path, "eval")

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        super()._update_overrides(overrides)
        if not self.dycon:
            return overrides
        training = list(overrides.get(self.const.key_train_dataset_data()) or [])
        validation = list(overrides.get(self.const.key_validate_dataset_data()) or [])
        unlabeled = [{"image": d["image"]} for d in (self._unlabeled or [])]
        used = {d["image"] for d in training + validation}
        overlap = sorted(used & {d["image"] for d in unlabeled})
        if overlap:  # cannot happen with MONAI Label's datastores; never train on a labeled study as unlabeled
            raise ValueError(f"studies both labeled and unlabeled: {overlap}")

        out = self._output_dir()
        os.makedirs(out, exist_ok=True)
        datalist = os.path.join(out, DATALIST_NAME)
        with open(datalist, "w") as fp:
            json.dump({"training": training, "validation": validation, "unlabeled": unlabeled}, fp, indent=2)
        overrides["datalist"] = datalist
        overrides[UNLABELED_KEY] = unlabeled

        max_epochs = overrides.get(self.const.key_train_trainer_max_epochs())
        val_interval = self._parsed(VAL_INTERVAL_KEY)
        short = max_epochs is not None and val_interval is not None and int(val_interval) > int(max_epochs) >= 1
        if validation and short:  # the ValidationHandler runs every val_interval epochs: here it would never run
            overrides[VAL_INTERVAL_KEY] = int(max_epochs)
            logger.info(
                "DyCON: %s %d > max_epochs %d: validating after epoch %d",
                VAL_INTERVAL_KEY, int(val_interval), int(max_epochs), int(max_epochs),
            )  # fmt: skip

        mode = "semi-supervised training" if unlabeled else f"supervised training ({self._why_supervised})"
        logger.info(
            "DyCON %s: %d labeled, %d validation, %d unlabeled studies; datalist %s",
            mode, len(training), len(validation), len(unlabeled), datalist,
        )  # fmt: skip
        return overrides
