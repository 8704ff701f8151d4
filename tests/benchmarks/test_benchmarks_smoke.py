"""Smoke tests of the benchmark scripts: they run end to end (as a user would) with tiny settings and print JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--threads", "1", *args],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _positive_stats(d: dict, repeats: int) -> None:
    for key in ("median_s", "min_s", "max_s", "peak_rss_mib"):
        assert d[key] > 0, (key, d)
    assert d["min_s"] <= d["median_s"] <= d["max_s"]
    assert d["n"] == repeats == len(d["samples_s"])


def test_bundle_defaults_training_length():
    """The training length the benchmarks use (train_step's beta schedule) is the bundle's max_epochs x epoch_length."""
    import yaml

    from benchmarks._common import BUNDLES, bundle_defaults

    for bundle in BUNDLES:
        cfg = yaml.safe_load((REPO / "bundles" / f"dycon_{bundle}" / "configs" / "train.yaml").read_text())
        assert "max_iterations" not in cfg
        assert bundle_defaults(bundle)["max_iterations"] == cfg["max_epochs"] * cfg["epoch_length"] == 20000


@pytest.mark.timeout(120)
def test_train_step_smoke():
    out = _run("train_step.py", "--bundle", "la", "--patch", "32", "32", "32", "--labeled", "1", "--unlabeled", "1",
               "--features", "4", "8", "16", "32", "--repeats", "2", "--warmup", "1")
    assert out["benchmark"] == "train_step"
    s = out["settings"]
    assert s["patch"] == [32, 32, 32] and s["labeled"] == 1 and s["unlabeled"] == 1 and s["features"] == [4, 8, 16, 32]
    assert set(out["arms"]) == {"dycon", "mean_teacher", "supervised"}
    for arm, d in out["arms"].items():
        _positive_stats(d, 2)
        assert len(d["warmup_s"]) == 1
        assert d["skipped_steps"] == 0
    # the arms really differ in objective
    assert out["arms"]["dycon"]["last_loss"]["uncl"] != 0 and out["arms"]["dycon"]["last_loss"]["fecl"] != 0
    assert out["arms"]["mean_teacher"]["last_loss"]["uncl"] == 0 and out["arms"]["mean_teacher"]["last_loss"]["mse"] > 0
    assert out["arms"]["supervised"]["last_loss"]["loss"] == out["arms"]["supervised"]["last_loss"]["supervised"]
    for key in ("dycon_over_mean_teacher", "dycon_over_supervised"):
        assert out["ratios_of_medians"][key] > 0
    assert out["machine"]["torch"]


@pytest.mark.timeout(120)
def test_train_step_profile_and_cpu_settings_smoke():
    """--profile splits the iteration into the trainer's phases; the CPU settings of the speed table run."""
    out = _run("train_step.py", "--bundle", "la", "--patch", "32", "32", "16", "--labeled", "1", "--unlabeled", "1",
               "--features", "4", "8", "16", "--repeats", "2", "--warmup", "1", "--arms", "dycon", "--profile",
               "--allocator", "retain", "--amp", "bf16", "--channels-last")
    s, d = out["settings"], out["arms"]["dycon"]
    assert s["allocator"] == "retain" and s["channels_last"] and s["amp"] == "bf16" and s["profile"]
    _positive_stats(d, 2)
    phases = d["profile"]["phases"]
    expected = {"student_forward", "teacher_forward", "losses", "backward", "optimizer_step", "teacher_ema", "other"}
    assert set(phases) == expected
    assert all(p["s_per_iteration"] >= 0 and 0 <= p["fraction"] <= 1.0 for p in phases.values())
    # the network phases hold most of the time, and their top operators are real aten operators
    assert phases["student_forward"]["s_per_iteration"] > 0 and phases["backward"]["s_per_iteration"] > 0
    assert any(op.startswith("aten::") for op in phases["backward"]["top_ops_s_per_iteration"])
    assert sum(p["fraction"] for p in phases.values()) == pytest.approx(1.0, abs=0.05)
    assert d["cpu_user_s_per_iteration"] > 0 and d["cpu_system_s_per_iteration"] >= 0


@pytest.mark.timeout(120)
def test_inference_smoke():
    out = _run("inference.py", "--volume", "64", "64", "48", "--paper-roi", "32", "--paper-stride-xy", "16",
               "--paper-stride-z", "8", "--bundle-roi", "32", "32", "32", "--features", "4", "8", "16", "32",
               "--repeats", "2")
    assert out["benchmark"] == "inference"
    assert out["settings"]["volume"] == [64, 64, 48]
    res = out["results"]
    assert set(res) == {"paper", "bundle", "paper_roi_half"}
    for d in res.values():
        _positive_stats(d, 2)
        assert d["windows"] > 0
    assert res["paper"]["stride"] == [16, 16, 8]  # the exact stride, not MONAI's floating-point rounding of it
    assert res["bundle"]["overlap"] == [0.5, 0.5, 0.5]
    # 64x64x48 with roi 32: stride 16/16/8 -> 3*3*3 windows; overlap 0.5 -> 3*3*2
    assert res["paper"]["windows"] == 27 and res["bundle"]["windows"] == 18
    for agree in out["agreement"].values():
        assert 0.0 <= agree["dice_foreground"] <= 1.0
        assert 0.0 <= agree["voxel_agreement"] <= 1.0
    assert set(out["agreement"]) == {"bundle_vs_paper", "paper_roi_half_vs_paper"}


@pytest.mark.timeout(120)
def test_train_step_released_loop_same_loss():
    """The released-loop arm computes the same objective as ours (B-fold UnCL has the same value) and only adds time."""
    out = _run("train_step.py", "--bundle", "la", "--patch", "32", "32", "32", "--labeled", "1", "--unlabeled", "1",
               "--features", "4", "8", "16", "32", "--repeats", "1", "--warmup", "1",
               "--arms", "dycon", "released_loop", "--teacher-mode", "no_grad")
    assert out["settings"]["teacher_mode"] == "no_grad"
    ours, released = out["arms"]["dycon"]["last_loss"], out["arms"]["released_loop"]["last_loss"]
    for key in ("loss", "uncl", "fecl", "supervised"):
        assert released[key] == pytest.approx(ours[key], rel=1e-5), key
    assert out["ratios_of_medians"]["released_loop_over_dycon"] > 0


@pytest.mark.timeout(120)
def test_loader_smoke():
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "loader.py"), "--num-workers", "0", "--batches", "2",
         "--warmup", "1", "--cases", "4", "--volume", "48", "48", "32", "--patch", "32", "32", "16", "--batch", "2", "1"],
        cwd=str(REPO), env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])
    (r,) = out["results"]
    assert r["labeled_cases"] == 2 and r["unlabeled_cases"] == 2
    assert r["labeled"]["batch_shape"] == [2, 1, 32, 32, 16] and r["unlabeled"]["batch_shape"] == [1, 1, 32, 32, 16]
    for key in ("labeled", "unlabeled"):
        _positive_stats({**r[key], "peak_rss_mib": 1}, 2)
