"""The literature's LA semi-supervised protocol on any LA h5 release, with validation selection and paired statistics.

Split (``dycon prepare la --labeled L --val V``, exactly as users prepare LA): the first ``--labeled`` ids of
train.list are labeled (8 = 10 %, 16 = 20 % of the 80 official cases), the last ``--val`` (16) ids of train.list are
the validation split that selects models, the rest is unlabeled. ``--test-list FILE`` names held-out cases of the
same release (e.g. the official test.list); they are evaluated but never used to select anything. Without it only
the validation split is scored.

Every arm x seed is the LA bundle run through ``python -m monai.bundle run`` (train.yaml, then train.yaml +
evaluate.yaml), the arm being nothing but overrides (the arms of :mod:`benchmarks.la_ssl`: supervised, mean
teacher, DyCON ``official`` / ``paper``, ablations). Two models per run: the **last** one and the
**validation-selected** one (best validation Dice, the bundle's ``model.pt``). Each is evaluated on the validation
split (the selected model's validation score is optimistic by construction: it is the maximum over the
validations; the last model's is not) and on the test list if given, with the bundle's sliding window and with the
papers' one (``--sw_protocol paper``: window = the patch, strides 18 / 18 / 4 divided by ``--downsample``).

Volumes are downsampled by ``--downsample`` (block mean / majority, exact geometry) to fit a CPU.

Output (``--workdir``, default ``runs/la_protocol``): ``results.json`` (settings, the command, the machine, per arm x
seed: timings, overrides and per-case Dice / IoU / HD95 / ASD in mm and voxels for every model x split x window;
summaries; paired statistics) and ``results.md``. Paired statistics, per split x model x window, for every arm
against ``supervised`` and DyCON arms against ``mean_teacher``: the per-case metric is averaged over the seeds,
then the per-case differences give the mean, a two-sided sign test and a seeded bootstrap 95 % interval of the
mean difference; the seed-matched differences of the case means are listed too. Finished runs are reused.

Example (the committed reduced-scale evidence, benchmarks/la_protocol.md)::

    python benchmarks/la_protocol.py --iterations 300 --seeds 1337 7 42 --jobs 2
    python benchmarks/la_protocol.py --h5 /data/LA_h5 --test-list /data/LA_h5/test.list   # the held-out check
    # label-free default chain vs the literature's label crop (train + evaluate), on the real h5 cases:
    python benchmarks/la_protocol.py --h5 /data/LA_h5 --arms dycon_paper dycon_paper_label_crop --seeds 1337 7 42
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine
from benchmarks.la_ssl import ABLATION_ARMS, ARMS, METRICS, PAPER, check_protocol_args, downsample, protocol_parser
from custom.demo import BUNDLE, bundle_command, schedule_overrides

MAIN_ARMS = ("supervised", "mean_teacher", "dycon_official", "dycon_paper")
# protocol comparison (issue #14): the bundle's label-free default chain (arm dycon_paper) against the literature's
# crop around the ground truth (label_crop: true for training AND evaluation; margin 15 voxels of the full grid in x
# and y, divided by --downsample). On the h5 release both see volumes the release's authors already cropped around
# the label (10-20 voxels, widened to 112): the label-free arm measures the chain, not a label-free release.
LABEL_CROP_MARGIN = 15
PROTOCOL_ARMS: dict[str, object] = {
    "dycon_paper_label_crop": lambda a: {**PAPER, "label_crop": True,
                                         "label_crop_margin": max(1, round(LABEL_CROP_MARGIN / a.downsample))},
}
#: la_ssl's arms and this runner's own (la_ssl's table is left as it is)
ALL_ARMS: dict[str, object] = {**ARMS, **PROTOCOL_ARMS}
#: overrides of an arm that evaluate.yaml must get too (the evaluation protocol, not only the training)
EVALUATION_KEYS = ("label_crop", "label_crop_margin")
MODELS = ("last", "selected")
WINDOWS = ("bundle", "paper")


# ------------------------------------------------------------------------------------------------------- data
def prepare(args) -> Path:
    """``dycon prepare la`` of the release (labeled / validation / unlabeled, the test list given or none), then
    downsampled; returns the datalist (cached by its settings)."""
    from custom.data.la import prepare_la

    work = Path(args.workdir)
    protocol = {"h5": str(Path(args.h5).resolve()), "labeled": args.labeled, "val": args.val,
                "test_list": str(Path(args.test_list).resolve()) if args.test_list else None,
                "downsample": args.downsample}
    data = work / f"data_ds{args.downsample}"
    datalist = data / "datalist.json"
    if datalist.is_file() and json.loads(datalist.read_text()).get("protocol") == protocol:
        return datalist
    src = work / "source"  # the release's cases and train.list, the given test list (or an empty one)
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    (src / "2018LA_Seg_Training Set").symlink_to(Path(args.h5).resolve() / "2018LA_Seg_Training Set")
    shutil.copy(Path(args.h5) / "train.list", src / "train.list")
    (src / "test.list").write_text(Path(args.test_list).read_text() if args.test_list else "")
    shutil.rmtree(work / "prepared", ignore_errors=True)
    prepared = Path(prepare_la(src, work / "prepared", labeled=args.labeled, val=args.val))
    shutil.rmtree(data, ignore_errors=True)
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir(parents=True)
    full = json.loads(prepared.read_text())
    out: dict[str, object] = {"protocol": protocol}
    for split in ("training", "validation", "unlabeled", "test"):
        entries = []
        for e in full.get(split, []):
            entry = {}
            for key in ("image", "label"):  # unlabeled entries have no label: none is read or written
                if key in e:
                    rel = f"{key}s/{Path(e[key]).name}"
                    downsample(prepared.parent / e[key], data / rel, args.downsample, label=key == "label")
                    entry[key] = rel
            entries.append(entry)
        out[split] = entries
    if len(out["training"]) != args.labeled or len(out["validation"]) != args.val:  # type: ignore[arg-type]
        raise RuntimeError(f"unexpected split sizes in {prepared}")
    if args.test_list and not out["test"]:
        raise RuntimeError(f"none of the cases of {args.test_list} is in {args.h5}")
    datalist.write_text(json.dumps(out, indent=2))
    return datalist


def derived_datalists(datalist: Path) -> dict[str, Path]:
    """The datalists the runs read, written once before any run starts (runs in parallel threads only read them):
    ``supervised`` drops the unlabeled list; ``eval_<split>`` puts <split> under ``test`` (what evaluate.yaml
    scores); ``train`` is the datalist itself."""
    full = json.loads(datalist.read_text())
    out = {"train": datalist, "supervised": datalist.with_name("datalist_supervised.json")}
    _write_once(out["supervised"], json.dumps({**full, "unlabeled": []}, indent=2))
    for split in ("validation", "test"):
        out[f"eval_{split}"] = datalist.with_name(f"datalist_eval_{split}.json")
        _write_once(out[f"eval_{split}"], json.dumps({**full, "test": full[split]}, indent=2))
    return out


def _write_once(path: Path, text: str) -> None:
    """Write ``text`` unless the file already holds it; atomically (another runner on the same work folder may be
    reading it)."""
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------- runs
def run_one(arm: str, seed: int, args, datalists: dict[str, Path]) -> dict:
    """Train one arm x seed through the bundle, evaluate its last and selected models; reused when finished."""
    out = Path(args.workdir) / "arms" / arm / f"seed{seed}"
    record = out / "run.json"
    common = {
        "dataset_dir": str(datalists["train"].parent), "output_dir": str(out / "train"), "ckpt_dir": str(out / "models"),
        "patch_size": list(args.patch), "network_def#features": list(args.features), "num_workers": 0, "seed": seed,
    }
    overrides: dict[str, object] = {
        **common, "datalist": str(datalists["supervised" if arm.startswith("supervised") else "train"]),
        "labeled_batch_size": args.batch[0], "unlabeled_batch_size": args.batch[1],
        **schedule_overrides(args.iterations, args.val_interval), "learning_rate": args.lr,
        "amp": False,  # fp32 unless the arm says otherwise (the *_bf16 arms)
    }
    own = ALL_ARMS[arm]
    overrides.update(own(args) if callable(own) else own)
    splits = ["validation"] + (["test"] if args.test_list else [])
    if not args.force and record.is_file():
        done = json.loads(record.read_text())
        if (done.get("overrides") == overrides and set(done.get("splits", [])) == set(splits)
                and all(f"{sp}_{m}_{w}" in done["per_case"] for sp in splits for m in MODELS for w in args.windows)):
            print(f"[{arm} seed {seed}] reusing {record}", flush=True)
            return done
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)

    def bundle(stage: str, configs: list[str], ov: dict) -> float:
        cmd = bundle_command(configs, ov)
        t0 = time.perf_counter()
        with open(out / f"{stage}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(BUNDLE))
        if rc != 0:
            raise RuntimeError(f"{arm} seed {seed}: {stage} failed (exit {rc}); see {out / f'{stage}.log'}")
        return time.perf_counter() - t0

    print(f"[{arm} seed {seed}] train (in {BUNDLE}): " + " ".join(bundle_command(["train.yaml"], overrides)[1:]),
          flush=True)
    train_s = bundle("train", ["train.yaml"], overrides)
    last = last_model(out / "train" / "checkpoints", out / "models_last" / "model.pt")
    ckpt_dirs = {"last": last.parent, "selected": out / "models"}
    stride = [max(1, s // args.downsample) for s in (18, 18, 4)]
    evals: dict[str, dict] = {}
    eval_s = 0.0
    for split in splits:
        for model in MODELS:
            for window in args.windows:
                name = f"{split}_{model}_{window}"
                ov = {**common, "datalist": str(datalists[f"eval_{split}"]),
                      "ckpt_dir": str(ckpt_dirs[model]), "output_dir": str(out / "eval" / name), "sw_protocol": window,
                      "paper_sw_roi": list(args.patch), "paper_sw_stride": stride,
                      **{k: overrides[k] for k in EVALUATION_KEYS if k in overrides}}
                eval_s += bundle(f"evaluate_{name}", ["train.yaml", "evaluate.yaml"], ov)
                evals[name] = per_case(out / "eval" / name / "metrics_per_case.csv")
    result = {"arm": arm, "seed": seed, "overrides": overrides, "splits": splits, "train_s": train_s,
              "evaluate_s": eval_s, "best_validation": best_validation(out / "train.log"), "per_case": evals}
    record.write_text(json.dumps(result, indent=2))
    dice = statistics.fmean(c["dice"] for c in evals["validation_last_bundle"].values())
    print(f"[{arm} seed {seed}] done: train {train_s / 60:.1f} min, validation Dice (last model) {dice:.4f}", flush=True)
    return result


def last_model(checkpoints: Path, dst: Path) -> Path:
    """The student of the newest training checkpoint, saved as ``{"model": state_dict}`` (what evaluate.yaml loads)."""
    import torch

    files = sorted(checkpoints.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"no training checkpoint in {checkpoints}")
    state = torch.load(files[-1], map_location="cpu", weights_only=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state["network"]}, dst)
    return dst


def best_validation(log: Path) -> dict | None:
    """The best validation Dice and its epoch, as MONAI's StatsHandler printed it (``Key metric: val_mean_dice best
    value: X at epoch: E``), or None."""
    best = None
    for line in log.read_text(errors="replace").splitlines():
        if "best value:" in line and "val_mean_dice" in line:
            tail = line.split("best value:")[1].split("at epoch:")
            best = {"dice": float(tail[0].strip()), "epoch": int(tail[1].strip().split()[0])}
    return best


def per_case(csv_path: Path) -> dict[str, dict[str, float]]:
    with open(csv_path) as f:
        return {Path(row["filename"]).name.split(".")[0]: {m: _num(row.get(m)) for m in METRICS}
                for row in csv.DictReader(f)}


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


# ------------------------------------------------------------------------------------------------- statistics
def sign_test(diffs: list[float]) -> float:
    """Two-sided exact sign test p-value of the non-zero differences (ties dropped); 1.0 if all are zero."""
    nz = [d for d in diffs if d != 0]
    n, k = len(nz), sum(d > 0 for d in nz)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_ci(diffs: list[float], n: int = 10000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95 % interval of the mean of ``diffs`` (cases resampled with replacement, seeded)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(n))
    return [means[int(0.025 * n)], means[int(0.975 * n) - 1]]


def summarise(runs: list[dict], metric: str = "dice") -> dict:
    """Per arm x evaluation: mean +- std over cases of the seed-averaged metric, and the seed means."""
    out: dict[str, dict] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        out[arm] = {}
        for name in mine[0]["per_case"]:
            cases = sorted(mine[0]["per_case"][name])
            seed_means = [statistics.fmean(r["per_case"][name][c][metric] for c in cases) for r in mine]
            avg = [statistics.fmean(r["per_case"][name][c][metric] for r in mine) for c in cases]
            out[arm][name] = {"mean": statistics.fmean(avg), "std_cases": statistics.stdev(avg) if len(avg) > 1 else 0.0,
                              "seed_means": seed_means,
                              "std_seeds": statistics.stdev(seed_means) if len(seed_means) > 1 else 0.0,
                              "seeds": [r["seed"] for r in mine], "cases": len(cases)}
    return out


def paired(runs: list[dict], a: str, b: str, name: str, metric: str = "dice", n_boot: int = 10000) -> dict | None:
    """``a - b`` on one evaluation: per-case differences of the seed-averaged metric (mean, sign test, bootstrap
    interval, cases improved) and the seed-matched differences of the case means."""
    ra = {r["seed"]: r for r in runs if r["arm"] == a and name in r["per_case"]}
    rb = {r["seed"]: r for r in runs if r["arm"] == b and name in r["per_case"]}
    seeds = sorted(set(ra) & set(rb))
    if not seeds:
        return None
    cases = sorted(set(ra[seeds[0]]["per_case"][name]) & set(rb[seeds[0]]["per_case"][name]))
    avg = lambda runs_, c: statistics.fmean(runs_[s]["per_case"][name][c][metric] for s in seeds)  # noqa: E731
    diffs = [avg(ra, c) - avg(rb, c) for c in cases]
    by_seed = [statistics.fmean(ra[s]["per_case"][name][c][metric] - rb[s]["per_case"][name][c][metric] for c in cases)
               for s in seeds]
    return {"a": a, "b": b, "evaluation": name, "metric": metric, "seeds": seeds, "cases": len(cases),
            "mean_diff": statistics.fmean(diffs), "improved": sum(d > 0 for d in diffs),
            "sign_test_p": sign_test(diffs), "bootstrap_95": bootstrap_ci(diffs, n_boot), "seed_matched": by_seed}


def comparisons(runs: list[dict], n_boot: int = 10000) -> list[dict]:
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    pairs = [(a, "supervised") for a in arms if a != "supervised" and "supervised" in arms]
    pairs += [(a, "mean_teacher") for a in arms if a.startswith("dycon") and "mean_teacher" in arms]
    pairs += [("dycon_paper", "dycon_official")] if {"dycon_paper", "dycon_official"} <= set(arms) else []
    pairs += [(a, base) for a in arms if a.endswith("_bf16") and (base := a.removesuffix("_bf16")) in arms]
    pairs += [(a, base) for a in arms if a.endswith("_label_crop") and (base := a.removesuffix("_label_crop")) in arms]
    pairs = list(dict.fromkeys(pairs))
    names = runs[0]["per_case"].keys() if runs else []
    return [p for name in names for a, b in pairs if (p := paired(runs, a, b, name, n_boot=n_boot))]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"LA protocol: {s['labeled']} labeled, {s['val']} validation, the rest of train.list unlabeled; "
             f"downsample {s['downsample']}, patch {'x'.join(map(str, s['patch']))}, UNet3D {s['features']}, "
             f"batch {s['batch'][0]}+{s['batch'][1]}, {s['iterations']} iterations, seeds {s['seeds']}",
             "", f"`{report['command']}`", "",
             "Dice, per-case mean over the seed-averaged cases +- std over cases [std over seeds of the seed means]; "
             "`selected` on `validation` is optimistic (it was chosen there).", ""]
    names = list(next(iter(report["summary"].values())).keys())
    lines.append("| arm | " + " | ".join(names) + " | train (min, mean) |")
    lines.append("|---" * (len(names) + 2) + "|")
    for arm, ev in report["summary"].items():
        t = statistics.fmean(r["train_s"] for r in report["runs"] if r["arm"] == arm) / 60
        cells = [f"{ev[n]['mean']:.3f} +- {ev[n]['std_cases']:.3f} [{ev[n]['std_seeds']:.3f}]" for n in names]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {t:.1f} |")
    lines += ["", "Paired per-case Dice differences (seed-averaged cases): mean, cases improved, sign test p, "
              "bootstrap 95 % interval; seed-matched differences of the case means (seed in brackets).", "",
              "| evaluation | a - b | mean | improved | sign p | bootstrap 95 % | per seed |", "|---|---|---|---|---|---|---|"]
    for p in report["paired"]:
        lines.append(f"| {p['evaluation']} | {p['a']} - {p['b']} | {p['mean_diff']:+.4f} | {p['improved']}/{p['cases']} "
                     f"| {p['sign_test_p']:.3f} | [{p['bootstrap_95'][0]:+.4f}, {p['bootstrap_95'][1]:+.4f}] | "
                     + ", ".join(f"{d:+.3f} ({seed})" for seed, d in zip(p["seeds"], p["seed_matched"])) + " |")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = protocol_parser(__doc__, "la_protocol")
    p.add_argument("--test-list", default=None, help="held-out ids to evaluate (never used for selection)")
    p.add_argument("--labeled", type=int, default=8, help="first ids of train.list labeled (8 = 10 %%, 16 = 20 %%)")
    p.add_argument("--val", type=int, default=16, help="validation ids carved from the end of train.list")
    p.add_argument("--iterations", type=int, default=1000)
    p.add_argument("--val-interval", type=int, default=None, help="iterations between validations (default 1/10)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1337, 7, 42])
    p.add_argument("--arms", nargs="+", choices=tuple(ALL_ARMS), default=list(MAIN_ARMS))
    p.add_argument("--ablations", action="store_true", help="add the ablation arms of la_ssl")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at the same time")
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS per run (0: cores / jobs)")
    p.add_argument("--windows", nargs="+", choices=WINDOWS, default=list(WINDOWS),
                   help="sliding windows evaluated: the bundle's and the papers' strides (both by default)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--force", action="store_true", help="retrain runs that already have results")
    args = p.parse_args(argv)
    check_protocol_args(p, args)
    if args.test_list and Path(args.test_list).resolve() == (Path(args.h5) / "train.list").resolve():
        p.error("--test-list is the training list")
    if args.ablations:
        args.arms = list(dict.fromkeys([*args.arms, *ABLATION_ARMS]))
    args.val_interval = args.val_interval or max(1, args.iterations // 10)
    args.workdir = str(Path(args.workdir).resolve())  # the bundle runs from its own folder
    if not args.threads:
        args.threads = max(1, (os.cpu_count() or 2) // max(1, args.jobs))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    t0 = time.time()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    datalists = derived_datalists(prepare(args))
    jobs = [(arm, seed) for seed in args.seeds for arm in args.arms]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = list(pool.map(lambda j: run_one(j[0], j[1], args, datalists), jobs))
    command = " ".join(["python", "benchmarks/la_protocol.py", *(sys.argv[1:] if argv is None else argv)])
    settings = {k: v for k, v in vars(args).items() if k != "force"}
    report = {"benchmark": "la_protocol", "command": command, "settings": settings, "machine": machine(),
              "wall_s": time.time() - t0, "summary": summarise(runs), "paired": comparisons(runs, args.bootstrap),
              "runs": runs}
    (work / "results.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (work / "results.md").write_text(md)
    print("\n" + md)
    print(f"written: {work / 'results.json'}, {work / 'results.md'}")
    return report


if __name__ == "__main__":
    main()
