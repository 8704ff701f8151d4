"""End-to-end tests of the LA bundle (bundles/dycon_la) through ``python -m monai.bundle`` exactly as a user types it.

* synthetic raw-layout data (``dycon synth la`` -> ``python -m custom prepare la``): train, evaluate, infer, TorchScript
  export, ``verify_net_in_out``, ``ConfigWorkflow.check_properties()``, exact resumption, and the geometry of the
  inference outputs for non-RAS (LPS-like, permuted-axes, anisotropic) inputs;
* a few REAL cases of ``<repo>/../shared/data/LA_h5`` (skipped when absent): prepare, train (no validation list: the
  final model is kept), evaluate, infer.

Everything is written under pytest's tmp dirs (``--output_dir`` / ``--ckpt_dir`` / ``--ckpt_path`` are always
overridden); ``test_bundle_folder_untouched`` checks nothing landed in ``bundles/dycon_la``. The network is shrunk
(``--network_def#features [4,8,16,32,64]`` ...) and patches are small so that the whole file stays fast on a CPU;
data preparation and training run once per dataset (module-scoped fixtures).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundle_utils import (
    REPO,
    SMALL_NET,
    EPOCH_LENGTH,
    TRAIN_ITERS,
    Bundle,
    case_name,
    check_evaluation,
    read_csv,
    check_model_pt,
    check_prediction,
    check_training_checkpoint,
    load_weights,
    run,
    small_net,
)

from custom.data.la import H5_FOLDER, synth_la

LA = Bundle("dycon_la")
BUNDLE = LA.root
METADATA = LA.metadata
REAL_LA = REPO.parent / "shared" / "data" / "LA_h5"
SYNTH_SHAPE = (48, 48, 32)

bundle_train = LA.train
bundle_evaluate = LA.evaluate
bundle_infer = LA.infer


# ------------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module", autouse=True)
def bundle_folder_snapshot():
    """The files of bundles/dycon_la before this module ran (configs, docs, default outputs eval/, models/)."""

    before = LA.output_snapshot()
    yield LA.output_snapshot, before


@dataclass
class Run:
    root: Path
    dataset: Path  # prepared dataset (datalist.json, images/, labels/)
    out: Path  # out/eval (= --output_dir), out/models (= --ckpt_dir)
    train_log: str

    @property
    def model(self) -> Path:
        return self.out / "models" / "model.pt"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Synthetic raw challenge release (4 train + 2 test) -> ``python -m custom prepare la --labeled 2 --val 1``
    -> 4 training iterations (2 epochs of 2) with a validation after each epoch."""
    root = tmp_path_factory.mktemp("la_synth")
    raw = synth_la(root / "raw", n_train=4, n_test=2, shape=SYNTH_SHAPE, seed=0)
    prep = root / "prep"
    run("-m", "custom", "prepare", "la", "--src", raw, "--dst", prep, "--labeled", "2", "--val", "1")
    out = root / "out"
    log = bundle_train(prep, out, log=root / "train.log")
    return Run(root, prep, out, log)


@pytest.fixture(scope="module")
def synth_eval(synth: Run) -> str:
    return bundle_evaluate(synth.dataset, synth.out, log=synth.root / "evaluate.log")


@pytest.fixture(scope="module")
def synth_pred(synth: Run) -> Path:
    pred = synth.root / "pred"
    bundle_infer(synth.dataset / "images", pred, synth.model, log=synth.root / "infer.log")
    return pred


@pytest.fixture(scope="module")
def synth_raw_pred(synth: Run) -> Path:
    """inference.yaml on the RAW test studies themselves (``<raw>/<id>/lgemri.nrrd``, their own nrrd geometry)."""
    pred = synth.root / "pred_raw"
    test_ids = [e["id"] for e in json.loads((synth.dataset / "datalist.json").read_text())["test"]]
    files = [str(synth.root / "raw" / i / "lgemri.nrrd") for i in test_ids]
    bundle_infer(
        "[" + ",".join(f"'{f}'" for f in files) + "]", pred, synth.model,
        "--output_data_root", synth.root / "raw", log=synth.root / "infer_raw.log",
    )  # fmt: skip
    return pred


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """6 real cases (symlinked, 4 training + 2 test ids) -> prepare (2 labeled, 2 unlabeled, no validation)
    -> 2 training iterations, one epoch (no validation list: the final model is model.pt)."""
    cases = REAL_LA / H5_FOLDER
    if not cases.is_dir():
        pytest.skip(f"real LA h5 data not found at {REAL_LA}")
    listed = [s.strip() for s in (REAL_LA / "train.list").read_text().split() if s.strip()]
    present = [c for c in listed if (cases / c / "mri_norm2.h5").is_file()]
    if len(present) < 6:
        pytest.skip(f"need 6 real LA cases in {cases}, found {len(present)}")
    ids = present[:6]
    root = tmp_path_factory.mktemp("la_real")
    src = root / "src"
    (src / H5_FOLDER).mkdir(parents=True)
    for c in ids:
        (src / H5_FOLDER / c).symlink_to(cases / c, target_is_directory=True)
    (src / "train.list").write_text("\n".join(ids[:4]) + "\n")
    (src / "test.list").write_text("\n".join(ids[4:]) + "\n")
    prep = root / "prep"
    run("-m", "custom", "prepare", "la", "--src", src, "--dst", prep, "--labeled", "2")
    out = root / "out"
    log = bundle_train(prep, out, max_epochs=1, epoch_length=2, log=root / "train.log")
    return Run(root, prep, out, log)


# ------------------------------------------------------------------------------------------- synthetic data


def test_synth_prepared_datalist(synth: Run):
    dl = json.loads((synth.dataset / "datalist.json").read_text())
    assert [len(dl[k]) for k in ("training", "unlabeled", "validation", "test")] == [2, 1, 1, 2]


def test_synth_train(synth: Run):
    check_model_pt(synth.model)  # best validation Dice (there is a validation list)
    check_training_checkpoint(synth.out / "eval" / "checkpoints", iterations=TRAIN_ITERS)
    assert "val_mean_dice" in synth.train_log
    assert "Engine run finished" in synth.train_log


def test_synth_evaluate(synth: Run, synth_eval: str):
    check_evaluation(synth.dataset, synth.out / "eval")
    assert f"Restored all variables from {synth.model}" in synth_eval


def test_synth_infer(synth: Run, synth_pred: Path):
    inputs = sorted((synth.dataset / "images").glob("*.nii.gz"))
    assert len(inputs) == 6
    assert sorted(p.name for p in synth_pred.glob("*_seg.nii.gz")) == sorted(
        f"{case_name(p)}_seg.nii.gz" for p in inputs
    )
    assert len(list(synth_pred.glob("*_prob.nii.gz"))) == len(inputs)
    for p in inputs:
        check_prediction(p, synth_pred)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def test_raw_study_inference_matches_evaluate(synth: Run, synth_eval: str, synth_pred: Path, synth_raw_pred: Path):
    """Done-when of issue #14: the raw challenge files (lgemri.nrrd, 1 mm LPS headers) through inference.yaml give
    the mask that evaluate.yaml gives on the same cases of the prepared dataset (compared on the raw grid: both are
    in the nrrd's index order), in the raw file's own geometry, as uint8; and its Dice against the raw label
    (laendo.nrrd) is evaluate's. The masks of a 4-iteration model are coarse, so the foreground probabilities are
    compared too: a raw study reaching the network mirrored (the 1.x defect) would give them mirrored."""
    import nrrd

    from custom.data.la import nrrd_affine

    rows = {case_name(r["filename"]): r for r in read_csv(synth.out / "eval" / "metrics_per_case.csv")}
    assert {r["protocol"] for r in rows.values()} == {"label_free"}
    test_ids = [e["id"] for e in json.loads((synth.dataset / "datalist.json").read_text())["test"]]
    assert len(test_ids) == 2
    report = {}
    for case_id in test_ids:
        raw_image, header = nrrd.read(str(synth.root / "raw" / case_id / "lgemri.nrrd"))
        raw_label, _ = nrrd.read(str(synth.root / "raw" / case_id / "laendo.nrrd"))
        out = nib.load(synth_raw_pred / case_id / "lgemri_seg.nii.gz")
        mask = np.asarray(out.dataobj)
        assert out.get_data_dtype() == np.uint8 and mask.shape == raw_image.shape
        np.testing.assert_allclose(out.affine, nrrd_affine(header), atol=1e-5)  # the raw file's own geometry (RAS)
        evaluated = np.asarray(nib.load(synth.out / "eval" / "predictions" / f"{case_id}_seg.nii.gz").dataobj)
        assert evaluated.shape == raw_image.shape
        agreement = _dice(mask, evaluated)
        dice_raw = _dice(mask, raw_label == 255)
        dice_eval = float(rows[case_id]["dice"])
        report[case_id] = (agreement, dice_raw, dice_eval)
        assert mask.any(), "the model predicts no atrium: the comparison would be vacuous"
        assert agreement >= 0.9, report
        assert abs(dice_raw - dice_eval) <= 0.02, report
        prob_raw = np.asarray(nib.load(synth_raw_pred / case_id / "lgemri_prob.nii.gz").dataobj)
        prob_prepared = np.asarray(nib.load(synth_pred / f"{case_id}_prob.nii.gz").dataobj)
        np.testing.assert_allclose(prob_raw, prob_prepared, atol=1e-5)
        assert np.abs(prob_raw - prob_prepared[::-1, ::-1]).max() > 0.05  # the check would see a mirrored input
    print("raw-study inference vs evaluate (agreement Dice, Dice vs raw label, evaluate's Dice):", report)


def _flip_xy(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Affine of ``data[::-1, ::-1, :]`` that keeps every voxel at the same world position (LPS-like axes)."""
    f = np.diag([-1.0, -1.0, 1.0, 1.0])
    f[0, 3], f[1, 3] = shape[0] - 1, shape[1] - 1
    return affine @ f


def _permute(affine: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """Affine of ``data.transpose(order)`` that keeps every voxel at the same world position."""
    p = np.zeros((4, 4))
    for new_axis, old_axis in enumerate(order):
        p[old_axis, new_axis] = 1.0
    p[3, 3] = 1.0
    return affine @ p


def test_synth_infer_non_ras_geometry(synth: Run, synth_pred: Path):
    """Inputs in other orientations / spacings: masks and probabilities come back in each input's own geometry
    (same shape and affine). The flipped and permuted copies describe the same physical image as the reference,
    so after the bundle's RAS reorientation the network sees the same array: their outputs must be the reference
    outputs, flipped / transposed back."""
    ref_path = sorted((synth.dataset / "images").glob("*.nii.gz"))[0]
    ref = nib.load(ref_path)
    data = np.asarray(ref.dataobj, dtype=np.float32)
    ref_seg, ref_prob = check_prediction(ref_path, synth_pred)

    folder = synth.root / "non_ras"
    folder.mkdir()
    lps_affine = _flip_xy(ref.affine, data.shape)
    lps_affine[:3, 3] += (12.5, -30.0, 7.25)  # a different origin on top of the flip
    variants = {
        "lps": (np.ascontiguousarray(data[::-1, ::-1, :]), lps_affine),
        "permuted": (np.ascontiguousarray(data.transpose(2, 0, 1)), _permute(ref.affine, (2, 0, 1))),
        "aniso": (data, np.array([[-0.7, 0, 0, -20.0], [0, -0.7, 0, 5.0], [0, 0, 2.5, 40.0], [0, 0, 0, 1]])),
    }
    for name, (arr, aff) in variants.items():
        nib.save(nib.Nifti1Image(arr, aff), folder / f"{name}.nii.gz")
    axcodes = {name: nib.aff2axcodes(nib.load(folder / f"{name}.nii.gz").affine) for name in variants}
    # the prepared reference carries the raw nrrd's LPS orientation; its x/y-flipped copy reads RAS
    assert nib.aff2axcodes(ref.affine) == ("L", "P", "S")
    assert axcodes == {"lps": ("R", "A", "S"), "permuted": ("S", "L", "P"), "aniso": ("L", "P", "S")}

    pred = synth.root / "pred_non_ras"
    bundle_infer(folder, pred, synth.model, log=synth.root / "infer_non_ras.log")
    outputs = {name: check_prediction(folder / f"{name}.nii.gz", pred) for name in variants}

    # the shifted origin of the LPS copy moves it in space, not the array that the network sees
    np.testing.assert_array_equal(outputs["lps"][0], ref_seg[::-1, ::-1, :])
    np.testing.assert_allclose(outputs["lps"][1], ref_prob[::-1, ::-1, :], atol=1e-5)
    np.testing.assert_array_equal(outputs["permuted"][0], ref_seg.transpose(2, 0, 1))
    np.testing.assert_allclose(outputs["permuted"][1], ref_prob.transpose(2, 0, 1), atol=1e-5)
    np.testing.assert_array_equal(outputs["aniso"][0], ref_seg)  # spacing is not resampled
    np.testing.assert_allclose(outputs["aniso"][1], ref_prob, atol=1e-5)


def test_synth_resume_is_exact(synth: Run):
    """An interrupted run (stopped after its first epoch of 2 iterations) resumed with ``--resume true`` continues
    from its checkpoint and ends with the very weights of the uninterrupted 4-iteration run. All three runs are fp32
    (``--amp false``): bf16 autocast on a CPU (``--amp auto`` where the CPU has AVX512-BF16 / AMX) is not
    reproducible run to run, even for two uninterrupted runs."""
    fp32 = ("--amp", "false")
    straight_out = synth.root / "straight_fp32"
    bundle_train(synth.dataset, straight_out, *fp32, log=synth.root / "straight_fp32.log")
    out = synth.root / "resume"
    # the trainer stops after one epoch; the beta schedule (over train#trainer#max_epochs x epoch_length) keeps the
    # uninterrupted run's total of 4 iterations, as an interruption would
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(LA.path(LA.train_yaml)))
    (beta,) = [i for i, h in enumerate(parser["train#handlers"]) if h.get("name") == "beta"]
    stop = ("--train#trainer#max_epochs", "1", f"--train#handlers#{beta}#schedule#total_steps", str(TRAIN_ITERS))
    first = bundle_train(synth.dataset, out, *fp32, *stop, log=synth.root / "resume1.log")
    assert "Epoch: 1/1, Iter: 2/2" in first
    ckpts = out / "eval" / "checkpoints"
    assert [p.name for p in ckpts.glob("*.pt")] == ["checkpoint_epoch=1.pt"]
    check_training_checkpoint(ckpts, iterations=EPOCH_LENGTH)

    second = bundle_train(synth.dataset, out, *fp32, "--resume", "true", log=synth.root / "resume2.log")
    assert f"Restored all variables from {ckpts / 'checkpoint_epoch=1.pt'}" in second
    assert "Epoch: 1/2, Iter:" not in second  # the first epoch is not trained again
    assert "Epoch: 2/2, Iter: 2/2" in second
    assert "Engine run finished" in second
    final = check_training_checkpoint(ckpts, iterations=TRAIN_ITERS)
    assert final.name == "checkpoint_epoch=2.pt"
    check_model_pt(out / "models" / "model.pt")

    resumed = load_weights(final)
    straight = load_weights(straight_out / "eval" / "checkpoints" / "checkpoint_epoch=2.pt")
    for key in ("network", "teacher"):
        assert resumed[key].keys() == straight[key].keys()
        for name in straight[key]:
            torch.testing.assert_close(resumed[key][name], straight[key][name], rtol=0, atol=1e-5, msg=name)


def test_verify_net_in_out():
    """The network of inference.yaml (default size) against metadata.json's network_data_format. ``--n 2``: the
    metadata's "16*n" with the default n=1 means a 16^3 input, whose 1x1x1 bottleneck InstanceNorm rejects."""
    out = LA.verify_net_in_out()
    assert "data shape of network is verified with no error" in out


def test_ckpt_export_torchscript(synth: Run):
    ts_path = synth.root / "export" / "model.ts"
    ts_path.parent.mkdir()
    LA.ckpt_export(ts_path, synth.model)
    assert ts_path.is_file()
    from monai.data import load_net_with_metadata

    scripted, meta, extra = load_net_with_metadata(ts_path, more_extra_files=("inference.json",))
    assert meta["version"] == json.loads(LA.path(METADATA).read_text())["version"]
    assert json.loads(extra["inference.json"])["network_def"]["_target_"] == "scripts.networks.UNet3D"

    eager = small_net()
    eager.load_state_dict(load_weights(synth.model), strict=True)
    eager.eval()
    scripted.eval()
    x = torch.randn(1, 1, 32, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), eager(x), rtol=1e-4, atol=1e-5)
        (ts_logits, ts_emb), (logits, emb) = scripted.forward_with_embeddings(x), eager.forward_with_embeddings(x)
    torch.testing.assert_close(ts_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ts_emb, emb, rtol=1e-4, atol=1e-5)
    assert ts_emb.shape == (1, SMALL_NET["embed_dim"], 4, 4, 6)


@pytest.mark.parametrize("workflow_type", ["train", "infer"])
def test_check_properties(workflow_type: str, synth: Run, tmp_path: Path):
    with LA.checked_workflow(workflow_type, synth.dataset, synth.model, tmp_path) as workflow:
        if workflow_type == "train":
            assert len(workflow.train_dataset) == 2
        else:
            assert len(workflow.dataset) == 2  # the datalist's test list


# ------------------------------------------------------------------------------------------------ real data


def test_real_prepared_datalist(real: Run):
    dl = json.loads((real.dataset / "datalist.json").read_text())
    assert [len(dl.get(k) or []) for k in ("training", "unlabeled", "validation", "test")] == [2, 2, 0, 2]
    shape = nib.load(real.dataset / dl["test"][0]["image"]).shape
    assert len(shape) == 3 and shape[2] == 88 and min(shape) >= 80  # real volumes, not the synthetic ones


def test_real_train(real: Run):
    check_model_pt(real.model)  # no validation list: the final student
    assert "saved final checkpoint" in real.train_log
    check_training_checkpoint(real.out / "eval" / "checkpoints", iterations=2)


def test_real_evaluate(real: Run):
    # big windows (one in z) and little overlap keep the sliding window over ~190x145x88 volumes fast
    log = bundle_evaluate(
        real.dataset, real.out, "--patch_size", "[96,96,96]", "--sw_overlap", "0.25", log=real.root / "evaluate.log"
    )
    assert f"Restored all variables from {real.model}" in log
    check_evaluation(real.dataset, real.out / "eval")


def test_real_infer_single_file(real: Run):
    test = json.loads((real.dataset / "datalist.json").read_text())["test"]
    image = real.dataset / test[0]["image"]
    pred = real.root / "pred"
    bundle_infer(
        image, pred, real.model, "--patch_size", "[96,96,96]", "--sw_overlap", "0.25", log=real.root / "infer.log"
    )
    assert sorted(p.name for p in pred.iterdir()) == sorted(
        [f"{case_name(image)}_seg.nii.gz", f"{case_name(image)}_prob.nii.gz"]
    )
    check_prediction(image, pred)


# --------------------------------------------------------------------------------------------------- hygiene


def test_bundle_folder_untouched(bundle_folder_snapshot):
    """No run of this module wrote into the repository's bundle (eval/ and models/ are the default outputs)."""
    snapshot, before = bundle_folder_snapshot
    assert snapshot() == before
