"""The dycon CLI: sub-commands exist, user errors are one line with exit status 2."""

import os
import subprocess
import sys
from pathlib import Path

ENV = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true")


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "custom", *args], capture_output=True, text=True, env=ENV, cwd=cwd)


def test_help_lists_commands():
    proc = _run("--help")
    out = proc.stdout + proc.stderr
    for command in ("prepare", "synth", "demo"):
        assert command in out


def test_missing_source_is_one_clear_line(tmp_path):
    proc = _run("prepare", "la", "--src", str(tmp_path / "nope"), "--dst", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.startswith("dycon: error:") and "nope" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_demo_schedule_in_the_bundle_ids():
    """The demo's --iterations / --val_interval (iterations) become the bundle's max_epochs x epoch_length, validated
    after every epoch: the same iterations and validations as before."""
    import pytest

    from custom.demo import schedule_overrides

    assert schedule_overrides(60, 30) == {"max_epochs": 2, "epoch_length": 30, "val_interval": 1}
    assert schedule_overrides(3, 2) == {"max_epochs": 2, "epoch_length": 2, "val_interval": 1}  # ceil, as before
    assert schedule_overrides(5, 10) == {"max_epochs": 1, "epoch_length": 10, "val_interval": 1}
    with pytest.raises(ValueError):
        schedule_overrides(0, 1)


def test_demo_bundle_command_runs_from_the_bundle_folder(tmp_path, monkeypatch):
    from custom import demo

    cmd = demo.bundle_command(["train.yaml", "evaluate.yaml"], {"max_epochs": 2, "amp": False, "patch_size": [32] * 3})
    assert cmd[:5] == [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
    assert cmd[5] == '["configs/train.yaml", "configs/evaluate.yaml"]' and "--bundle_root" not in cmd
    assert cmd[6:] == ["--max_epochs", "2", "--amp", "False", "--patch_size", "[32, 32, 32]"]
    assert all((demo.BUNDLE / c).is_file() for c in ("configs/train.yaml", "configs/evaluate.yaml"))
    # _bundle_run starts the command in the bundle folder (where `scripts` imports)
    probe = [sys.executable, "-c", "import os, scripts; print(' - INFO - Epoch cwd=' + os.getcwd())"]
    monkeypatch.setattr(demo, "bundle_command", lambda configs, overrides: probe)
    demo._bundle_run(["train.yaml"], {}, tmp_path / "log")
    assert f"Epoch cwd={demo.BUNDLE}" in (tmp_path / "log").read_text()


def test_demo_trains_with_the_bundle_ids_and_fecl_default(tmp_path, monkeypatch):
    """The demo's training run: the zoo ids, no max_iterations, and the bundle's own FeCL variant unless one is
    given."""
    import pytest

    from custom import demo

    class Stop(Exception):
        pass

    calls = []

    def fake_run(configs, overrides, log):
        calls.append((configs, overrides))
        raise Stop  # the training command is all this test needs

    monkeypatch.setattr(demo, "_bundle_run", fake_run)
    for variant in (None, "official"):
        with pytest.raises(Stop):
            demo.run_demo(workdir=str(tmp_path / str(variant)), source="synthetic", iterations=60, val_interval=30,
                          fecl_variant=variant, amp=False)  # fmt: skip
    (configs, default), (_, official) = calls
    assert configs == ["train.yaml"]
    for ov in (default, official):
        assert {k: ov[k] for k in ("max_epochs", "epoch_length", "val_interval")} == {
            "max_epochs": 2, "epoch_length": 30, "val_interval": 1}
        assert "max_iterations" not in ov and Path(ov["dataset_dir"]).is_absolute()
    assert "fecl_variant" not in default and official["fecl_variant"] == "official"
