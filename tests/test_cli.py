"""The dycon CLI: sub-commands exist, user errors are one line with exit status 2."""

import os
import subprocess
import sys

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
