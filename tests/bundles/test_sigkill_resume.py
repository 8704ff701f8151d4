"""A LA bundle training killed with SIGKILL mid-run resumes (``--resume true``) from its last checkpoint (student,
teacher, optimizer, schedules, trainer iteration) and ends at the same iteration, with the same student weights, as
an uninterrupted run.

``test_checkpoint_never_truncated`` kills the run the moment a checkpoint file APPEARS: with an atomic write
(temporary file + rename, scripts.handlers.TrainingCheckpointSaver) it is complete. MONAI's own CheckpointSaver
builds Ignite's DiskSaver with ``atomic=False``, which left truncated files here before that fix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bundle_utils import ENV, NET_ARGS, PATCH, Bundle, run

from custom.data.la import synth_la

LA = Bundle("dycon_la")
EPOCHS, EPOCH_LENGTH = 3, 2  # 3 epochs of 2 iterations; one checkpoint per epoch
MAX_ITERS = EPOCHS * EPOCH_LENGTH


def _cmd(dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "monai.bundle", "run",
        "--bundle_root", ".",
        "--config_file", LA.train_yaml,
        "--dataset_dir", str(dataset),
        "--output_dir", str(out / "eval"),
        "--ckpt_dir", str(out / "models"),
        "--max_epochs", str(EPOCHS),
        "--epoch_length", str(EPOCH_LENGTH),
        "--val_interval", "1",
        "--patch_size", PATCH,
        "--labeled_batch_size", "1",
        "--unlabeled_batch_size", "1",
        "--num_workers", "0",
        "--seed", "1337",
        "--amp", "false",  # bf16 autocast on a CPU (AVX512-BF16 / AMX) is not reproducible run to run
        *NET_ARGS, *extra,
    ]  # fmt: skip


def _popen(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=LA.root, env=ENV, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _check_folder(ckpts: Path) -> dict[str, dict]:
    """Every file of the checkpoint folder is a complete ``*.pt`` loadable with weights_only=True."""
    files = sorted(ckpts.iterdir())
    assert files, f"no checkpoint in {ckpts}"
    leftovers = [p.name for p in files if p.suffix != ".pt" or p.name.startswith("tmp")]
    assert not leftovers, f"temporary / partial files left in {ckpts}: {leftovers}"
    return {p.name: torch.load(p, map_location="cpu", weights_only=True) for p in files}


def _loadable(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("la_sigkill")
    raw = synth_la(root / "raw", n_train=3, n_test=1, shape=(48, 48, 32), seed=0)
    run("-m", "custom", "prepare", "la", "--src", raw, "--dst", root / "prep", "--labeled", "2")
    return root / "prep"


def test_checkpoint_never_truncated(prep: Path, tmp_path: Path):
    victim = _popen(_cmd(prep, tmp_path / "out"), tmp_path / "run.log")
    ckpts = tmp_path / "out" / "eval" / "checkpoints"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and victim.poll() is None:
            if ckpts.is_dir() and any(p.name.startswith("checkpoint_epoch=") for p in ckpts.iterdir()):
                os.kill(victim.pid, signal.SIGKILL)
                break
            time.sleep(0.002)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert victim.returncode == -signal.SIGKILL, "the run ended before a checkpoint could be seen"
    broken = [p.name for p in ckpts.iterdir() if not _loadable(p)]
    assert not broken, f"truncated / unloadable checkpoint(s) after SIGKILL: {broken}"


def test_sigkill_then_resume_matches_uninterrupted(prep: Path, tmp_path: Path):
    """Killed right after the first complete checkpoint (loadable), resumed, compared with a straight run."""

    straight_out, killed_out = tmp_path / "straight", tmp_path / "killed"
    straight = _popen(_cmd(prep, straight_out), tmp_path / "straight.log")  # in parallel with the killed run
    victim = _popen(_cmd(prep, killed_out), tmp_path / "killed.log")
    ckpts = killed_out / "eval" / "checkpoints"
    killed_at = None
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and victim.poll() is None:
            found = sorted(p.name for p in ckpts.glob("checkpoint_epoch=*.pt")) if ckpts.is_dir() else []
            if found and _loadable(ckpts / found[-1]):
                os.kill(victim.pid, signal.SIGKILL)
                killed_at = found[-1]
                break
            time.sleep(0.005)
        victim.wait(timeout=60)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    log = (tmp_path / "killed.log").read_text()
    assert killed_at is not None, (
        f"the run ended (status {victim.returncode}) before its first checkpoint could be seen and killed; "
        f"raise EPOCHS\n{log[-3000:]}"
    )
    assert victim.returncode == -signal.SIGKILL
    assert "Engine run finished" not in log, "the run finished before the kill: raise EPOCHS"
    before = _check_folder(ckpts)
    iteration_at_kill = before[max(before, key=lambda n: before[n]["trainer"]["iteration"])]["trainer"]["iteration"]
    assert iteration_at_kill < MAX_ITERS, f"killed after the last checkpoint ({killed_at}): raise EPOCHS"

    resumed_log = LA.run(*_cmd(prep, killed_out, "--resume", "true")[1:], log=tmp_path / "resumed.log")
    assert "Restored all variables from" in resumed_log
    assert straight.wait(timeout=300) == 0, (tmp_path / "straight.log").read_text()[-3000:]

    after = _check_folder(ckpts)
    final_name = f"checkpoint_epoch={EPOCHS}.pt"
    assert final_name in after, sorted(after)
    final = after[final_name]
    assert final["trainer"]["iteration"] == MAX_ITERS
    ref_all = _check_folder(straight_out / "eval" / "checkpoints")
    ref = ref_all[final_name]
    assert ref["trainer"]["iteration"] == MAX_ITERS
    for key in ("network", "teacher"):
        assert final[key].keys() == ref[key].keys()
        for name, value in ref[key].items():
            assert torch.equal(final[key][name], value), f"{key}.{name} differs from the uninterrupted run"
    for p in (killed_out / "models").glob("*.pt"):
        torch.load(p, map_location="cpu", weights_only=True)
