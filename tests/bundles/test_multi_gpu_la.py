"""multi_gpu_train.yaml of the LA bundle under torchrun: 2 CPU processes with the gloo backend.

One run from the bundle folder (2 epochs of 2 iterations, a validation after each) with ``--draw_log``: each rank
writes the cases it drew per iteration and sha256 fingerprints of its student and teacher at the end
(scripts.handlers.DrawLog). Asserted: disjoint labeled / unlabeled shards per pass, identical networks on both
ranks, outputs (checkpoints, model.pt, TensorBoard, console statistics, Ignite's engine log) from rank 0 only, and
model.pt works in the single-GPU inference.yaml.
"""

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from bundle_utils import case_name, check_prediction, free_port
from custom.data.la import prepare_la, synth_la
from custom.networks import UNet3D

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_la"
SMALL = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
NET_ARGS = ["--network_def#features", "[4,8,16,32,64]", "--network_def#embed_dim", "16", "--network_def#proj_hidden", "32"]
ENV = {
    **os.environ,
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
}
EPOCHS, EPOCH_LENGTH, WORLD = 2, 2, 2
ITERS = EPOCHS * EPOCH_LENGTH


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"exit status {proc.returncode}: {' '.join(cmd)}\n{out[-6000:]}"
    return out


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """One torchrun of train.yaml + multi_gpu_train.yaml: 2 labeled, 4 unlabeled and 1 validation case."""
    tmp = tmp_path_factory.mktemp("ddp")
    raw = synth_la(tmp / "raw", n_train=7, n_test=1, shape=(48, 48, 32), seed=3)
    datalist = prepare_la(raw, tmp / "prep", labeled=2, val=1)
    data = datalist.parent if datalist.is_file() else datalist
    out = tmp / "out"
    configs = "['configs/train.yaml','configs/multi_gpu_train.yaml']"
    log = _run(
        [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "monai.bundle", "run", "--bundle_root", ".",
            "--config_file", configs, "--dataset_dir", str(data), "--output_dir", str(out / "eval"),
            "--ckpt_dir", str(out / "models"), "--max_epochs", str(EPOCHS), "--epoch_length", str(EPOCH_LENGTH),
            "--val_interval", "1",
            "--patch_size", "[32,32,32]", "--labeled_batch_size", "1", "--unlabeled_batch_size", "1",
            "--num_workers", "0", "--dist_backend", "gloo", "--draw_log", str(tmp / "draws"), *NET_ARGS,
        ],  # fmt: skip
        cwd=BUNDLE,
    )
    draws = [json.loads((tmp / "draws" / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return {"tmp": tmp, "data": data, "out": out, "log": log, "draws": draws}


def _split(data: Path, key: str) -> set[str]:
    return {str((data / e["image"]).resolve()) for e in json.loads((data / "datalist.json").read_text())[key]}


def test_ranks_draw_disjoint_shards(ddp_run):
    draws = ddp_run["draws"]
    assert [(d["rank"], d["world_size"]) for d in draws] == [(0, WORLD), (1, WORLD)]
    for d in draws:
        assert [it["iteration"] for it in d["iterations"]] == list(range(1, ITERS + 1))
        assert all(len(it["labeled"]) == 1 and len(it["unlabeled"]) == 1 for it in d["iterations"])
    labeled, unlabeled = _split(ddp_run["data"], "training"), _split(ddp_run["data"], "unlabeled")
    assert (len(labeled), len(unlabeled)) == (2, 4)

    def drawn(rank: int, key: str, first: int, n: int) -> list[str]:
        its = draws[rank]["iterations"][first : first + n]
        return [str(Path(f).resolve()) for it in its for f in it[key]]

    # a pass over a list gives each rank len // WORLD cases: labeled 1 per pass (1 iteration), unlabeled 2 (2 its)
    for key, cases, per_rank in (("labeled", labeled, 1), ("unlabeled", unlabeled, 2)):
        for first in range(0, ITERS, per_rank):
            r0, r1 = drawn(0, key, first, per_rank), drawn(1, key, first, per_rank)
            assert len(set(r0)) == len(r0) == per_rank and len(set(r1)) == per_rank, (key, first, r0, r1)
            assert not set(r0) & set(r1), f"{key} pass at iteration {first + 1}: ranks overlap {r0} {r1}"
            assert set(r0) | set(r1) == cases, (key, first)


def test_networks_identical_across_ranks(ddp_run):
    hashes = [d["sha256"] for d in ddp_run["draws"]]
    assert set(hashes[0]) == {"teacher", "student"}
    assert hashes[0] == hashes[1], hashes
    assert hashes[0]["teacher"] != hashes[0]["student"]


def test_only_rank0_writes_and_logs(ddp_run):
    out, log = ddp_run["out"], ddp_run["log"]
    checkpoints = sorted((out / "eval" / "checkpoints").glob("*"))
    assert [p.name for p in checkpoints] == ["checkpoint_epoch=2.pt"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.pt")) == [
        "eval/checkpoints/checkpoint_epoch=2.pt", "models/model.pt"
    ]
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["trainer"]["iteration"] == ITERS
    assert set(state) >= {"network", "teacher", "optimizer", "trainer"}
    assert not any(k.startswith(("module.", "net.")) for k in state["network"])
    # TensorBoard event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: all from one process
    events = list(out.rglob("events.out.tfevents.*"))
    assert events
    assert len({p.name.split(".")[-2] for p in events}) == 1, [p.name for p in events]
    # StatsHandler: one line per iteration; Ignite's engine log: one line per epoch / run (not one per rank)
    stats = Counter(re.findall(r"Epoch: (\d+)/2, Iter: (\d+)/2 --", log))
    assert stats == Counter({(e, i): 1 for e in ("1", "2") for i in ("1", "2")}), stats
    for epoch in (1, 2):
        assert len(re.findall(rf"MeanTeacherTrainer - INFO - Epoch\[{epoch}\] Complete", log)) == 1
        assert len(re.findall(rf"SupervisedEvaluator - INFO - Epoch\[{epoch}\] Complete", log)) == 1
    assert log.count("MeanTeacherTrainer - INFO - Engine run finished") == 1


def test_model_loads_into_single_gpu_inference(ddp_run):
    model_pt = ddp_run["out"] / "models" / "model.pt"
    UNet3D(**SMALL).load_state_dict(torch.load(model_pt, weights_only=True), strict=True)
    image = sorted(_split(ddp_run["data"], "validation"))[0]
    pred_dir = ddp_run["tmp"] / "pred"
    _run(
        [
            sys.executable, "-m", "monai.bundle", "run", "--bundle_root", ".",
            "--config_file", "configs/inference.yaml", "--input_path", image,
            "--output_dir", str(pred_dir), "--ckpt_path", str(model_pt), "--patch_size", "[32,32,32]",
            "--num_workers", "0", *NET_ARGS,
        ],  # fmt: skip
        cwd=BUNDLE,
    )
    assert (pred_dir / f"{case_name(image)}_seg.nii.gz").is_file()
    check_prediction(Path(image), pred_dir, probabilities=False)
