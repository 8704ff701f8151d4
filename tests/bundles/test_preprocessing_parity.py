"""One preprocessing for everything a bundle does: the ``preprocessing_transforms`` list of train.yaml (training,
validation, evaluation) and that of inference.yaml (inference, MONAI Label) are the same steps with the same
arguments; they differ only in their keys (inference has no label) and in the label-crop protocol option, which only
train.yaml has (it needs the ground truth). Checked on the config files as written, and by running both parsed
chains on the same raw-looking study (non-RAS, anisotropic): identical network inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from bundle_utils import Bundle

from custom.data.nifti import write_nifti

BUNDLES = ("dycon_la", "dycon_brats19", "dycon_pancreas", "dycon_isles22")
LABEL_ONLY = ("scripts.transforms.CropAroundLabeld",)  # protocol option: needs the label, train.yaml only
KEY_ARGS = ("keys", "allow_missing_keys")
PER_KEY_ARGS = ("mode", "padding_mode", "align_corners", "dtype")  # one value per key, or one for all keys


def _steps(bundle: Bundle, config: str) -> list[dict[str, Any]]:
    steps = yaml.safe_load(bundle.path(config).read_text())["preprocessing_transforms"]
    assert isinstance(steps, list) and steps, f"{bundle.name}/{config}: preprocessing_transforms is not a list"
    return steps


def _without_keys(step: dict[str, Any]) -> dict[str, Any]:
    """The step's arguments for the image: key lists dropped, per-key values (``mode: [bilinear, nearest]`` for
    ``keys: [image, label]``) reduced to the image's."""
    keys = step.get("keys", "image")
    keys = [keys] if isinstance(keys, str) else list(keys)
    out = {}
    for name, value in step.items():
        if name in KEY_ARGS:
            continue
        if name in PER_KEY_ARGS and isinstance(value, list) and len(value) == len(keys) and len(keys) > 1:
            value = value[keys.index("image")]
        out[name] = value
    return out


@pytest.mark.parametrize("name", BUNDLES)
def test_same_steps_in_train_and_inference(name: str) -> None:
    bundle = Bundle(name)
    train, infer = _steps(bundle, bundle.train_yaml), _steps(bundle, bundle.inference_yaml)
    train_shared = [s for s in train if s["_target_"] not in LABEL_ONLY]
    assert [_without_keys(s) for s in train_shared] == [_without_keys(s) for s in infer]
    for step in infer:  # MONAI Label's loader fails on a key that is not there: inference names the image only
        assert step.get("keys", "image") in ("image", ["image"]), step
        assert step["_target_"] not in LABEL_ONLY and step["_target_"] != "Spacingd", step
    assert all(s["_target_"] != "Spacingd" for s in train), "resampling must be scripts.transforms.Spacingd"
    label_only = [s for s in train if s["_target_"] in LABEL_ONLY]
    assert all("label_crop" in str(s.get("_disabled_", "")) for s in label_only), label_only


def _study(folder: Path, in_channels: int) -> Path:
    """A raw-looking study: positive, skull-stripped-like (zero outside an ellipsoid), LPS-like, 0.8 x 0.9 x 2 mm."""
    shape = (44, 40, 20)
    grid = np.indices(shape).astype(float)
    inside = (((grid - np.array(shape)[:, None, None, None] / 2) / np.array([18, 16, 8])[:, None, None, None]) ** 2)
    rng = np.random.default_rng(0)
    data = np.where(inside.sum(0) < 1, rng.uniform(100, 400, (in_channels, *shape)), 0.0).astype(np.float32)
    affine = np.array([[-0.8, 0, 0, 20.0], [0, -0.9, 0, 30.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
    path = folder / "study.nii.gz"
    write_nifti(np.moveaxis(data, 0, -1) if in_channels > 1 else data[0], path, affine, np.float32)
    return path


@pytest.mark.parametrize("name", BUNDLES)
def test_train_and_inference_chains_give_the_same_input(name: str, tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    bundle = Bundle(name)
    outputs = []
    with bundle.on_path():
        for config, chain_id in ((bundle.train_yaml, "validate#preprocessing"), (bundle.inference_yaml, "preprocessing")):
            parser = ConfigParser()
            parser.read_config(str(bundle.path(config)))
            in_channels = int(parser.get_parsed_content("in_channels"))
            study = _study(tmp_path, in_channels)
            out = parser.get_parsed_content(chain_id)({"image": str(study)})["image"]
            outputs.append(out)
    train_out, infer_out = outputs
    assert train_out.shape == infer_out.shape and train_out.dtype == infer_out.dtype == torch.float32
    torch.testing.assert_close(train_out.as_tensor(), infer_out.as_tensor(), rtol=0, atol=0)
    np.testing.assert_allclose(train_out.affine.numpy(), infer_out.affine.numpy())
