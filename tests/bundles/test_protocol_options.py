"""Config-level options of the four bundles that reproduce the released protocol: FeCL's cross-threshold ramp in
the released loop's epochs, and (LA, Pancreas) the papers' sliding-window strides in evaluate.yaml."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_utils import Bundle
from monai.bundle import ConfigParser
from monai.inferers.utils import _get_scan_interval

BUNDLES = ("la", "brats19", "pancreas", "isles22")


def _parser(bundle: str, tmp_path: Path, n_labeled: int, evaluate: bool = False, **overrides) -> ConfigParser:
    (tmp_path / "x.nii.gz").write_bytes(b"")  # load_split checks that the files exist; nothing is read here
    entry = {"image": "x.nii.gz", "label": "x.nii.gz"}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [entry] * n_labeled, "unlabeled": [{"image": "x.nii.gz"}] * 3,
                                    "validation": [], "test": [entry]}))
    b = Bundle(f"dycon_{bundle}")
    parser = ConfigParser()
    parser.read_config([str(b.path(b.train_yaml))] + ([str(b.path(b.evaluate_yaml))] if evaluate else []))
    parser.update({"bundle_root": str(b.root), "datalist": str(datalist), **overrides})
    return parser


@pytest.fixture(autouse=True)
def _importable(bundle: str):
    """The configs' scripts.<module>.<name>: the bundle folder on sys.path while the test parses them."""
    with Bundle(f"dycon_{bundle}").on_path():
        yield


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("n_labeled, batch, epochs, ramp", [(8, 4, 1500, 3000), (16, 2, 1500, 12000), (3, 4, 10, 10)])
def test_cross_ramp_in_released_epochs(bundle, tmp_path, n_labeled, batch, epochs, ramp):
    # released loop: one epoch = labeled cases // labeled batch size iterations (at least one)
    parser = _parser(bundle, tmp_path, n_labeled, labeled_batch_size=batch, fecl_cross_ramp_epochs=epochs)
    assert parser.get_parsed_content("loss#fecl").cross_ramp == ramp


@pytest.mark.parametrize("bundle, roi, stride", [("la", [112, 112, 80], (18, 18, 4)),
                                                 ("pancreas", [96, 96, 96], (16, 16, 16))])
def test_paper_sliding_window(bundle, tmp_path, roi, stride):
    default = _parser(bundle, tmp_path, 2, evaluate=True).get_parsed_content("validate#inferer")
    train = _parser(bundle, tmp_path, 2).get_parsed_content("validate#inferer")
    assert list(default.roi_size) == list(train.roi_size) and default.overlap == [train.overlap] * 3  # bundle default
    paper = _parser(bundle, tmp_path, 2, evaluate=True, sw_protocol="paper").get_parsed_content("validate#inferer")
    assert list(paper.roi_size) == roi
    assert tuple(_get_scan_interval((300, 300, 200), paper.roi_size, 3, paper.overlap)) == stride
    with pytest.raises(RuntimeError) as err:  # MONAI wraps the error of a config expression
        _parser(bundle, tmp_path, 2, evaluate=True, sw_protocol="papers").get_parsed_content("validate#inferer")
    assert "sw_protocol must be one of ('bundle', 'paper'), got 'papers'" in str(err.value.__cause__)
