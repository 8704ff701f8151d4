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
