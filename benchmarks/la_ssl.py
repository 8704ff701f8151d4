"""Semi-supervised evidence on real Left-Atrium data, at a scale a 2-core CPU finishes (issue #9).

A reduced LA protocol on the h5 release (default: the real cases in ``../shared/data/LA_h5``; any LA h5 folder,
e.g. the full 80 / 20 release, with ``--h5``):

* cases: the first ``labeled + unlabeled + test`` present cases of train.list (default 4 + 12 + 8 of the 24 shared
  ones): the first ``labeled`` are labeled, the next ``unlabeled`` unlabeled, the last ``test`` are held out;
  prepared with ``dycon prepare la`` exactly as users do (UA-MT crop, whole-volume z-score);
* volumes downsampled by ``--downsample`` (default 2: block mean for the image, block majority for the label,
  affine scaled so the geometry stays exact), patch 48x48x32 (the bundle's 112x112x80 halved, rounded down to a
  multiple of 16), batch 2 labeled + 2 unlabeled, UNet3D filters 8-128;
* every arm: the SAME seed, iterations and network, trained by the LA bundle's ``configs/train.yaml`` and
  evaluated by ``configs/evaluate.yaml`` on the held-out cases through ``python -m monai.bundle run``, the arm
  being nothing but command-line overrides (printed in the log and stored in the JSON). No validation list: the
  final model is evaluated, nothing is selected or tuned on the test cases.

Arms (``--arms``; ``--ablations`` adds the ablation arms):

==================  ======================================================================================
supervised          labeled cases only (a datalist whose unlabeled list is empty: no teacher, no UnCL / FeCL)
mean_teacher        plain mean teacher: ``loss#uncl_weight 0 loss#fecl_weight 0 loss#mse_weight 1``
dycon_official      DyCON, FeCL ``official`` (the released code's mathematics)
dycon_paper         DyCON, FeCL ``paper`` (the paper's equations)
uncl_off            dycon_paper without UnCL (``loss#uncl_weight 0``)
beta_const_0.5/0.8  dycon_paper with a constant beta (``beta_max = beta_min``)
focal_off           dycon_paper, FeCL focal weights off (``loss#fecl#gamma 0``)
hard_negatives_off  dycon_paper without the teacher hard negatives (``loss#fecl#use_hard_negatives false``)
entropy_off         dycon_paper without the entropy factor (``loss#fecl#use_entropy false``)
supcon              FeCL replaced by plain supervised contrastive: gamma 0, no entropy, no teacher negatives
==================  ======================================================================================

Diagnostic arms (``--diagnostics``), dycon_paper with: ``eta_rampup`` = 40 % of the iterations
(``dycon_paper_eta_ramp``), teacher confidence threshold 0.9 instead of 0.75 (``dycon_paper_threshold_0.9``),
eta 0.1 instead of 0.5 (``dycon_paper_eta_0.1``).

Outputs in ``--workdir`` (default ``runs/la_ssl``): ``results.json``, ``results.md`` (Dice, IoU, HD95, ASD in mm and
paper-compatible voxels, mean +- std over the test cases) and ``results.png`` (bar chart), one folder per arm
(model, TensorBoard, per-case CSV, pictures, logs). Finished arms are reused on a rerun with the same settings
(``--force`` retrains).

Example (the default protocol, 1500 iterations: not run here; the 600-iteration arms took ~13 min per DyCON arm
with one core each, i.e. ~1.3 s / iteration, so ~33 min per DyCON arm on one core)::

    python benchmarks/la_ssl.py
    python benchmarks/la_ssl.py --ablations --iterations 500 --jobs 2     # all arms, two at a time, 1 thread each
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import REPO, machine
from custom.demo import BUNDLE, bundle_command, schedule_overrides

METRICS = ("dice", "iou", "hd95_mm", "asd_mm", "hd95_voxel", "asd_voxel")

PAPER = {"fecl_variant": "paper"}
ARMS: dict[str, dict[str, object]] = {
    "supervised": {},  # + the supervised datalist (no unlabeled cases)
    "mean_teacher": {"loss#uncl_weight": 0.0, "loss#fecl_weight": 0.0, "loss#mse_weight": 1.0},
    "dycon_official": {"fecl_variant": "official"},
    "dycon_paper": PAPER,
    "uncl_off": {**PAPER, "loss#uncl_weight": 0.0},
    "beta_const_0.5": {**PAPER, "beta_max": 0.5, "beta_min": 0.5},
    "beta_const_0.8": {**PAPER, "beta_max": 0.8, "beta_min": 0.8},
    "focal_off": {**PAPER, "loss#fecl#gamma": 0.0},
    "hard_negatives_off": {**PAPER, "loss#fecl#use_hard_negatives": False},
    "entropy_off": {**PAPER, "loss#fecl#use_entropy": False},
    "supcon": {**PAPER, "loss#fecl#gamma": 0.0, "loss#fecl#use_entropy": False,
               "loss#fecl#use_hard_negatives": False},
}
MAIN_ARMS = ("supervised", "mean_teacher", "dycon_official", "dycon_paper")
ABLATION_ARMS = tuple(a for a in ARMS if a not in MAIN_ARMS)
# diagnostics (--diagnostics): what could hold DyCON back at this scale; values may depend on the protocol's arguments
DIAGNOSTIC_ARMS: dict[str, object] = {
    "dycon_paper_eta_ramp": lambda a: {**PAPER, "eta_rampup": int(0.4 * a.iterations)},  # ramp over 40 % of training
    "dycon_paper_threshold_0.9": {**PAPER, "loss#confidence_threshold": 0.9},  # stricter teacher pseudo-labels
    "dycon_paper_eta_0.1": {**PAPER, "eta": 0.1},  # a weaker unsupervised term
}
ARMS.update(DIAGNOSTIC_ARMS)  # type: ignore[arg-type]
# precision check (benchmarks/README.md, CPU training speed): the same arm in the bundles' fastest CPU setting,
# bfloat16 autocast with channels-last activations; every other arm sets amp false (the bundles' default is "auto")
BF16 = {"amp": True, "amp_dtype": "bfloat16", "channels_last": True}
PRECISION_ARMS: dict[str, object] = {
    "dycon_paper_bf16": {**PAPER, **BF16},
    "supervised_bf16": BF16,
    "dycon_paper_bf16_contiguous": {**PAPER, **BF16, "channels_last": False},  # bf16 alone, the default layout
}
ARMS.update(PRECISION_ARMS)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------- data
def downsample(src: Path, dst: Path, factor: int, label: bool) -> tuple[int, ...]:
    """Block-mean an image (``label=False``) or block-majority a label (``label=True``) by ``factor`` (the volume
    cropped to a multiple of it); the affine's columns are scaled and its origin moved to the centre of the first
    block, so the world coordinates of the new voxels are exact. Returns the new shape."""
    import nibabel as nib
    import numpy as np

    from custom.data.nifti import write_nifti

    nii = nib.load(str(src))
    arr = np.asarray(nii.dataobj, dtype=np.float32)
    if label:
        arr = (arr > 0).astype(np.float32)
    shape = tuple(s // factor for s in arr.shape)
    arr = arr[tuple(slice(0, s * factor) for s in shape)]
    arr = arr.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))
    affine = nii.affine.copy()
    affine[:3, 3] = affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + affine[:3, 3]
    affine[:3, :3] = affine[:3, :3] * factor
    if label:
        write_nifti(arr >= 0.5, dst, affine, np.uint8)
    else:
        write_nifti(arr, dst, affine, np.float32)
    return shape


def prepare(args) -> tuple[Path, Path]:
    """Prepare the subset with ``dycon prepare la``'s code, downsample it; returns (datalist, supervised datalist)."""
    from custom.data.la import prepare_la
    from custom.demo import real_subset

    work = Path(args.workdir)
    n_train = args.labeled + args.unlabeled
    src = real_subset(Path(args.h5), work / "source", n_train=n_train, n_test=args.test)
    prepared = prepare_la(src, work / "prepared", labeled=args.labeled)
    data = work / f"data_ds{args.downsample}"
    datalist = data / "datalist.json"
    if datalist.is_file() and json.loads(datalist.read_text()).get("protocol") == _protocol(args):
        return datalist, data / "datalist_supervised.json"
    shutil.rmtree(data, ignore_errors=True)
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir(parents=True)
    full = json.loads(Path(prepared).read_text())
    out: dict[str, object] = {"protocol": _protocol(args)}
    for split in ("training", "validation", "unlabeled", "test"):
        entries = []
        for e in full.get(split, []):
            entry = {}
            for key in ("image", "label"):  # unlabeled entries have no label: none is read or written
                if key in e:
                    rel = f"{key}s/{Path(e[key]).name}"
                    downsample(Path(prepared).parent / e[key], data / rel, args.downsample, label=key == "label")
                    entry[key] = rel
            entries.append(entry)
        out[split] = entries
    if len(out["training"]) != args.labeled or len(out["test"]) != args.test:  # type: ignore[arg-type]
        raise RuntimeError(f"unexpected split sizes in {prepared}")
    datalist.write_text(json.dumps(out, indent=2))
    (data / "datalist_supervised.json").write_text(json.dumps({**out, "unlabeled": []}, indent=2))
    return datalist, data / "datalist_supervised.json"


def _protocol(args) -> dict:
    return {"h5": str(Path(args.h5).resolve()), "labeled": args.labeled, "unlabeled": args.unlabeled,
            "test": args.test, "downsample": args.downsample}


# ------------------------------------------------------------------------------------------------------- arms
def run_arm(name: str, args, datalist: Path, supervised_datalist: Path) -> dict:
    """Train and evaluate one arm through the bundle; returns its summary (reused if already done)."""
    out = Path(args.workdir) / "arms" / name
    summary_file = out / "eval" / "metrics_summary.json"
    overrides = arm_overrides(name, args, datalist, supervised_datalist, out)
    record = out / "arm.json"
    if (not args.force and summary_file.is_file() and record.is_file()
            and json.loads(record.read_text()).get("overrides") == overrides):
        print(f"[{name}] reusing {summary_file}", flush=True)
        return json.loads(record.read_text())
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    timings = {}
    eval_overrides = {k: v for k, v in overrides.items()
                      if k in ("dataset_dir", "datalist", "output_dir", "ckpt_dir", "patch_size", "network_def#features",
                               "num_workers", "seed")}
    for stage, configs, ov in (("train", ["train.yaml"], overrides),
                               ("evaluate", ["train.yaml", "evaluate.yaml"], eval_overrides)):
        cmd = bundle_command(configs, ov)
        print(f"[{name}] {stage} (in {BUNDLE}): " + " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        with open(out / f"{stage}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(BUNDLE))
        timings[f"{stage}_s"] = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"arm {name}: {stage} failed (exit {rc}); see {out / f'{stage}.log'}")
    summary = json.loads(summary_file.read_text())
    result = {"arm": name, "overrides": overrides, **timings,
              "metrics": {m: summary["metrics"][m] for m in METRICS if m in summary["metrics"]},
              "per_case_csv": str(out / "eval" / "metrics_per_case.csv")}
    record.write_text(json.dumps(result, indent=2))
    print(f"[{name}] done in {timings['train_s'] + timings['evaluate_s']:.0f} s: Dice "
          f"{result['metrics']['dice']['mean']:.4f} +- {result['metrics']['dice']['std']:.4f}", flush=True)
    return result


def arm_overrides(name: str, args, datalist: Path, supervised_datalist: Path, out: Path) -> dict[str, object]:
    """The bundle overrides of one arm: the shared protocol, then the arm's own."""
    common: dict[str, object] = {
        "dataset_dir": str(datalist.parent),
        "datalist": str(supervised_datalist if name.startswith("supervised") else datalist),
        "output_dir": str(out / "eval"),
        "ckpt_dir": str(out / "models"),
        "patch_size": list(args.patch),
        "network_def#features": list(args.features),
        "labeled_batch_size": args.batch[0],
        "unlabeled_batch_size": args.batch[1],
        **schedule_overrides(args.iterations, args.val_interval),  # max_epochs x epoch_length, validated per epoch
        "learning_rate": args.lr,
        "num_workers": 0,
        "seed": args.seed,
        "amp": False,
    }
    own = ARMS[name]
    return {**common, **(own(args) if callable(own) else own)}


# ------------------------------------------------------------------------------------------------------ report
def table(results: list[dict]) -> str:
    head = ("| arm | Dice | IoU | HD95 (mm) | ASD (mm) | HD95 (voxel) | ASD (voxel) | Dice - supervised, per case "
            "(improved) | train (min) |\n|---|---|---|---|---|---|---|---|---|")
    paired = paired_vs_supervised(results)
    rows = []
    for r in results:
        cells = []
        for m in METRICS:
            s = r["metrics"].get(m)
            cells.append("n/a" if not s or s.get("mean") is None else f"{s['mean']:.3f} +- {s['std']:.3f}")
        d = paired.get(r["arm"])
        cells.append(f"{d['mean']:+.3f} +- {d['std']:.3f} ({d['improved']}/{d['cases']})" if d else "")
        rows.append(f"| {r['arm']} | " + " | ".join(cells) + f" | {r['train_s'] / 60:.1f} |")
    return "\n".join([head, *rows])


def paired_vs_supervised(results: list[dict]) -> dict[str, dict]:
    """Per-case Dice differences of every arm against ``supervised`` (same test cases): mean, std and the number of
    cases improved. With a handful of test cases this says more than the two means +- std."""
    import csv
    import statistics

    def per_case(r: dict) -> dict[str, float]:
        with open(r["per_case_csv"]) as f:
            return {Path(row["filename"]).name: float(row["dice"]) for row in csv.DictReader(f)}

    base = next((r for r in results if r["arm"] == "supervised"), None)
    if base is None:
        return {}
    ref = per_case(base)
    out = {}
    for r in results:
        if r is base:
            continue
        cur = per_case(r)
        diffs = [cur[c] - ref[c] for c in sorted(ref) if c in cur]
        out[r["arm"]] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                         "improved": sum(d > 0 for d in diffs), "cases": len(diffs)}
    return out


def bar_chart(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["arm"] for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(names) + 4), 4.5))
    for ax, metric, label in ((axes[0], "dice", "Dice (higher is better)"), (axes[1], "hd95_mm", "HD95 mm (lower)")):
        means = [r["metrics"][metric]["mean"] or 0.0 for r in results]
        stds = [r["metrics"][metric]["std"] or 0.0 for r in results]
        colors = ["#888888" if n == "supervised" else "#4c72b0" if n == "mean_teacher" else "#dd8452"
                  if n.startswith("dycon") else "#55a868" for n in names]
        ax.bar(range(len(names)), means, yerr=stds, color=colors, capsize=3)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=40, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -------------------------------------------------------------------------------------------------------- main
def protocol_parser(doc: str, workdir: str) -> argparse.ArgumentParser:
    """The arguments that la_ssl and la_protocol share: the release, the work folder, the reduced scale."""
    from custom.demo import shared_la_h5

    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    default_h5 = shared_la_h5()
    p.add_argument("--h5", default=str(default_h5) if default_h5 else None,
                   help="LA h5 release root (2018LA_Seg_Training Set/ + train.list); default ../shared/data/LA_h5")
    p.add_argument("--workdir", default=str(REPO / "runs" / workdir))
    p.add_argument("--downsample", type=int, default=2)
    p.add_argument("--patch", type=int, nargs=3, default=[48, 48, 32])
    p.add_argument("--features", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--batch", type=int, nargs=2, default=[2, 2], metavar=("LABELED", "UNLABELED"))
    p.add_argument("--lr", type=float, default=0.01)
    return p


def check_protocol_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.h5:
        p.error("no LA h5 folder: pass --h5 or place the release in ../shared/data/LA_h5")
    if any(s % 16 for s in args.patch):
        p.error("--patch sizes must be multiples of 16 (four poolings)")


def parse_args(argv=None):
    p = protocol_parser(__doc__, "la_ssl")
    p.add_argument("--labeled", type=int, default=4)
    p.add_argument("--unlabeled", type=int, default=12)
    p.add_argument("--test", type=int, default=8)
    p.add_argument("--iterations", type=int, default=1500)
    p.add_argument("--val-interval", type=int, default=None, help="iterations per trainer epoch (default: 1/10)")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--arms", nargs="+", choices=tuple(ARMS), default=list(MAIN_ARMS))
    p.add_argument("--ablations", action="store_true", help="add the ablation arms")
    p.add_argument("--diagnostics", action="store_true", help="add the diagnostic arms (eta ramp, threshold, eta)")
    p.add_argument("--jobs", type=int, default=1, help="arms trained at the same time")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per arm (0: torch's default)")
    p.add_argument("--force", action="store_true", help="retrain arms that already have results")
    args = p.parse_args(argv)
    check_protocol_args(p, args)
    if args.ablations:
        args.arms = list(dict.fromkeys([*args.arms, *ABLATION_ARMS]))
    if args.diagnostics:
        args.arms = list(dict.fromkeys([*args.arms, *DIAGNOSTIC_ARMS]))
    args.val_interval = args.val_interval or max(1, args.iterations // 10)
    args.workdir = str(Path(args.workdir).resolve())  # the bundle runs from its own folder
    if args.jobs > 1 and not args.threads:
        args.threads = max(1, (os.cpu_count() or 2) // args.jobs)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    datalist, supervised_datalist = prepare(args)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(lambda a: run_arm(a, args, datalist, supervised_datalist), args.arms))
    command = " ".join(["python", "benchmarks/la_ssl.py", *(sys.argv[1:] if argv is None else argv)])
    settings = {k: v for k, v in vars(args).items() if k not in ("force",)}
    title = (f"LA, {args.labeled} labeled + {args.unlabeled} unlabeled, {args.test} test cases, downsample "
             f"{args.downsample}, patch {'x'.join(map(str, args.patch))}, {args.iterations} iterations, seed {args.seed}")
    report = {"benchmark": "la_ssl", "command": command, "settings": settings, "machine": machine(),
              "wall_s": time.time() - t0, "results": results, "dice_vs_supervised": paired_vs_supervised(results)}
    (work / "results.json").write_text(json.dumps(report, indent=2))
    md = f"{title}\n\n`{command}`\n\n{table(results)}\n"
    (work / "results.md").write_text(md)
    bar_chart(results, work / "results.png", title)
    print("\n" + md)
    print(f"written: {work / 'results.json'}, {work / 'results.md'}, {work / 'results.png'}")
    return report


if __name__ == "__main__":
    main()
