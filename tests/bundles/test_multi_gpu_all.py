"""multi_gpu_train.yaml of the BraTS 2019, Pancreas and ISLES 2022 bundles under torchrun (2 CPU processes, gloo).

The LA bundle's DDP behaviour is checked in depth in test_multi_gpu_la.py (disjoint shards, identical networks, rank-0
outputs). Here every other bundle's own configs run the same way on its own synthetic raw release, prepared with
``dycon prepare``, from the bundle folder: 2 iterations (one epoch) on 2 ranks with ``--draw_log``, then the
asserts that matter per bundle: both ranks drew disjoint labeled and unlabeled cases, student and teacher are
identical on both ranks, only rank 0 wrote model.pt / checkpoints, and model.pt runs in the bundle's single-GPU
inference.yaml (mask in the input's geometry).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bundle_utils import NET_ARGS, SMALL_NET, Bundle, case_name, check_prediction, free_port, run
from custom.networks import UNet3D

WORLD = 2


def _raw(bundle: str, root: Path) -> Path:
    """A synthetic raw release of ``bundle`` (8 cases: 6 training, 1 validation where the dataset has one, 1 test)."""
    if bundle == "brats19":
        from custom.data.brats19 import official_splits, synth_brats19

        lists, _ = official_splits()
        ids = lists["training"][:6] + lists["validation"][:1] + lists["test"][:1]
        return synth_brats19(root / "raw", ids=ids, shape=(48, 48, 32), seed=0)
    if bundle == "pancreas":
        from custom.data.pancreas import synth_pancreas

        return synth_pancreas(root / "raw", n_train=6, n_test=1, shape=(48, 48, 16), seed=0)
    from custom.data.isles22 import synth_isles22

    return synth_isles22(root / "raw", layout="nested", n_train=6, n_val=1, n_test=1, seed=11)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("bundle", ["brats19", "pancreas", "isles22"])
def test_multi_gpu_train(bundle: str, tmp_path: Path):
    b = Bundle(f"dycon_{bundle}")
    data = tmp_path / "prep"
    run("-m", "custom", "prepare", bundle, "--src", _raw(bundle, tmp_path), "--dst", data, "--labeled", "2")
    patch = "[32,32,16]" if bundle in ("pancreas", "isles22") else "[32,32,32]"
    out = tmp_path / "out"
    configs = f"['{b.train_yaml}','{b.multi_gpu_yaml}']"
    b.run(
        "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", "-m", "monai.bundle", "run", "--bundle_root", ".",
        "--config_file", configs, "--dataset_dir", data, "--output_dir", out / "eval", "--ckpt_dir", out / "models",
        "--max_epochs", "1", "--epoch_length", "2", "--val_interval", "1", "--patch_size", patch,
        "--labeled_batch_size", "1", "--unlabeled_batch_size", "1", "--num_workers", "0", "--dist_backend", "gloo",
        "--draw_log", tmp_path / "draws", *NET_ARGS,
        log=tmp_path / "train.log",
    )  # fmt: skip
    draws = [json.loads((tmp_path / "draws" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    datalist = json.loads((data / "datalist.json").read_text())
    for kind, split in (("labeled", "training"), ("unlabeled", "unlabeled")):
        per_pass = len(datalist[split]) // WORLD  # iterations per pass of a rank's shard (batch size 1)
        assert per_pass >= 1
        for start in range(0, 2, per_pass):  # within every pass the two ranks drew disjoint cases
            drawn = [{c for it in d["iterations"][start : start + per_pass] for c in it[kind]} for d in draws]
            assert all(drawn) and not drawn[0] & drawn[1], (kind, start, drawn)
    assert draws[0]["sha256"] == draws[1]["sha256"] and set(draws[0]["sha256"]) == {"student", "teacher"}
    model = out / "models" / "model.pt"
    UNet3D(**SMALL_NET).load_state_dict(torch.load(model, weights_only=True), strict=True)
    assert sorted(p.name for p in (out / "models").iterdir()) == ["model.pt"]
    assert len(list((out / "eval" / "checkpoints").glob("*.pt"))) == 1
    image = data / datalist["test"][0]["image"]
    pred = tmp_path / "pred"
    b.run(
        "-m", "monai.bundle", "run", "--bundle_root", ".", "--config_file", b.inference_yaml,
        "--input_path", image, "--output_dir", pred, "--ckpt_path", model, "--patch_size", patch,
        "--num_workers", "0", *NET_ARGS,
        log=tmp_path / "infer.log",
    )  # fmt: skip
    assert (pred / f"{case_name(image)}_seg.nii.gz").is_file()
    check_prediction(image, pred, probabilities=False)
