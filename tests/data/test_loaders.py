"""custom.data.loaders: datalist reading with clear errors, endless loaders, inference inputs."""

import json

import nibabel as nib
import numpy as np
import pytest
from monai.data import Dataset

from custom.data import DatasetError, inference_inputs, load_split, stream_loader
from custom.samplers import InfiniteSeededSampler


@pytest.fixture()
def dataset(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for i in range(3):
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(tmp_path / "images" / f"c{i}.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(tmp_path / "labels" / f"c{i}.nii.gz"))
    datalist = {
        "training": [{"image": "images/c0.nii.gz", "label": "labels/c0.nii.gz", "id": "c0"}],
        "unlabeled": [{"image": "images/c1.nii.gz", "id": "c1"}],
        "validation": [],
        "test": [{"image": "images/c2.nii.gz", "label": "labels/c2.nii.gz", "id": "c2"}],
    }
    (tmp_path / "datalist.json").write_text(json.dumps(datalist))
    return tmp_path


def test_load_split_resolves_paths_and_handles_empty_lists(dataset):
    training = load_split(dataset / "datalist.json", "training")
    assert training[0]["image"] == str(dataset / "images" / "c0.nii.gz")
    assert training[0]["label"] == str(dataset / "labels" / "c0.nii.gz")
    assert load_split(dataset / "datalist.json", "validation") == []
    assert load_split(dataset / "datalist.json", "absent_key") == []
    assert "label" not in load_split(dataset / "datalist.json", "unlabeled")[0]


def test_load_split_errors_name_the_problem(dataset):
    content = json.loads((dataset / "datalist.json").read_text())
    content["training"][0]["image"] = "images/missing.nii.gz"
    (dataset / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="missing.nii.gz"):
        load_split(dataset / "datalist.json", "training")
    with pytest.raises(FileNotFoundError, match="prepare the dataset"):
        load_split(dataset / "nope.json", "training")
    content["training"][0] = {"image": "images/c0.nii.gz"}
    (dataset / "datalist.json").write_text(json.dumps(content))
    with pytest.raises(DatasetError, match="has no 'label'"):
        load_split(dataset / "datalist.json", "training")


def test_unlabeled_label_is_dropped(dataset):
    content = json.loads((dataset / "datalist.json").read_text())
    content["unlabeled"][0]["label"] = "labels/c1.nii.gz"
    (dataset / "datalist.json").write_text(json.dumps(content))
    assert "label" not in load_split(dataset / "datalist.json", "unlabeled")[0]


def test_stream_loader_is_endless_and_seeded():
    ds = Dataset([{"x": i} for i in range(3)])
    loader = stream_loader(ds, batch_size=2, seed=5)
    assert isinstance(loader.sampler, InfiniteSeededSampler)
    it = iter(loader)
    batches = [next(it)["x"].tolist() for _ in range(6)]  # 12 samples from 3 cases: it never stops
    again = iter(stream_loader(ds, batch_size=2, seed=5))
    assert batches == [next(again)["x"].tolist() for _ in range(6)]
    assert stream_loader(Dataset([]), 2, what="unlabeled") is None
    with pytest.raises(DatasetError, match="labeled training list is empty"):
        stream_loader(Dataset([]), 2)


def test_inference_inputs(dataset):
    assert len(inference_inputs(dataset / "images")) == 3
    one = inference_inputs(dataset / "images" / "c0.nii.gz")
    assert one == [{"image": str((dataset / "images" / "c0.nii.gz").resolve())}]
    assert inference_inputs(dataset / "datalist.json") == [{"image": str(dataset / "images" / "c2.nii.gz")}]
    with pytest.raises(FileNotFoundError):
        inference_inputs(dataset / "nothing")
    (dataset / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        inference_inputs(dataset / "empty")
    with pytest.raises(DatasetError, match="not an image file"):
        inference_inputs(dataset / "datalist.txt" if (dataset / "datalist.txt").write_text("x") else None)


@pytest.fixture(scope="module")
def dicom_release(tmp_path_factory):
    from custom.data.pancreas import synth_pancreas

    return synth_pancreas(tmp_path_factory.mktemp("dicom") / "raw", ids=["PANCREAS_0063", "PANCREAS_0064"],
                          shape=(16, 16, 4), seed=0)  # fmt: skip


def _series(case_dir):
    (folder,) = {p.parent for p in case_dir.rglob("*.dcm")}
    return folder


@pytest.mark.filterwarnings("ignore:builtin type (SwigPy|swigvarlink):DeprecationWarning")  # ITK's SWIG
@pytest.mark.filterwarnings("ignore:NvImgCodecPydicomReader")  # MONAI's DICOM reader without the GPU codec
def test_inference_inputs_dicom_series(dicom_release, tmp_path):
    """A DICOM series folder is one study: given itself, through its case folder (one series below) or through a
    folder of cases (one input per series); read by MONAI's ITKReader with the grid of the prepared NIfTI."""
    from monai.transforms import LoadImaged

    from custom.data.pancreas import read_dicom_series

    cases = dicom_release / "Pancreas-CT"
    series = [_series(cases / c) for c in ("PANCREAS_0063", "PANCREAS_0064")]
    assert inference_inputs(series[0]) == [{"image": str(series[0].resolve())}]
    assert inference_inputs(cases / "PANCREAS_0064") == [{"image": str(series[1].resolve())}]
    assert inference_inputs(cases) == [{"image": str(s.resolve())} for s in series]
    assert inference_inputs([str(series[1])]) == [{"image": str(series[1].resolve())}]
    for cid, folder in zip(("PANCREAS_0063", "PANCREAS_0064"), series):  # 0064 stores HU + 1024, intercept -1024
        image = LoadImaged(keys="image", image_only=True)({"image": str(folder)})["image"]
        hu, affine = read_dicom_series(cases / cid, cid)  # what dycon prepare writes
        np.testing.assert_array_equal(image.numpy(), hu)
        np.testing.assert_allclose(image.affine.numpy(), affine)
    # two series in one folder: ITK would read one of them silently
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for n, s in enumerate(series):
        for f in s.iterdir():
            (mixed / f"{n}-{f.name}").write_bytes(f.read_bytes())
    with pytest.raises(DatasetError, match="holds 2 DICOM series"):
        inference_inputs(mixed)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "1-001.dcm").write_bytes(next(series[0].iterdir()).read_bytes())
    with pytest.raises(DatasetError, match="1 slice"):
        inference_inputs(lonely)


def test_output_name_of_a_dicom_series(dicom_release, tmp_path):
    from monai.transforms import SaveImage

    from custom.data.loaders import output_name

    saver = SaveImage(output_dir=tmp_path, output_postfix="seg")
    series = _series(dicom_release / "Pancreas-CT" / "PANCREAS_0063")  # <case>/<study UID>/<series UID>
    assert output_name({"filename_or_obj": str(series)}, saver)["subject"] == "PANCREAS_0063.dicom"
    named = tmp_path / "Pancreas-99667"
    named.mkdir()
    assert output_name({"filename_or_obj": str(named)}, saver)["subject"] == "Pancreas-99667.dicom"
    assert output_name({"filename_or_obj": "/x/c0.nii.gz"}, saver)["subject"] == "/x/c0.nii.gz"  # files: MONAI's
