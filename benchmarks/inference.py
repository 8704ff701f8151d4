"""Sliding-window inference time per volume (and peak memory) for DyCON's UNet3D, with Dice agreement.

Settings (each run in a fresh subprocess, so the peak RSS is its own):

* ``paper``: roi 96^3 at the paper's / released code's stride, 16 in-plane and 4 through-plane. MONAI's
  ``overlap`` is a per-dimension fraction with ``stride = int(roi * (1 - overlap))``; the overlap used is chosen so
  that this gives exactly the requested stride (``1 - 16/96`` itself rounds to a stride of 15 in floating point).
* ``bundle``: roi = the bundle's ``patch_size`` (LA: 112x112x80) at the bundle's ``sw_overlap`` (0.5), which is
  what the bundles' evaluators use;
* ``paper_roi_half``: the paper's roi (96^3) at the bundle's overlap (0.5).

All use MONAI's ``SlidingWindowInferer`` (mode "constant", ``sw_batch_size`` 1 as in the bundles, unless changed).
Reported per setting: seconds per volume (median / min / max over ``--repeats``), number of windows, peak RSS
(CPU) or max allocated memory (CUDA), and the Dice of the argmax foreground against the ``paper`` setting (plus
voxel agreement). Agreement between two inferers needs no trained network, but it is more meaningful with one:
pass ``--ckpt`` (a state dict or a MONAI ``{"model": ...}``/``{"network": ...}`` checkpoint).

The default volume is synthetic, LA-sized: 192x144x88 (a typical cropped LA LGE-MRI volume: 88 slices,
~0.625 mm in-plane). With 88 < 96 slices a 96^3 window covers the whole depth (MONAI pads), so the
through-plane stride has no effect there; the number of windows is reported. ``--image`` loads a real volume
(NIfTI via MONAI's LoadImage, or .h5 with an ``image`` dataset), z-scored like the bundles.

Example (CPU, shrunken network for a quick run)::

    python benchmarks/inference.py --features 8 16 32 64 128 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BUNDLES, bundle_defaults, current_rss_mib, machine, peak_rss_mib, run_child, stats
from custom.inferers import overlap_for_stride

SETTINGS = ("paper", "bundle", "paper_roi_half")


def setting_params(args, name: str) -> dict:
    if name == "paper":
        roi = [args.paper_roi] * 3
        strides = [args.paper_stride_xy, args.paper_stride_xy, args.paper_stride_z]
        overlap = overlap_for_stride(roi, strides)
    elif name == "bundle":
        roi, overlap = list(args.bundle_roi), [args.bundle_overlap] * 3
    elif name == "paper_roi_half":
        roi, overlap = [args.paper_roi] * 3, [args.bundle_overlap] * 3
    else:
        raise ValueError(name)
    return {"roi": roi, "overlap": overlap, "stride": [max(int(r * (1 - o)), 1) for r, o in zip(roi, overlap)]}


def load_volume(args):
    import numpy as np
    import torch

    if args.image:
        path = args.image
        if path.endswith((".h5", ".hdf5")):
            import h5py

            with h5py.File(path, "r") as f:
                arr = np.asarray(f["image"], dtype=np.float32)
        else:
            from monai.transforms import LoadImage

            arr = np.asarray(LoadImage(image_only=True)(path), dtype=np.float32)
        vol = torch.as_tensor(arr)
        if vol.ndim == 4:
            vol = vol[0]
    else:
        # synthetic: an ellipsoid "atrium" with a noisy background, deterministic
        g = torch.Generator().manual_seed(0)
        shape = tuple(args.volume)
        grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij"))
        blob = ((grid / torch.tensor([0.5, 0.45, 0.6]).view(3, 1, 1, 1)) ** 2).sum(0) < 1
        vol = blob.float() * 2.0 + torch.randn(shape, generator=g)
    vol = (vol - vol.mean()) / vol.std().clamp_min(1e-8)  # z-score as the bundles (LA: whole volume)
    return vol[None, None].contiguous()


def build_net(args, device):
    import torch

    from custom.networks import UNet3D

    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=2, features=tuple(args.features))
    if args.ckpt:
        sd = torch.load(args.ckpt, map_location="cpu", weights_only=True)
        for key in ("model", "network", "state_dict"):
            if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
        net.load_state_dict(sd)
    return net.to(device).eval()


def run_setting(args) -> dict:
    import numpy as np
    import torch
    from monai.inferers import SlidingWindowInferer

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    params = setting_params(args, args.setting)
    net = build_net(args, device)
    vol = load_volume(args).to(device)
    calls = [0]

    def predictor(x):
        calls[0] += x.shape[0]
        return net(x)

    inferer = SlidingWindowInferer(roi_size=params["roi"], sw_batch_size=args.sw_batch_size,
                                   overlap=params["overlap"], mode="constant")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    rss_before = current_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    times, warm = [], []
    for i in range(args.warmup + args.repeats):
        calls[0] = 0
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            logits = inferer(vol, predictor)
        mask = logits.argmax(1)
        if cuda:
            torch.cuda.synchronize(device)
        (warm if i < args.warmup else times).append(time.perf_counter() - t0)
    mask_np = mask[0].to(torch.uint8).cpu().numpy()
    np.save(args.mask_out, mask_np)
    res = {
        "setting": args.setting,
        **params,
        **stats(times),
        "warmup_s": warm,
        "windows": calls[0],
        "foreground_fraction": float(mask_np.mean()),
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_run_mib": rss_before,
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        res["max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return res


def dice(a, b) -> float:
    import numpy as np

    a, b = a.astype(bool), b.astype(bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", choices=BUNDLES, default="la", help="bundle whose train.yaml gives patch / sw_overlap")
    p.add_argument("--volume", type=int, nargs=3, default=[192, 144, 88], help="synthetic volume size (LA-sized)")
    p.add_argument("--image", default=None, help="a real volume instead (.nii/.nii.gz via LoadImage, or .h5)")
    p.add_argument("--ckpt", default=None, help="UNet3D weights (random weights otherwise)")
    p.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--paper-roi", type=int, default=96)
    p.add_argument("--paper-stride-xy", type=int, default=16)
    p.add_argument("--paper-stride-z", type=int, default=4)
    p.add_argument("--bundle-roi", type=int, nargs=3, default=None, help="default: the bundle's patch_size")
    p.add_argument("--bundle-overlap", type=float, default=None, help="default: the bundle's sw_overlap")
    p.add_argument("--sw-batch-size", type=int, default=1)
    p.add_argument("--amp", choices=("off", "bf16"), default="off")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS))
    p.add_argument("--setting", choices=SETTINGS, default=None, help=argparse.SUPPRESS)  # internal
    p.add_argument("--mask-out", default=None, help=argparse.SUPPRESS)  # internal
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    d = bundle_defaults(args.bundle)
    args.config = d["config"]
    args.bundle_roi = list(args.bundle_roi or d["patch_size"])
    args.bundle_overlap = d["sw_overlap"] if args.bundle_overlap is None else args.bundle_overlap
    return args


def _child_argv(args, setting, mask_out):
    argv = ["--bundle", args.bundle, "--volume", *map(str, args.volume), "--features", *map(str, args.features),
            "--paper-roi", str(args.paper_roi), "--paper-stride-xy", str(args.paper_stride_xy),
            "--paper-stride-z", str(args.paper_stride_z), "--bundle-roi", *map(str, args.bundle_roi),
            "--bundle-overlap", str(args.bundle_overlap), "--sw-batch-size", str(args.sw_batch_size),
            "--amp", args.amp, "--device", args.device, "--repeats", str(args.repeats), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--setting", setting, "--mask-out", mask_out]
    if args.image:
        argv += ["--image", args.image]
    if args.ckpt:
        argv += ["--ckpt", args.ckpt]
    return argv


def main(argv=None) -> dict:
    import numpy as np

    args = parse_args(argv)
    if args.setting is not None:
        res = run_setting(args)
        print(json.dumps(res))
        return res
    with tempfile.TemporaryDirectory(prefix="dycon_bench_") as tmp:
        results, masks = {}, {}
        for s in args.settings:
            mask_path = os.path.join(tmp, f"{s}.npy")
            results[s] = run_child(Path(__file__), _child_argv(args, s, mask_path))
            masks[s] = np.load(mask_path)
    ref = "paper" if "paper" in masks else args.settings[0]
    agreement = {}
    for s in args.settings:
        if s != ref:
            agreement[f"{s}_vs_{ref}"] = {
                "dice_foreground": dice(masks[s], masks[ref]),
                "dice_background": dice(masks[s] == 0, masks[ref] == 0),
                "voxel_agreement": float((masks[s] == masks[ref]).mean()),
            }
    shape = list(masks[ref].shape)
    result = {
        "benchmark": "inference",
        "command": " ".join(["python", "benchmarks/inference.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "bundle": args.bundle, "config": args.config, "volume": shape,
            "volume_source": args.image or "synthetic (ellipsoid + noise, z-scored)",
            "weights": args.ckpt or "random (torch.manual_seed(0))", "features": args.features,
            "sw_batch_size": args.sw_batch_size, "mode": "constant", "amp": args.amp, "device": args.device,
            "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
            "memory": "peak RSS of the setting's own process (includes ~imports); max_allocated on CUDA",
        },
        "machine": machine(),
        "results": results,
        "agreement": agreement,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
