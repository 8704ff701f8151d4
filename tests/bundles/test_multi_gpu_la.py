"""multi_gpu_train.yaml of the LA bundle under torchrun: 2 CPU processes with the gloo backend."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from custom.data.la import prepare_la, synth_la
from custom.networks import UNet3D

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "dycon_la"
SMALL = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(600)
def test_torchrun_two_processes_gloo(tmp_path):
    raw = synth_la(tmp_path / "raw", n_train=5, n_test=1, shape=(48, 48, 32), seed=3)
    data = prepare_la(raw, tmp_path / "prep", labeled=2, val=1).parent
    out = tmp_path / "out"
    configs = f"['{BUNDLE / 'configs' / 'train.yaml'}','{BUNDLE / 'configs' / 'multi_gpu_train.yaml'}']"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}", "-m", "monai.bundle", "run", "--bundle_root", str(BUNDLE),
        "--config_file", configs, "--dataset_dir", str(data), "--output_dir", str(out / "eval"),
        "--ckpt_dir", str(out / "models"), "--max_iterations", "4", "--val_interval", "2",
        "--patch_size", "[32,32,32]", "--labeled_batch_size", "1", "--unlabeled_batch_size", "1",
        "--num_workers", "0", "--dist_backend", "gloo",
        "--network_def#features", str(SMALL["features"]).replace(" ", ""),
        "--network_def#embed_dim", "16", "--network_def#proj_hidden", "32",
    ]
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=570)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    # one model, written once, loads into the single-GPU network definition (no DDP / wrapper prefixes)
    model = UNet3D(**SMALL)
    model.load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True), strict=True)
    checkpoints = sorted((out / "eval" / "checkpoints").glob("*.pt"))
    assert [p.name for p in checkpoints] == ["checkpoint_epoch=2.pt"]
    state = torch.load(checkpoints[0], weights_only=True)
    assert state["trainer"]["iteration"] == 4
    assert set(state) >= {"network", "teacher", "optimizer", "trainer"}
    assert not any(k.startswith(("module.", "net.")) for k in state["network"])
