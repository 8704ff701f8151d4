"""End-to-end tests of the BraTS 2019 bundle (bundles/dycon_brats19) through ``python -m monai.bundle``.

A synthetic raw release (``custom.data.brats19.synth_brats19``: 7 tiny cases whose ids come from the official lists,
4 of train.txt, 1 of val.txt, 2 of test.txt) is prepared with the CLI (``python -m custom prepare brats19
--labeled 2``) once as FLAIR (1 channel) and once with ``--modalities all`` (4 channels, (X, Y, Z, 4) NIfTI). Then:

* 1 channel: train (8 iterations, 2 epochs of 4 with 2 labeled pos/neg patches, validation on val.txt after each:
  model.pt = best validation Dice, ~0.8, so that masks are tumour-shaped) -> evaluate (on test.txt: one CSV row per test case, metrics in range, predictions in the label's geometry)
  -> infer on the RAW ``*_flair.nii.gz`` test files of the release and on copies re-written in other geometries
  (reoriented to SLA; reoriented and at 2 mm slices): uint8 masks on each input's own grid that agree with
  evaluate.yaml's (the done-when test of issue #14: agreement Dice >= 0.9, Dice against the raw label within 0.02,
  0.05 for the 2 mm-slice copy);
* 4 channels (``--in_channels 4`` on every command): train -> evaluate -> infer, same checks on the spatial shape;
* ``verify_net_in_out`` (1 and 4 channels), ``ConfigWorkflow.check_properties()`` for train and inference, the
  configs' defaults (96^3 patch, 1 channel, validation on val.txt, evaluation on test.txt), the preprocessing lists
  of train.yaml and inference.yaml (the same steps).

The network is shrunk and patches are 32^3 (the shared helpers of ``bundle_utils``); every output goes to pytest's
tmp dirs, and ``test_bundle_folder_untouched`` checks that nothing landed in ``bundles/dycon_brats19``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundle_utils import (
    TRAIN_ITERS,
    Bundle,
    case_name,
    check_evaluation,
    check_model_pt,
    check_prediction,
    check_training_checkpoint,
    run,
)

from custom.data.brats19 import RELEASE_FOLDER, official_splits, synth_brats19

BRATS = Bundle("dycon_brats19")
SYNTH_SHAPE = (48, 48, 32)
N_IDS = {"training": 4, "validation": 1, "test": 2}  # taken from the head of train.txt / val.txt / test.txt


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def bundle_folder_snapshot():
    """The files of bundles/dycon_brats19 before this module ran (configs, docs, default outputs eval/, models/)."""
    before = BRATS.output_snapshot()
    yield BRATS.output_snapshot, before


@pytest.fixture(scope="module")
def split_ids() -> dict[str, list[str]]:
    lists, _ = official_splits()
    return {key: lists[key][:n] for key, n in N_IDS.items()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory, split_ids: dict[str, list[str]]) -> Path:
    root = tmp_path_factory.mktemp("brats_raw")
    ids = [i for key in ("training", "validation", "test") for i in split_ids[key]]
    return synth_brats19(root / "raw", ids=ids, shape=SYNTH_SHAPE, seed=0)


@dataclass
class Run:
    root: Path
    dataset: Path  # prepared dataset (datalist.json, images/, labels/)
    out: Path  # out/eval (= --output_dir), out/models (= --ckpt_dir)
    in_channels: int
    train_log: str

    @property
    def model(self) -> Path:
        return self.out / "models" / "model.pt"

    @property
    def channel_args(self) -> tuple[str, ...]:
        return ("--in_channels", str(self.in_channels))


# FLAIR: a model that segments (validation Dice ~0.8), so that the done-when comparison of inference and evaluate
# compares tumour masks, not noise: 8 iterations of 2 labeled patches centred on tumour / background half the time
FLAIR_TRAIN = ("--labeled_batch_size", "2", "--crop_sampling", "pos_neg", "--learning_rate", "0.05")
FLAIR_EPOCHS, FLAIR_EPOCH_LENGTH = 2, 4


def _prepare_and_train(tmp_path_factory: pytest.TempPathFactory, raw: Path, in_channels: int) -> Run:
    root = tmp_path_factory.mktemp(f"brats_{in_channels}ch")
    prep = root / "prep"
    modalities = ["--modalities", "all"] if in_channels == 4 else []
    run("-m", "custom", "prepare", "brats19", "--src", raw, "--dst", prep, "--labeled", "2", *modalities)
    out = root / "out"
    channels = ("--in_channels", str(in_channels))
    if in_channels == 1:
        log = BRATS.train(prep, out, *channels, *FLAIR_TRAIN, max_epochs=FLAIR_EPOCHS,
                          epoch_length=FLAIR_EPOCH_LENGTH, log=root / "train.log")  # fmt: skip
    else:
        log = BRATS.train(prep, out, *channels, log=root / "train.log")
    return Run(root, prep, out, in_channels, log)


@pytest.fixture(scope="module")
def flair(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> Run:
    """FLAIR only (the paper's setting): prepare -> 8 training iterations (FLAIR_TRAIN), validation on val.txt after
    each epoch of 4."""
    return _prepare_and_train(tmp_path_factory, raw, 1)


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory, raw: Path) -> Run:
    """Four modalities (``--modalities all``, ``--in_channels 4``): prepare -> 4 training iterations."""
    return _prepare_and_train(tmp_path_factory, raw, 4)


def _evaluate(r: Run) -> str:
    return BRATS.evaluate(r.dataset, r.out, *r.channel_args, log=r.root / "evaluate.log")


def _infer(r: Run) -> Path:
    """Inference on the prepared datalist.json (its test list)."""
    pred = r.root / "pred"
    BRATS.infer(r.dataset / "datalist.json", pred, r.model, *r.channel_args, log=r.root / "infer.log")
    return pred


def _reoriented(img: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    ornt = nib.orientations.ornt_transform(nib.io_orientation(img.affine), nib.orientations.axcodes2ornt(axcodes))
    return img.as_reoriented(ornt)


def _thick_slices(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """Every other slice of the last axis (2 mm slices, a thick-slice clinical FLAIR): voxel k of the copy is voxel
    2k of ``img``."""
    affine = img.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    out = nib.Nifti1Image(np.asarray(img.dataobj)[:, :, ::2], affine)
    out.set_qform(affine, code=1)
    return out


def _back(mask: nib.Nifti1Image, raw: nib.Nifti1Image) -> nib.Nifti1Image:
    """A mask of a reoriented copy in the raw file's axis order again (exact: axis permutations and flips)."""
    return _reoriented(mask, nib.orientations.aff2axcodes(raw.affine))


# copies of a raw test FLAIR in other geometries: name -> (make the copy, the same subgrid of a raw-grid array)
GEOMETRIES = {
    "sla": (lambda img: _reoriented(img, ("S", "L", "A")), lambda a: a),  # 1 mm, axes permuted and flipped
    "thick": (lambda img: _reoriented(_thick_slices(img), ("A", "S", "R")), lambda a: a[:, :, ::2]),  # 1 x 1 x 2 mm
}


@pytest.fixture(scope="module")
def raw_inputs(flair: Run, raw: Path) -> Path:
    """The raw ``<id>_flair.nii.gz`` of every test case (byte copies of the release's files) and, for the first,
    its copies in the GEOMETRIES (``<id>-<geometry>_flair.nii.gz``)."""
    folder = flair.root / "raw_inputs"
    folder.mkdir()
    for k, cid in enumerate(_ids(_datalist(flair)["test"])):
        src = next((raw / RELEASE_FOLDER).glob(f"*/{cid}/{cid}_flair.nii.gz"))
        (folder / src.name).write_bytes(src.read_bytes())
        if k == 0:
            for name, (make, _) in GEOMETRIES.items():
                nib.save(make(nib.load(src)), str(folder / f"{cid}-{name}_flair.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def flair_pred(flair: Run, raw_inputs: Path) -> Path:
    """inference.yaml on the folder of raw FLAIR files (no preparation)."""
    pred = flair.root / "pred"
    BRATS.infer(raw_inputs, pred, flair.model, *flair.channel_args, log=flair.root / "infer.log")
    return pred


@pytest.fixture(scope="module")
def flair_eval(flair: Run) -> str:
    return _evaluate(flair)


@pytest.fixture(scope="module")
def multi_eval(multi: Run) -> str:
    return _evaluate(multi)


@pytest.fixture(scope="module")
def multi_pred(multi: Run) -> Path:
    return _infer(multi)


def _datalist(r: Run) -> dict:
    return json.loads((r.dataset / "datalist.json").read_text())


def _ids(entries: list[dict]) -> list[str]:
    return [case_name(e["image"]) for e in entries]


# -------------------------------------------------------------------------------------------------- configs


def test_config_defaults():
    """The BraTS settings of the configs, read with MONAI's parser (nothing is instantiated)."""
    from monai.bundle import ConfigParser

    for name in ("train_yaml", "inference_yaml"):
        parser = ConfigParser()
        parser.read_config(str(BRATS.path(getattr(BRATS, name))))
        assert parser["dataset_dir"] == "/workspace/data/BraTS2019"
        assert parser["patch_size"] == [96, 96, 96]
        assert parser["in_channels"] == 1
        assert parser["network_def"]["in_channels"] == "@in_channels"
    parser = ConfigParser()
    parser.read_config(str(BRATS.path(BRATS.train_yaml)))
    assert (parser["labeled_batch_size"], parser["unlabeled_batch_size"]) == (4, 4)
    # 20000 iterations (100 epochs of 200), validated after every epoch
    assert (parser["max_epochs"], parser["epoch_length"], parser["val_interval"]) == (100, 200, 1)
    assert "'validation'" in parser["validate"]["dataset"]["data"]  # val.txt selects the checkpoint
    parser.read_config([str(BRATS.path(BRATS.train_yaml)), str(BRATS.path(BRATS.evaluate_yaml))])
    assert "'test'" in parser["validate#dataset#data"]  # evaluate.yaml: test.txt
    writer = [h for h in parser["validate#handlers"] if h["_target_"] == "scripts.handlers.CaseMetricsWriter"]
    assert writer[0]["protocol"] == "$scripts.transforms.protocol_name(False)"  # label_free
    assert parser["keep_largest_component"] is True
    meta = json.loads(BRATS.path(BRATS.metadata).read_text())
    assert meta["version"] in meta["changelog"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["modality"], image["num_channels"], image["channel_def"]) == ("MR", 1, {"0": "FLAIR"})
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "whole tumour"}
    for f in (
        "LICENSE",
        "large_files.yml",
        "docs/README.md",
        "docs/data_license.txt",
        "configs/logging.conf",
        "configs/multi_gpu_train.yaml",
    ):
        assert (BRATS.root / f).is_file(), f


def test_preprocessing_lists():
    """train.yaml and inference.yaml list the same preprocessing (classes and arguments; keys image + label vs image
    only), every spatial step of it is undone by Invertd, and the resampling is MONAI Label-safe."""
    from monai.bundle import ConfigParser

    lists = {}
    for name in ("train_yaml", "inference_yaml"):
        parser = ConfigParser()
        parser.read_config(str(BRATS.path(getattr(BRATS, name))))
        lists[name] = parser["preprocessing_transforms"]
    train, infer = lists["train_yaml"], lists["inference_yaml"]
    assert [t["_target_"] for t in train] == [t["_target_"] for t in infer] == [
        "LoadImaged", "EnsureChannelFirstd", "Orientationd", "EnsureTyped", "scripts.transforms.Spacingd",
        "CropForegroundd", "scripts.transforms.ClipNonzeroPercentiled", "NormalizeIntensityd",
    ]  # fmt: skip
    for t, i in zip(train, infer):
        assert i["keys"] == "image" and "allow_missing_keys" not in i
        assert t["keys"] in ("image", ["image", "label"])
        t_args = {k: v for k, v in t.items() if k not in ("keys", "allow_missing_keys", "mode")}
        assert t_args == {k: v for k, v in i.items() if k not in ("keys", "mode")}
        if "mode" in t:  # Spacingd: bilinear image (nearest label)
            assert t["mode"] == ["bilinear", "nearest"] and i["mode"] == "bilinear"
    spacing = next(t for t in infer if t["_target_"].endswith("Spacingd"))
    assert spacing["pixdim"] == [1.0, 1.0, 1.0]
    crop = next(t for t in infer if t["_target_"] == "CropForegroundd")
    assert crop["source_key"] == "image" and "select_fn" not in crop  # image > 0 in any channel, label-free
    assert next(t for t in infer if t["_target_"].endswith("ClipNonzeroPercentiled"))["upper"] == 99.9
    assert next(t for t in infer if t["_target_"] == "NormalizeIntensityd")["nonzero"] is True


# ------------------------------------------------------------------------------------------- 1 channel (FLAIR)


def test_prepared_datalist(flair: Run, multi: Run, split_ids: dict[str, list[str]]):
    for r in (flair, multi):
        dl = _datalist(r)
        assert [len(dl[k]) for k in ("training", "unlabeled", "validation", "test")] == [2, 2, 1, 2]
        assert _ids(dl["training"]) + _ids(dl["unlabeled"]) == split_ids["training"]
        assert _ids(dl["validation"]) == split_ids["validation"]
        assert _ids(dl["test"]) == split_ids["test"]
        shape = nib.load(r.dataset / dl["test"][0]["image"]).shape
        assert len(shape) == (3 if r.in_channels == 1 else 4)
        assert shape[:3] == SYNTH_SHAPE  # the raw grid: prepare converts, the bundle crops
        if r.in_channels == 4:
            assert shape[3] == 4
            assert nib.load(r.dataset / dl["test"][0]["label"]).shape == shape[:3]


def test_train(flair: Run):
    check_model_pt(flair.model)  # best validation Dice on val.txt
    check_training_checkpoint(flair.out / "eval" / "checkpoints", iterations=FLAIR_EPOCHS * FLAIR_EPOCH_LENGTH)
    assert "val_mean_dice" in flair.train_log
    assert "Engine run finished" in flair.train_log


def test_evaluate_on_test_list(flair: Run, flair_eval: str, split_ids: dict[str, list[str]]):
    check_evaluation(flair.dataset, flair.out / "eval")
    assert f"Restored all variables from {flair.model}" in flair_eval
    rows = (flair.out / "eval" / "metrics_per_case.csv").read_text().splitlines()[1:]
    assert sorted(case_name(r.split(",")[0]) for r in rows) == sorted(split_ids["test"])


def test_infer_raw_files(raw_inputs: Path, flair_pred: Path):
    inputs = sorted(raw_inputs.glob("*_flair.nii.gz"))
    assert len(inputs) == N_IDS["test"] + len(GEOMETRIES)
    assert sorted(p.name for p in flair_pred.glob("*_seg.nii.gz")) == sorted(
        f"{case_name(p)}_seg.nii.gz" for p in inputs
    )
    for image in inputs:
        check_prediction(image, flair_pred)  # uint8 {0, 1} on the input's own grid, probabilities too


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def test_raw_inference_matches_evaluate(flair: Run, flair_eval: str, raw: Path, flair_pred: Path):
    """Issue #14, done when: inference.yaml on the raw FLAIR files (and on copies in other geometries) gives the
    mask evaluate.yaml gives on the same cases, compared on the raw grid: agreement Dice >= 0.9 and Dice against
    the raw label within 0.02 of evaluate's."""
    rows = {
        case_name(r.split(",")[0]): r.split(",")
        for r in (flair.out / "eval" / "metrics_per_case.csv").read_text().splitlines()[1:]
    }
    header = (flair.out / "eval" / "metrics_per_case.csv").read_text().splitlines()[0].split(",")
    report = []
    for k, cid in enumerate(_ids(_datalist(flair)["test"])):
        raw_flair = nib.load(next((raw / RELEASE_FOLDER).glob(f"*/{cid}/{cid}_flair.nii.gz")))
        raw_label = np.asarray(nib.load(next((raw / RELEASE_FOLDER).glob(f"*/{cid}/{cid}_seg.nii.gz"))).dataobj) > 0
        ev_img = nib.load(flair.out / "eval" / "predictions" / f"{cid}_seg.nii.gz")
        np.testing.assert_allclose(ev_img.affine, raw_flair.affine, atol=1e-5)  # evaluate: on the raw grid
        ev = np.asarray(ev_img.dataobj)
        assert 0 < np.count_nonzero(ev) < ev.size, f"{cid}: evaluate's mask is empty or full, nothing compared"
        ev_dice = float(rows[cid][header.index("dice")])
        assert ev_dice == pytest.approx(_dice(ev, raw_label), abs=1e-5)
        pred = nib.load(flair_pred / f"{cid}_flair_seg.nii.gz")
        np.testing.assert_allclose(pred.affine, raw_flair.affine, atol=1e-5)
        inf = np.asarray(pred.dataobj)
        report.append((cid, "raw", _dice(inf, ev), _dice(inf, raw_label), ev_dice))
        if k == 0:
            for name, (_, sub) in GEOMETRIES.items():
                m = _back(nib.load(flair_pred / f"{cid}-{name}_flair_seg.nii.gz"), raw_flair)
                assert m.shape == sub(ev).shape
                np.testing.assert_allclose(m.affine[:3, 3], raw_flair.affine[:3, 3], atol=1e-4)  # same grid again
                inf = np.asarray(m.dataobj)
                report.append(
                    (cid, name, _dice(inf, sub(ev)), _dice(inf, sub(raw_label)), _dice(sub(ev), sub(raw_label)))
                )
    print("case, input, agreement Dice, Dice vs label, evaluate's Dice vs label:", report)
    for cid, name, agree, d_inf, d_ev in report:
        assert agree >= 0.9, f"{cid} ({name}): inference and evaluate agree at Dice {agree:.3f}"
        # thick: half the slices are gone (the model sees less), so the bound is looser there (measured: 0.024)
        tol = 0.05 if name == "thick" else 0.02
        assert abs(d_inf - d_ev) <= tol, f"{cid} ({name}): Dice vs label {d_inf:.3f}, evaluate {d_ev:.3f}"
    assert [r[2] for r in report if r[1] in ("raw", "sla")] == [1.0] * (N_IDS["test"] + 1)  # same grid, same mask


# --------------------------------------------------------------------------------------------- 4 channels


def test_train_4ch(multi: Run):
    check_model_pt(multi.model, in_channels=4)
    check_training_checkpoint(multi.out / "eval" / "checkpoints", iterations=TRAIN_ITERS, in_channels=4)
    assert "val_mean_dice" in multi.train_log


def test_evaluate_4ch(multi: Run, multi_eval: str):
    check_evaluation(multi.dataset, multi.out / "eval")  # predictions have the spatial shape of the 4-D images
    assert f"Restored all variables from {multi.model}" in multi_eval


def test_infer_4ch(multi: Run, multi_pred: Path):
    for e in _datalist(multi)["test"]:
        image = multi.dataset / e["image"]
        assert nib.load(image).shape[3] == 4
        seg, _ = check_prediction(image, multi_pred)
        assert seg.shape == nib.load(image).shape[:3]


# -------------------------------------------------------------------------------------------- model-zoo checks


@pytest.mark.parametrize("in_channels", [1, 4])
def test_verify_net_in_out(in_channels: int):
    """``verify_net_in_out`` of the inference network (default size) against metadata.json, in this process (the
    same function as ``python -m monai.bundle verify_net_in_out network_def ... --n 2``, without the start-up time of
    a subprocess); 4 channels: ``--in_channels 4`` with the metadata's num_channels set to 4."""
    from monai.bundle import verify_net_in_out

    extra = {} if in_channels == 1 else {"in_channels": 4, "_meta_#network_data_format#inputs#image#num_channels": 4}
    with BRATS.on_path():  # the configs' scripts.<module>.<name>
        verify_net_in_out(
            net_id="network_def",
            meta_file=str(BRATS.path(BRATS.metadata)),
            config_file=str(BRATS.path(BRATS.inference_yaml)),
            bundle_root=str(BRATS.root),
            device="cpu",
            n=2,
            **extra,
        )


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(workflow_type: str, flair: Run, tmp_path: Path, split_ids: dict[str, list[str]]):
    with BRATS.checked_workflow(workflow_type, flair.dataset, flair.model, tmp_path) as workflow:
        if workflow_type == "train":
            assert len(workflow.train_dataset) == 2
            assert _ids(workflow.val_dataset.data) == split_ids["validation"]  # checkpoint selection: val.txt
        else:
            assert _ids(workflow.dataset.data) == split_ids["test"]  # the datalist's test list


# --------------------------------------------------------------------------------------------------- hygiene


def test_bundle_folder_untouched(bundle_folder_snapshot):
    """No run of this module wrote into the repository's bundle (eval/ and models/ are the default outputs)."""
    snapshot, before = bundle_folder_snapshot
    assert snapshot() == before
