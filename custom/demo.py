"""``dycon demo``: the quickest way to see DyCON run end to end on a CPU.

It prepares a small dataset (the real Left-Atrium cases of ``../shared/data/LA_h5`` when present, otherwise a
synthetic set in the raw challenge layout), trains the LA bundle for a few minutes, evaluates it on the test
cases and writes masks with the inference config - all through ``python -m monai.bundle run`` from the bundle
folder (``bundles/dycon_la``), exactly as a user would. A slimmer U-Net (filters 8-128 instead of 16-256) and a
small patch keep it within minutes on 2 cores; the numbers it prints are a smoke test, not the paper's results.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BUNDLE", "bundle_command", "run_demo", "schedule_overrides", "shared_la_h5"]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = REPO_ROOT / "bundles" / "dycon_la"


def shared_la_h5() -> Path | None:
    """The real LA h5 subset (``$DYCON_LA_H5`` or ``<repo>/../shared/data/LA_h5``), if present."""
    candidates = [os.environ.get("DYCON_LA_H5"), REPO_ROOT.parent / "shared" / "data" / "LA_h5"]
    for c in candidates:
        if c and (Path(c) / "2018LA_Seg_Training Set").is_dir():
            return Path(c)
    return None


def real_subset(src: Path, dst: Path, n_train: int, n_test: int) -> Path:
    """A source folder with symlinks to the first ``n_train + n_test`` present cases and lists for them."""
    cases = src / "2018LA_Seg_Training Set"
    present = [i for i in (src / "train.list").read_text().split() if (cases / i / "mri_norm2.h5").is_file()]
    if len(present) < n_train + n_test:
        raise RuntimeError(f"{src} holds {len(present)} cases, the demo needs {n_train + n_test}")
    chosen = present[: n_train + n_test]
    folder = dst / "2018LA_Seg_Training Set"
    folder.mkdir(parents=True, exist_ok=True)
    for case in chosen:
        link = folder / case
        if not link.exists():
            link.symlink_to(cases / case, target_is_directory=True)
    (dst / "train.list").write_text("\n".join(chosen[:n_train]) + "\n")
    (dst / "test.list").write_text("\n".join(chosen[n_train:]) + "\n")
    return dst


def cli_value(value: object) -> str:
    """A config value as ``python -m monai.bundle run`` must receive it: fire reads ``True`` / ``False`` (Python
    literals) as booleans but ``true`` / ``false`` as STRINGS, so booleans are written as Python literals."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return repr(value)
    return json.dumps(value)


def schedule_overrides(iterations: int, val_interval: int) -> dict[str, int]:
    """The bundle ids for ``iterations`` training iterations with a validation every ``val_interval`` iterations.

    The bundles count training the model zoo's way: ``max_epochs`` epochs of ``epoch_length`` iterations, validated
    every ``val_interval`` EPOCHS. One epoch of ``val_interval`` iterations, validated after every epoch, gives
    ``ceil(iterations / val_interval)`` validations and ``val_interval * ceil(iterations / val_interval)``
    iterations (``iterations`` itself when it is a multiple of ``val_interval``), as the bundles counted before
    ``max_iterations`` became ``max_epochs x epoch_length``."""
    if int(iterations) < 1 or int(val_interval) < 1:
        raise ValueError(f"iterations and val_interval must be >= 1, got {iterations} and {val_interval}")
    epochs = -(-int(iterations) // int(val_interval))
    return {"max_epochs": epochs, "epoch_length": int(val_interval), "val_interval": 1}


def bundle_command(configs: list[str], overrides: dict[str, object]) -> list[str]:
    """``python -m monai.bundle run`` of the LA bundle's ``configs`` (merged in order) with ``overrides``, as its
    README writes it: relative config paths, so the command runs FROM THE BUNDLE FOLDER (``cwd=BUNDLE``, which puts
    the bundle's ``scripts`` package on ``sys.path``). Paths among ``overrides`` must be absolute."""
    files = [f"configs/{c}" for c in configs]
    config_file = files[0] if len(files) == 1 else json.dumps(files)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config_file]
    for key, value in overrides.items():
        cmd += [f"--{key}", cli_value(value)]
    return cmd


def bundle_default(key: str) -> object:
    """A plain value of the LA bundle's ``configs/train.yaml`` (``fecl_variant``)."""
    import yaml

    return yaml.safe_load((BUNDLE / "configs" / "train.yaml").read_text())[key]


def _bundle_run(configs: list[str], overrides: dict[str, object], log: Path) -> None:
    cmd = bundle_command(configs, overrides)
    print(f"$ (cd {shlex.quote(str(BUNDLE))} && {shlex.join(['python', *cmd[1:]])})", flush=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    with open(log, "a") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=BUNDLE)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if " - INFO - " in line and ("Epoch" in line or "Metrics" in line or "Key metric" in line):
                print("  " + line.rstrip().split(" - INFO - ")[-1], flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"bundle run failed (exit {proc.returncode}); see {log}")


def run_demo(
    workdir: str = "demo_output",
    source: str = "auto",
    iterations: int = 60,
    val_interval: int = 30,
    patch: tuple[int, int, int] = (64, 64, 48),
    features: tuple[int, ...] = (8, 16, 32, 64, 128),
    fecl_variant: str | None = None,
    amp: bool | str = "auto",
) -> Path:
    """Prepare data, train, evaluate and infer; returns the work directory.

    Args:
        workdir: where everything is written (data, model, metrics, masks, logs).
        source: ``"real"`` (the shared LA h5 cases), ``"synthetic"``, or ``"auto"`` (real when present).
        iterations, val_interval: training length and validation interval, both in ITERATIONS (the bundle runs
            ``ceil(iterations / val_interval)`` epochs of ``val_interval`` iterations, validating after each:
            :func:`schedule_overrides`).
        patch: training patch (multiples of 16).
        features: U-Net filters (the bundle default is 16-256; the demo uses a slimmer net for the CPU).
        fecl_variant: ``"official"`` or ``"paper"``; None (default): the bundle's own default (``paper``).
        amp: the bundle's ``amp``: ``"auto"`` (bf16 autocast on CPUs with AMX, the fastest setting
            that passed the quality check: benchmarks/README.md), ``false`` to force fp32, ``true``.
    """
    from .data.la import prepare_la, synth_la
    from .precision import resolve_amp

    t0 = time.time()
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "demo.log"
    real = shared_la_h5()
    if source not in ("auto", "real", "synthetic"):
        raise ValueError(f"source must be auto, real or synthetic, got {source!r}")
    if source == "real" and real is None:
        raise FileNotFoundError("no real LA data: set DYCON_LA_H5 or place the h5 release in ../shared/data/LA_h5")
    use_real = real is not None and source != "synthetic"

    print(f"[1/4] data ({'real LA h5 cases from ' + str(real) if use_real else 'synthetic raw LA layout'})", flush=True)
    data = work / "data"
    if use_real:
        src = real_subset(real, work / "source", n_train=8, n_test=2)  # type: ignore[arg-type]
        prepare_la(src, data, labeled=2, val=1)
    else:
        src = synth_la(work / "source", n_train=8, n_test=3, shape=(80, 80, 48), seed=0)
        prepare_la(src, data, labeled=2, val=1)

    common = {
        "dataset_dir": str(data),
        "output_dir": str(work / "eval"),
        "ckpt_dir": str(work / "models"),
        "patch_size": list(patch),
        "network_def#features": list(features),
        "num_workers": 0,
        "sw_overlap": 0.25,
    }
    import torch

    device = "cuda:0" if torch.cuda.is_available() else "cpu"  # the bundle's own choice of device
    precision = "bf16 autocast" if resolve_amp(amp, device) else "fp32"
    schedule = schedule_overrides(iterations, val_interval)
    variant = {} if fecl_variant is None else {"fecl_variant": fecl_variant}  # else the bundle's default
    print(
        f"[2/4] train: {schedule['max_epochs'] * schedule['epoch_length']} iterations ({schedule['max_epochs']} "
        f"epochs of {schedule['epoch_length']}, validated after each), 2 labeled + 2 unlabeled per batch, "
        f"FeCL {fecl_variant or bundle_default('fecl_variant')}, "
        f"{precision} on {device} (amp={amp}; --amp false forces fp32)",
        flush=True,
    )
    _bundle_run(
        ["train.yaml"],
        {**common, **schedule, "labeled_batch_size": 2, "unlabeled_batch_size": 2, **variant, "amp": amp},
        log,
    )
    print("[3/4] evaluate on the test cases", flush=True)
    _bundle_run(["train.yaml", "evaluate.yaml"], common, log)
    print("[4/4] inference on the test images", flush=True)
    test_images = [e["image"] for e in json.loads((data / "datalist.json").read_text())["test"]]
    _bundle_run(
        ["inference.yaml"],
        {
            "input_path": str(data / "datalist.json"),
            "output_dir": str(work / "masks"),
            "ckpt_path": str(work / "models" / "model.pt"),
            "patch_size": list(patch),
            "network_def#features": list(features),
            "num_workers": 0,
            "sw_overlap": 0.25,
        },
        log,
    )

    summary = json.loads((work / "eval" / "metrics_summary.json").read_text())
    print(f"\nDone in {time.time() - t0:.0f} s. Test-set metrics ({len(test_images)} cases):")
    for name in ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel"):
        stats = summary.get("metrics", summary).get(name, {})
        if isinstance(stats, dict) and stats.get("mean") is not None:
            print(f"  {name:<11} {stats['mean']:.4f} +- {stats['std']:.4f}")
    print(f"\n  model         {work / 'models' / 'model.pt'}")
    print(f"  metrics       {work / 'eval' / 'metrics_per_case.csv'}, metrics_summary.json")
    print(f"  masks         {work / 'masks'}")
    print(
        f"  pictures      {work / 'eval' / 'pictures'} (validation overlays, per-case test panels), "
        f"{work / 'eval' / 'training_curve.png'}"
    )
    print(f"  tensorboard   tensorboard --logdir {work / 'eval'}")
    print(f"  full log      {log}")
    return work
