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


# ------------------------------------------------------------------------------------------ LA: label_crop option
def _classes(transforms) -> list[str]:
    return [type(t).__name__ for t in transforms]


@pytest.mark.parametrize("bundle", ["la"])
@pytest.mark.parametrize("label_crop", [False, True])
def test_la_label_crop_option(bundle, tmp_path, label_crop):
    """label_crop adds CropAroundLabeld (margin label_crop_margin in x and y, z whole) to the labeled, validation
    and test chains only, and the evaluation says so (protocol column, *_seg_labelcrop predictions)."""
    parser = _parser(bundle, tmp_path, 2, evaluate=True, label_crop=label_crop)
    base = ["LoadImaged", "EnsureChannelFirstd", "Orientationd"]
    tail = ["EnsureTyped", "NormalizeIntensityd"]
    chain = base + (["CropAroundLabeld"] if label_crop else []) + tail
    assert _classes(parser.get_parsed_content("validate#preprocessing").transforms) == chain
    assert _classes(parser.get_parsed_content("train#preprocessing").transforms)[: len(chain)] == chain
    crop = [t for t in parser.get_parsed_content("validate#preprocessing").transforms if "Crop" in type(t).__name__]
    assert [c.label_margin for c in crop] == ([(15, 15, None)] if label_crop else [])
    post = parser.get_parsed_content("validate#postprocessing").transforms
    (save,) = [t for t in post if type(t).__name__ == "SaveImaged"]
    assert save.saver.folder_layout.postfix == ("seg_labelcrop" if label_crop else "seg")
    (index,) = [i for i, h in enumerate(parser["validate#handlers"]) if h["_target_"].endswith("CaseMetricsWriter")]
    protocol = parser.get_parsed_content(f"validate#handlers#{index}").protocol
    assert protocol.startswith("label_crop") if label_crop else protocol == "label_free"


@pytest.mark.parametrize("bundle", ["la"])
def test_la_inference_chain_is_the_training_chain(bundle, tmp_path):
    """inference.yaml's preprocessing = train.yaml's preprocessing_transforms (label crop off) with keys image only;
    no label crop ever; the masks are cast to uint8 after Invertd."""
    b = Bundle("dycon_la")
    with b.on_path():
        train = ConfigParser()
        train.read_config(str(b.path(b.train_yaml)))
        infer = ConfigParser()
        infer.read_config(str(b.path(b.inference_yaml)))
        strip = lambda items: [{k: v for k, v in i.items() if k not in ("keys", "allow_missing_keys")}  # noqa: E731
                               for i in items if "CropAroundLabeld" not in i["_target_"]]
        assert strip(train["preprocessing_transforms"]) == strip(infer["preprocessing_transforms"])
        assert all(i["keys"] == "image" for i in infer["preprocessing_transforms"])
        post = [t["_target_"] for t in infer["postprocessing"]["transforms"]]
        assert post.index("CastToTyped") == post.index("Invertd") + 1
        assert infer["postprocessing"]["transforms"][post.index("CastToTyped")]["dtype"] == "$numpy.uint8"


@pytest.mark.parametrize("bundle", ["la"])
def test_la_label_crop_chain_and_inverse(bundle, tmp_path):
    """On a prepared synthetic case: the label-crop chain crops x and y to the label's box + 15 voxels (z whole), a
    case without label passes uncropped, and Invertd puts a prediction back on the file's grid."""
    import nibabel as nib
    import numpy as np
    from monai.transforms import Invertd

    from custom.data.la import prepare_la, synth_la

    raw = synth_la(tmp_path / "raw", n_train=2, n_test=1, shape=(64, 60, 12), seed=2)
    dl = json.loads(prepare_la(raw, tmp_path / "LA", labeled=1).read_text())
    entry = {k: str(tmp_path / "LA" / dl["test"][0][k]) for k in ("image", "label")}
    b = Bundle("dycon_la")
    with b.on_path():
        parser = ConfigParser()
        parser.read_config(str(b.path(b.train_yaml)))
        parser.update({"label_crop": True, "datalist": str(tmp_path / "LA" / "datalist.json")})
        chain = parser.get_parsed_content("validate#preprocessing")
        out = chain(dict(entry))
        lab = np.asarray(out["label"][0])
        full = np.asarray(nib.load(entry["label"]).dataobj)[::-1, ::-1]  # RAS
        nz = np.nonzero(full)
        for axis in (0, 1):
            lo, hi = max(int(nz[axis].min()) - 15, 0), min(int(nz[axis].max()) + 1 + 15, full.shape[axis])
            assert lab.shape[axis] == hi - lo
        assert lab.shape[2] == full.shape[2] and int(lab.sum()) == int(full.sum())
        unlabeled = chain({"image": entry["image"]})
        assert tuple(unlabeled["image"].shape[1:]) == full.shape
        out["pred"] = out["label"].clone()
        inv = Invertd(keys="pred", transform=chain, orig_keys="label", nearest_interp=True)(out)
        np.testing.assert_array_equal(np.asarray(inv["pred"][0]), np.asarray(nib.load(entry["label"]).dataobj))
