"""End-to-end tests of the Pancreas-NIH bundle (bundles/dycon_pancreas) through ``python -m monai.bundle``.

A synthetic RAW TCIA release (``custom.data.pancreas.synth_pancreas``: DICOM series + NIfTI labels of 4 train.list
cases, PANCREAS_0001-0004, and 2 test.list cases, PANCREAS_0063-0064; 0.7-0.9 x 0.7-0.9 x 2.5 mm, LAI as the
real headers) is prepared with the CLI (``python -m custom prepare pancreas --labeled 2``: a format conversion,
HU on the DICOM grid; no validation list, the Pancreas default). Then:

* train (4 iterations; the bundle's chain does RAS, 1 mm, HU window, body crop, z-score; no validation list, so
  model.pt is the final student) -> evaluate (on test.list: one CSV row per test case, metrics in range,
  predictions on the label's grid) -> infer on the RAW DICOM series folders of the test cases (the done-when
  test of issue #14: same masks as the evaluation on the raw grid, same Dice against the raw label);
* ``verify_net_in_out``, TorchScript export, ``ConfigWorkflow.check_properties()`` for train and inference, the
  configs' defaults (96^3 patch, 4 + 4 batch, the preprocessing list of train.yaml = inference.yaml's, the
  label_crop and prepared_h5 options) and the released code's 112x112x96 patch as an option.

The network is shrunk and patches are 32^3 (the shared helpers of ``bundle_utils``); every output goes to pytest's
tmp dirs, and ``test_bundle_folder_untouched`` checks that nothing landed in ``bundles/dycon_pancreas``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import (
    NET_ARGS,
    REPO,
    SMALL_NET,
    TRAIN_ITERS,
    Bundle,
    case_name,
    check_evaluation,
    check_model_pt,
    check_prediction,
    check_training_checkpoint,
    load_weights,
    read_csv,
    run,
    small_net,
)

from custom.data.pancreas import LABELS_FOLDER, PANCREAS_CT, read_split_lists, synth_pancreas
from custom.metrics import dice as dice_of

pytestmark = [
    pytest.mark.filterwarnings("ignore:builtin type (SwigPy|swigvarlink):DeprecationWarning"),  # ITK's SWIG
    pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader:UserWarning"),  # MONAI import, no GPU codec here
    pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated"),  # load_net_with_metadata (TorchScript)
]

PANCREAS = Bundle("dycon_pancreas")
SYNTH_SHAPE = (48, 48, 16)  # (columns, rows, slices) of the DICOM series; ~40x40x40 at 1 mm in the chain
SLICE_STEP = 2.5  # mm: anisotropic, as most real series
N_TRAIN, N_TEST = 4, 2  # the head of train.list / test.list


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def bundle_folder_snapshot():
    """The files of bundles/dycon_pancreas before this module ran (configs, docs, default outputs eval/, models/)."""
    before = PANCREAS.output_snapshot()
    yield PANCREAS.output_snapshot, before


@pytest.fixture(scope="module")
def split_ids() -> dict[str, list[str]]:
    train, test, _, _ = read_split_lists()
    return {"train": train[:N_TRAIN], "test": test[:N_TEST]}


@dataclass
class Run:
    root: Path
    raw: Path  # synthetic raw TCIA release
    dataset: Path  # prepared dataset (datalist.json, images/, labels/)
    out: Path  # out/eval (= --output_dir), out/models (= --ckpt_dir)
    train_log: str

    @property
    def model(self) -> Path:
        return self.out / "models" / "model.pt"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Synthetic raw release -> ``python -m custom prepare pancreas --labeled 2`` -> 4 training iterations."""
    root = tmp_path_factory.mktemp("pancreas_synth")
    raw = synth_pancreas(root / "raw", n_train=N_TRAIN, n_test=N_TEST, shape=SYNTH_SHAPE, seed=0, slice_step=SLICE_STEP)
    prep = root / "prep"
    run("-m", "custom", "prepare", "pancreas", "--src", raw, "--dst", prep, "--labeled", "2")
    out = root / "out"
    log = PANCREAS.train(prep, out, log=root / "train.log")
    return Run(root, raw, prep, out, log)


@pytest.fixture(scope="module")
def synth_eval(synth: Run) -> str:
    return PANCREAS.evaluate(synth.dataset, synth.out, log=synth.root / "evaluate.log")


@pytest.fixture(scope="module")
def synth_pred(synth: Run, split_ids: dict[str, list[str]]) -> Path:
    """Inference on the RAW studies: a folder holding the test cases' folders as in the release
    (``PANCREAS_XXXX/<study>/<series>/*.dcm``), one input per DICOM series folder."""
    studies = synth.root / "studies"
    for cid in split_ids["test"]:
        shutil.copytree(synth.raw / PANCREAS_CT / cid, studies / cid)
    pred = synth.root / "pred"
    PANCREAS.infer(studies, pred, synth.model, log=synth.root / "infer.log")
    return pred


def _datalist(r: Run) -> dict:
    return json.loads((r.dataset / "datalist.json").read_text())


def _ids(entries: list[dict]) -> list[str]:
    return [case_name(e["image"]) for e in entries]


# -------------------------------------------------------------------------------------------------- configs


def test_config_defaults():
    """The Pancreas settings of the configs, read with MONAI's parser (nothing is instantiated)."""
    from monai.bundle import ConfigParser

    for name in ("train_yaml", "inference_yaml"):
        parser = ConfigParser()
        parser.read_config(str(PANCREAS.path(getattr(PANCREAS, name))))
        assert parser["dataset_dir"] == "/workspace/data/Pancreas"
        assert parser["patch_size"] == [96, 96, 96]
        assert parser["in_channels"] == 1
        assert parser["prepared_h5"] is False  # raw studies in (HU)
        assert parser["network_def"]["in_channels"] == "@in_channels"
    parser = ConfigParser()
    parser.read_config(str(PANCREAS.path(PANCREAS.inference_yaml)))
    assert parser["keep_largest_component"] is True
    parser = ConfigParser()
    parser.read_config(str(PANCREAS.path(PANCREAS.train_yaml)))
    assert (parser["labeled_batch_size"], parser["unlabeled_batch_size"]) == (4, 4)
    assert parser["label_crop"] is False and parser["crop_sampling"] == "pos_neg"
    # 20000 iterations (100 epochs of 200), validated after every epoch
    assert (parser["max_epochs"], parser["epoch_length"], parser["val_interval"]) == (100, 200, 1)
    assert "'validation'" in parser["validate"]["dataset"]["data"]  # never the test list during training
    assert "'test'" not in json.dumps(parser.get())
    parser.read_config([str(PANCREAS.path(PANCREAS.train_yaml)), str(PANCREAS.path(PANCREAS.evaluate_yaml))])
    assert "'test'" in parser["validate#dataset#data"]  # evaluate.yaml: test.list
    assert parser["keep_largest_component"] is True
    meta = json.loads(PANCREAS.path(PANCREAS.metadata).read_text())
    assert meta["version"] == "2.0.0" and "preprocessing moved into the bundle" in meta["changelog"]["2.0.0"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["modality"], image["num_channels"]) == ("CT", 1)
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "pancreas"}
    assert meta["label_classes"] == "0: background, 1: pancreas"
    refs = " ".join(meta["references"])
    assert "DyCON" in refs and "DeepOrgan" in refs and "MC-Net+" in refs
    for f in ("LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "configs/logging.conf",
              "configs/multi_gpu_train.yaml"):
        assert (PANCREAS.root / f).is_file(), f
    # the other files are the LA bundle's, unchanged
    la = REPO / "bundles" / "dycon_la"
    for f in ("LICENSE", "large_files.yml", "configs/logging.conf"):
        assert (PANCREAS.root / f).read_text() == (la / f).read_text(), f


def _chain(yaml: str, **overrides) -> list[tuple[str, dict]]:
    """(class name, arguments without keys / allow_missing_keys / mode) of a config's preprocessing_transforms
    after MONAI's parser dropped the ``_disabled_`` items."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(PANCREAS.path(yaml)))
    parser.update(overrides)
    out = []
    with PANCREAS.on_path():
        parser.parse()
        for i, cfg in enumerate(parser["preprocessing_transforms"]):
            if "_disabled_" in cfg and parser.get_parsed_content(f"preprocessing_transforms#{i}#_disabled_"):
                continue
            skip = ("_target_", "_disabled_", "keys", "allow_missing_keys", "mode")
            args = {k: v for k, v in cfg.items() if k not in skip}
            out.append((cfg["_target_"].split(".")[-1], args))
        # MONAI's parser drops the same steps
        assert [type(t).__name__ for t in parser.get_parsed_content("preprocessing_transforms")] == [n for n, _ in out]
    return out


def test_preprocessing_chain():
    """train.yaml's list = inference.yaml's (keys apart; no label crop at inference); the options drop steps."""
    train, infer = _chain(PANCREAS.train_yaml), _chain(PANCREAS.inference_yaml)
    assert train == infer
    names = [n for n, _ in train]
    assert names == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "ScaleIntensityRanged",
                     "CropForegroundd", "EnsureTyped", "NormalizeIntensityd"]  # fmt: skip
    args = dict(train)
    assert args["Spacingd"]["pixdim"] == [1.0, 1.0, 1.0] and args["Orientationd"]["axcodes"] == "RAS"
    window = args["ScaleIntensityRanged"]
    assert [window[k] for k in ("a_min", "a_max", "b_min", "b_max", "clip")] == [-125.0, 275.0, 0.0, 1.0, True]
    crop = _chain(PANCREAS.train_yaml, label_crop=True)
    assert [n for n, _ in crop][6] == "CropAroundLabeld" and crop[6][1]["margin"] == [25, 25, None]
    assert [n for n, _ in _chain(PANCREAS.inference_yaml, label_crop=True)] == names  # never at inference
    h5 = ["LoadImaged", "EnsureChannelFirstd", "Orientationd", "Spacingd", "EnsureTyped", "NormalizeIntensityd"]
    assert [n for n, _ in _chain(PANCREAS.train_yaml, prepared_h5=True)] == h5
    assert [n for n, _ in _chain(PANCREAS.inference_yaml, prepared_h5=True)] == h5
    with PANCREAS.on_path():
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(PANCREAS.path(PANCREAS.train_yaml)))
        parser.parse()
        spacing = parser.get_parsed_content("preprocessing_transforms")[3]
        assert type(spacing).__module__ == "scripts.transforms"  # the MONAI Label-safe Spacingd


def test_released_patch_option(synth: Run):
    """``--patch_size "[112,112,96]"`` (the released code's patch): the training chain yields 112x112x96 patches
    (padded where a prepared volume is smaller) and the network takes them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(PANCREAS.path(PANCREAS.train_yaml)))
    parser["patch_size"] = [112, 112, 96]
    parser["datalist"] = str(synth.dataset / "datalist.json")
    entry = _datalist(synth)["training"][0]
    sample = {k: str(synth.dataset / entry[k]) for k in ("image", "label")}
    with PANCREAS.on_path():  # the configs' scripts.<module>.<name>
        parser.parse()
        chains = (("train#preprocessing", sample), ("train#unlabeled#preprocessing", {"image": sample["image"]}))
        for chain, data in chains:
            out = parser.get_parsed_content(chain)(dict(data))
            out = out[0] if isinstance(out, list) else out
            assert tuple(out["image"].shape) == (1, 112, 112, 96), chain
    net = small_net().eval()
    with torch.no_grad():
        assert net(out["image"][None]).shape == (1, 2, 112, 112, 96)


# --------------------------------------------------------------------------------------------- synthetic data


def test_prepared_datalist(synth: Run, split_ids: dict[str, list[str]]):
    dl = _datalist(synth)
    assert [len(dl.get(k) or []) for k in ("training", "unlabeled", "validation", "test")] == [2, 2, 0, 2]
    assert _ids(dl["training"]) + _ids(dl["unlabeled"]) == split_ids["train"]  # the first 2 of train.list labeled
    assert _ids(dl["test"]) == split_ids["test"]
    train_side = {i for k in ("training", "unlabeled", "validation") for i in _ids(dl.get(k) or [])}
    assert not train_side & set(_ids(dl["test"]))  # the test cases are never trained on
    assert all("label" not in e for e in dl["unlabeled"])
    img = nib.load(synth.dataset / dl["test"][0]["image"])
    assert img.shape == SYNTH_SHAPE and img.get_data_dtype() == np.int16  # HU on the DICOM grid
    assert np.abs(np.diag(img.affine)[2]) == SLICE_STEP and nib.aff2axcodes(img.affine) == ("L", "A", "I")
    assert dl["dycon"]["chain"] == "raw"


def test_train(synth: Run):
    check_model_pt(synth.model)  # no validation list: the final student
    assert "saved final checkpoint" in synth.train_log
    assert "val_mean_dice" not in synth.train_log
    check_training_checkpoint(synth.out / "eval" / "checkpoints", iterations=TRAIN_ITERS)
    assert "Engine run finished" in synth.train_log


def test_evaluate_on_test_list(synth: Run, synth_eval: str, split_ids: dict[str, list[str]]):
    check_evaluation(synth.dataset, synth.out / "eval")
    assert f"Restored all variables from {synth.model}" in synth_eval
    rows = (synth.out / "eval" / "metrics_per_case.csv").read_text().splitlines()[1:]
    assert sorted(case_name(r.split(",")[0]) for r in rows) == sorted(split_ids["test"])


def test_infer(synth: Run, synth_pred: Path):
    """uint8 masks and probabilities named after the case, on the raw study's grid (= the prepared image's)."""
    test = _datalist(synth)["test"]
    assert sorted(p.name for p in synth_pred.glob("*_seg.nii.gz")) == sorted(f"{i}_seg.nii.gz" for i in _ids(test))
    for e in test:
        seg, _ = check_prediction(synth.dataset / e["image"], synth_pred, probabilities=False)
        # the probabilities are resampled back linearly, the mask by nearest neighbour: they agree away from edges
        prob_img = nib.load(synth_pred / f"{case_name(e['image'])}_prob.nii.gz")
        np.testing.assert_allclose(prob_img.affine, nib.load(synth.dataset / e["image"]).affine, atol=1e-5)
        prob = np.asarray(prob_img.dataobj)
        assert prob.shape == seg.shape and prob.min() >= 0.0 and prob.max() <= 1.0
        assert np.mean((prob > 0.5) == (seg == 1)) > 0.9


def test_raw_dicom_inference_matches_evaluate(synth: Run, synth_eval: str, synth_pred: Path):
    """Issue #14's done-when: inference.yaml on the RAW DICOM series folders gives the masks that evaluate.yaml
    gives on the prepared cases (Dice >= 0.9 on the raw grid), and the same Dice against the raw label (0.02)."""
    rows = {case_name(r["filename"]): float(r["dice"]) for r in read_csv(synth.out / "eval" / "metrics_per_case.csv")}
    for cid in _ids(_datalist(synth)["test"]):
        label = nib.load(synth.raw / LABELS_FOLDER / f"label{cid[-4:]}.nii.gz")
        raw = nib.load(synth_pred / f"{cid}_seg.nii.gz")
        ev = nib.load(synth.out / "eval" / "predictions" / f"{cid}_seg.nii.gz")
        assert raw.shape == ev.shape == label.shape == SYNTH_SHAPE  # the raw grid: 0.7-0.9 x 0.7-0.9 x 2.5 mm
        np.testing.assert_allclose(raw.affine, label.affine, atol=1e-5)
        np.testing.assert_allclose(ev.affine, label.affine, atol=1e-5)
        a, b, lab = (np.asarray(x.dataobj) for x in (raw, ev, label))
        assert raw.get_data_dtype() == np.uint8 and a.any() and not a.all()
        agreement = dice_of(a, b)
        assert agreement >= 0.9, f"{cid}: raw-DICOM inference vs evaluate Dice {agreement:.3f}"
        assert abs(dice_of(a, lab) - rows[cid]) <= 0.02, f"{cid}: {dice_of(a, lab):.4f} vs evaluate {rows[cid]:.4f}"
        print(f"{cid}: agreement Dice {agreement:.4f}, Dice vs raw label {dice_of(a, lab):.4f} (evaluate {rows[cid]:.4f})")  # noqa: E501


# ---------------------------------------------------------------------------------------------- bad input


def _fails_cleanly(args: list[str], out: Path, pattern: str) -> None:
    """A bundle run that must stop with one ``dycon: error:`` line matching ``pattern`` and write nothing."""
    import re
    import subprocess
    import sys

    from bundle_utils import ENV

    cmd = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", ".", *args, "--num_workers", "0"]
    proc = subprocess.run(cmd, cwd=PANCREAS.root, env=ENV, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if ln.startswith("dycon: error: ")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), text[-3000:]
    assert not out.exists(), list(out.rglob("*"))


def test_bad_raw_study_fails_cleanly(synth: Run, tmp_path: Path):
    """A DICOM folder with a single slice (a 2-D image) or with two series: one line, nothing written."""
    single = tmp_path / "single"
    single.mkdir()
    series = next(p.parent for p in (synth.raw / PANCREAS_CT / "PANCREAS_0063").rglob("*.dcm"))
    shutil.copy(series / "1-001.dcm", single / "1-001.dcm")
    out = tmp_path / "pred"
    args = ["--config_file", PANCREAS.inference_yaml, "--ckpt_path", str(synth.model), "--output_dir", str(out),
            *NET_ARGS]  # fmt: skip
    _fails_cleanly([*args, "--input_path", str(single)], out, r"single: a DICOM series of 1 slice\(s\) is not a 3-D")


def test_wrong_chain_fails_cleanly(synth: Run, tmp_path: Path):
    """--prepared_h5 true on a raw (HU) dataset: one line naming the option, nothing written."""
    out = tmp_path / "out"
    args = ["--config_file", PANCREAS.train_yaml, "--dataset_dir", str(synth.dataset),
            "--output_dir", str(out / "eval"), "--ckpt_dir", str(out / "models"), "--prepared_h5", "true"]  # fmt: skip
    _fails_cleanly(args, out, r"holds raw CT in HU: run the bundle with --prepared_h5 false")


# -------------------------------------------------------------------------------------------- model-zoo checks


def test_verify_net_in_out():
    out = PANCREAS.verify_net_in_out()
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_torchscript(synth: Run):
    ts_path = synth.root / "export" / "model.ts"
    ts_path.parent.mkdir()
    PANCREAS.ckpt_export(ts_path, synth.model)
    from monai.data import load_net_with_metadata

    scripted, meta, _ = load_net_with_metadata(ts_path)
    assert meta["version"] == json.loads(PANCREAS.path(PANCREAS.metadata).read_text())["version"]
    eager = small_net()
    eager.load_state_dict(load_weights(synth.model), strict=True)
    eager.eval()
    scripted.eval()
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-5)
        assert scripted.forward_with_embeddings(x)[1].shape == (1, SMALL_NET["embed_dim"], 4, 4, 4)


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(workflow_type: str, synth: Run, tmp_path: Path, split_ids: dict[str, list[str]]):
    with PANCREAS.checked_workflow(workflow_type, synth.dataset, synth.model, tmp_path) as workflow:
        if workflow_type == "train":
            assert _ids(workflow.train_dataset.data) == split_ids["train"][:2]
            assert len(workflow.val_dataset.data) == 0  # no validation list: never the test list
        else:
            assert _ids(workflow.dataset.data) == split_ids["test"]  # the datalist's test list


# --------------------------------------------------------------------------------------------------- hygiene


def test_bundle_folder_untouched(bundle_folder_snapshot):
    """No run of this module wrote into the repository's bundle (eval/ and models/ are the default outputs)."""
    snapshot, before = bundle_folder_snapshot
    assert snapshot() == before
