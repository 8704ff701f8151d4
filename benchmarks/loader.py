"""Time of the bundle's training loaders per batch, measured apart from the iteration.

Builds ``train#dataloader`` (labeled) and ``train#unlabeled#dataloader`` (unlabeled) from a bundle's
``configs/train.yaml`` with MONAI's ConfigParser, i.e. exactly the CacheDataset + transform chain + seeded endless
sampler a training run uses, then times the batches the trainer would draw: the CacheDataset build (the one-off
deterministic part: loading, orientation, normalisation) separately, then per batch (random crop, rotation, flip,
collation, worker hand-off). Compare the per-batch time with ``train_step.py``'s iteration time: a loader keeps up
when one batch takes less than one iteration (with workers, batches are prepared while the GPU trains).

Data: ``--dataset-dir`` (a prepared dataset with its datalist.json), else a synthetic LA set in the raw challenge
layout prepared with ``dycon prepare la`` (``--cases``, ``--volume``).

Example::

    python benchmarks/loader.py --bundle la --num-workers 0 2 --batches 20

Prints one JSON object (settings, machine, per num_workers: cache build seconds, median / min / max seconds per
labeled and per unlabeled batch).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BUNDLES, bundle_dir, machine, stats
from custom.export import bundle_code


def _synthetic_dataset(root: Path, cases: int, volume: list[int]) -> Path:
    from custom.data.la import prepare_la, synth_la

    src = synth_la(root / "raw", n_train=cases, n_test=1, shape=tuple(volume), seed=0)
    return Path(prepare_la(src, root / "prepared", labeled=max(1, cases // 2))).parent


def time_loaders(bundle: str, dataset_dir: Path, num_workers: int, batches: int, warmup: int,
                 patch: list[int] | None, batch: list[int] | None) -> dict:
    from monai.bundle import ConfigParser

    root = bundle_dir(bundle)
    with bundle_code(root):  # the configs import the bundle's own ``scripts`` package
        parser = ConfigParser()
        parser.read_config(str(root / "configs" / "train.yaml"))
        parser.update({"bundle_root": str(root), "dataset_dir": str(dataset_dir),
                       "num_workers": num_workers})
        if patch:
            parser["patch_size"] = list(patch)
        if batch:
            parser["labeled_batch_size"], parser["unlabeled_batch_size"] = batch
        out: dict = {"num_workers": num_workers}
        for name, key in (("labeled", "train#dataloader"), ("unlabeled", "train#unlabeled#dataloader")):
            t0 = time.perf_counter()
            dataset = parser.get_parsed_content(key.replace("dataloader", "dataset"))
            out[f"{name}_cache_build_s"] = time.perf_counter() - t0
            out[f"{name}_cases"] = len(dataset)
            loader = parser.get_parsed_content(key)
            if loader is None:
                continue
            it = iter(loader)
            times = []
            for i in range(warmup + batches):
                t0 = time.perf_counter()
                b = next(it)
                times.append(time.perf_counter() - t0)
            out[name] = {**stats(times[warmup:]), "first_s": times[:warmup], "batch_shape": list(b["image"].shape)}
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", choices=BUNDLES, default="la")
    p.add_argument("--dataset-dir", default=None, help="a prepared dataset (default: a synthetic LA set)")
    p.add_argument("--cases", type=int, default=8, help="synthetic cases (half labeled)")
    p.add_argument("--volume", type=int, nargs=3, default=[192, 160, 88], help="synthetic raw volume size")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="default: the bundle's patch_size")
    p.add_argument("--batch", type=int, nargs=2, default=None, metavar=("LABELED", "UNLABELED"))
    p.add_argument("--num-workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--warmup", type=int, default=2, help="untimed batches first (worker start-up)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.dataset_dir) if args.dataset_dir else _synthetic_dataset(Path(tmp), args.cases, args.volume)
        results = [time_loaders(args.bundle, data, w, args.batches, args.warmup, args.patch, args.batch)
                   for w in args.num_workers]
    report = {
        "benchmark": "loader",
        "command": " ".join(["python", "benchmarks/loader.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {**{k: v for k, v in vars(args).items()}, "data": args.dataset_dir or "synthetic LA (raw layout)"},
        "machine": machine(),
        "results": results,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
