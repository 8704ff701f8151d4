"""Helpers shared by the benchmark scripts (statistics, peak memory, bundle defaults, child processes)."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("la", "brats19", "pancreas", "isles22")


def stats(samples: list[float]) -> dict[str, Any]:
    """median / min / max (seconds) of the timed samples, plus the samples themselves."""
    if not samples:
        raise ValueError("no timed samples (repeats must be >= 1)")
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
        "samples_s": samples,
    }


def peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def current_rss_mib() -> float | None:
    """Current resident set size in MiB (Linux /proc only; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024.0 * 1024.0)
    except (OSError, ValueError, IndexError):
        return None


def bundle_defaults(bundle: str) -> dict[str, Any]:
    """Plain (non-expression) settings of ``bundles/dycon_<bundle>/configs/train.yaml``."""
    import yaml

    path = REPO / "bundles" / f"dycon_{bundle}" / "configs" / "train.yaml"
    with open(path) as f:
        cfg = yaml.safe_load(f)
    net = cfg.get("network_def", {}) or {}
    out = {
        "config": str(path.relative_to(REPO)),
        "patch_size": [int(v) for v in cfg["patch_size"]],
        "labeled_batch_size": int(cfg["labeled_batch_size"]),
        "unlabeled_batch_size": int(cfg["unlabeled_batch_size"]),
        "fecl_variant": str(cfg.get("fecl_variant", "official")),
        "eta": float(cfg.get("eta", 0.5)),
        "beta_max": float(cfg.get("beta_max", 5.0)),
        "beta_min": float(cfg.get("beta_min", 0.5)),
        "learning_rate": float(cfg.get("learning_rate", 0.01)),
        "sw_overlap": float(cfg.get("sw_overlap", 0.5)),
        "amp_dtype": str(cfg.get("amp_dtype", "float16")),
        # the training length in iterations (the beta schedule's length): max_epochs epochs of epoch_length
        "max_iterations": int(cfg["max_epochs"]) * int(cfg["epoch_length"]),
    }
    feats = net.get("features")
    out["features"] = [int(v) for v in feats] if isinstance(feats, (list, tuple)) else None
    return out


def bundle_dir(bundle: str) -> Path:
    """``bundles/dycon_<bundle>``, the folder a bundle runs from."""
    return REPO / "bundles" / f"dycon_{bundle}"


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "os_cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def run_child(script: Path, args: list[str]) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter (so ``ru_maxrss`` is that run's own peak) and parse
    the JSON object it prints last on stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(script), *args], cwd=str(REPO), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {args} failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"benchmark child {args} printed no JSON:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])
