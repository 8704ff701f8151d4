"""Steady-state time of one DyCON training iteration (the real ``MeanTeacherTrainer._iteration``).

Three arms with the same network, inputs and settings, each in a fresh subprocess (so the peak RSS is its own):

* ``dycon``: the bundle's objective, supervised + eta * (UnCL + FeCL);
* ``mean_teacher``: a plain mean teacher, ``DyCONLoss(uncl_weight=0, fecl_weight=0, mse_weight=1)`` (single-softmax
  MSE consistency, no embeddings / projection-head forward);
* ``supervised``: no unlabeled loader, no teacher (only the labeled part of the batch);
* ``released_loop`` (opt-in, ``--arms ... released_loop``): the ``dycon`` iteration plus the per-iteration work the
  authors' released training loop adds (method doc, section 5): UnCL through a (B, B, *spatial) broadcast temporary
  and a medpy-style HD95 (full-volume Euclidean distance transforms, voxel units) of the labeled training batch
  after every step. Not the authors' code: a re-creation of those two costs on our iteration, so that the time
  they waste is measured next to ours at the same settings.

What one timed iteration contains: student forward on labeled + unlabeled, teacher forward (no_grad, noisy input),
losses, backward, gradient clipping, SGD step, and the handlers (ScheduleHandler for beta, TeacherEMAHandler).
The loader is excluded: batches are pre-built tensors on the device, served by a trivial in-memory iterable.
The clock starts at Ignite's GET_BATCH_COMPLETED and stops after the last ITERATION_COMPLETED handler
(``torch.cuda.synchronize`` at both ends on CUDA). The first ``--warmup`` iterations are dropped.

Example (CPU, small)::

    python benchmarks/train_step.py --bundle la --patch 48 48 32 --labeled 2 --unlabeled 2 --repeats 5 --warmup 2

Prints one JSON object: settings, machine, per-arm median/min/max s/iteration and peak memory, and the ratios
dycon / mean_teacher and dycon / supervised of the medians.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import BUNDLES, bundle_defaults, current_rss_mib, machine, peak_rss_mib, run_child, stats

ARMS = ("dycon", "mean_teacher", "supervised", "released_loop")
DEFAULT_ARMS = ("dycon", "mean_teacher", "supervised")
AMP = {"off": None, "bf16": "bfloat16", "fp16": "float16"}


class _Repeat:
    """An endless in-memory 'loader' yielding the same pre-built batch (loader cost excluded)."""

    def __init__(self, batch: dict) -> None:
        self.batch = batch

    def __iter__(self):
        while True:
            yield self.batch


def _batches(args, device):
    import torch

    g = torch.Generator().manual_seed(0)
    shape = tuple(args.patch)

    def volume(n, with_label):
        # a noisy sphere per volume, so the labels have foreground and the losses are non-trivial
        grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in shape], indexing="ij"))
        centre = torch.tensor(shape, dtype=torch.float32).view(3, 1, 1, 1) / 2
        radius = min(shape) / 4
        mask = ((grid - centre) ** 2).sum(0) < radius**2
        img = mask.float().expand(n, 1, *shape) + 0.5 * torch.randn(n, 1, *shape, generator=g)
        d = {"image": img.contiguous().to(device)}
        if with_label:
            d["label"] = mask.float().expand(n, 1, *shape).contiguous().to(device)
        return d

    return volume(args.labeled, True), volume(args.unlabeled, False)


def _released_uncl(student_logits, teacher_logits, beta):
    """UnCL as the released code evaluates it: the per-voxel terms broadcast to a (B, B, *spatial) temporary
    (an accident there); the diagonal is the plain per-voxel value, so the loss is the same as ours."""
    import torch

    from custom.losses.uncl import voxel_entropy

    p_s = torch.softmax(student_logits, 1)
    p_t = torch.softmax(teacher_logits.detach(), 1)
    h_s, h_t = voxel_entropy(p_s), voxel_entropy(p_t)  # (B, *spatial)
    weight = 1.0 / (torch.exp(beta * h_s) + torch.exp(beta * h_t))
    sq = (p_s - p_t).pow(2).sum(1)
    full = weight[:, None] * sq[None] + beta * (h_s[:, None] + h_t[None])  # (B, B, *spatial)
    return torch.diagonal(full, dim1=0, dim2=1).mean()


def _medpy_hd95(pred, ref) -> float:
    """medpy.metric.binary.hd95 without spacing: surfaces by one binary erosion, distance transforms of the whole
    volume in both directions, 95th percentile of the pooled distances (what the released loop runs per step)."""
    import numpy as np
    from scipy import ndimage

    if not pred.any() or not ref.any():
        return 0.0
    fp = ndimage.generate_binary_structure(pred.ndim, 1)

    def directed(a, b):
        a_border = a ^ ndimage.binary_erosion(a, structure=fp, iterations=1)
        b_border = b ^ ndimage.binary_erosion(b, structure=fp, iterations=1)
        return ndimage.distance_transform_edt(~b_border)[a_border]

    return float(np.percentile(np.hstack((directed(pred, ref), directed(ref, pred))), 95))


def run_arm(args) -> dict:
    """One arm in this process: build, run warmup + repeats iterations, time them."""
    import torch
    from ignite.engine import Events

    from custom.engines import MeanTeacherTrainer
    from custom.handlers import ScheduleHandler, TeacherEMAHandler
    from custom.losses import DyCONLoss, FeCLLoss
    from custom.networks import UNet3D, make_teacher
    from custom.schedules import BetaSchedule

    if args.allocator == "retain":  # before anything large is allocated
        from custom.allocator import retain_freed_memory

        if not retain_freed_memory():
            raise RuntimeError("--allocator retain: glibc refused the malloc settings (or this is not glibc)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    net = UNet3D(in_channels=1, out_channels=2, features=tuple(args.features)).to(device)
    semi = args.arm != "supervised"
    teacher = make_teacher(net).to(device) if semi else None
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last_3d)
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last_3d)
    if args.arm == "mean_teacher":
        loss = DyCONLoss(eta=args.eta, uncl_weight=0.0, fecl_weight=0.0, mse_weight=1.0)
    else:
        loss = DyCONLoss(eta=args.eta, fecl=FeCLLoss(variant=args.fecl_variant))
    if args.arm == "released_loop":
        loss.uncl.forward = _released_uncl  # same value, through the B-fold temporary
    opt = torch.optim.SGD(net.parameters(), lr=args.learning_rate, momentum=0.9, weight_decay=1e-4)
    lab, unl = _batches(args, device)
    handlers = [ScheduleHandler("beta", BetaSchedule(args.beta_max, args.beta_min, args.max_iterations))]
    if semi:
        handlers.append(TeacherEMAHandler(teacher, decay=0.99))
    if args.arm == "released_loop":

        def train_batch_hd95(engine):  # every iteration, on the labeled training batch, as the released loop does
            pred = engine.state.output["pred"].argmax(1).cpu().numpy().astype(bool)
            ref = engine.state.output["label"][:, 0].cpu().numpy().astype(bool)
            engine.state.train_hd95 = [_medpy_hd95(p, r) for p, r in zip(pred, ref)]

        handlers.append(train_batch_hd95)
    n_iter = args.warmup + args.repeats
    amp_dtype = AMP[args.amp]
    trainer = MeanTeacherTrainer(
        device,
        1,
        _Repeat(lab),
        net,
        opt,
        loss,
        teacher=teacher,
        unlabeled_data_loader=_Repeat(unl) if semi else None,
        epoch_length=n_iter,
        seed=1337,
        amp=amp_dtype is not None,
        amp_dtype=amp_dtype or "float16",
        channels_last=args.channels_last,
        teacher_inference_mode=args.teacher_mode == "inference",
        compile=args.compile,
        train_handlers=[h for h in handlers if hasattr(h, "attach")],
    )
    for h in handlers:  # plain functions (the released loop's HD95) run after the handlers, inside the clock
        if not hasattr(h, "attach"):
            trainer.add_event_handler(Events.ITERATION_COMPLETED, h)
    cuda = device.type == "cuda"
    times: list[float] = []
    start = [0.0]

    def tic(_):
        if cuda:
            torch.cuda.synchronize(device)
        start[0] = time.perf_counter()

    def toc(engine):
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start[0])

    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, tic)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, toc)  # after the EMA / schedule handlers
    import resource

    usage = []  # CPU time (user, system) and page faults of this process over the timed iterations
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) if args.profile else None

    def start_timed_iterations(engine):  # the first iteration after the warmup
        if engine.state.iteration == args.warmup + 1:
            usage.append(resource.getrusage(resource.RUSAGE_SELF))
            if profiler is not None:
                profiler.__enter__()

    trainer.add_event_handler(Events.ITERATION_STARTED, start_timed_iterations)
    rss_before = current_rss_mib()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    trainer.run()
    usage.append(resource.getrusage(resource.RUSAGE_SELF))
    if profiler is not None:
        profiler.__exit__(None, None, None)
    user_s = (usage[-1].ru_utime - usage[0].ru_utime) / args.repeats
    sys_s = (usage[-1].ru_stime - usage[0].ru_stime) / args.repeats
    out = getattr(trainer.state, "output", {}) or {}
    result = {
        "arm": args.arm,
        **stats(times[args.warmup:]),
        "warmup_s": times[: args.warmup],
        "peak_rss_mib": peak_rss_mib(),
        "rss_before_run_mib": rss_before,
        "cpu_user_s_per_iteration": user_s,
        "cpu_system_s_per_iteration": sys_s,
        "minor_page_faults_per_iteration": (usage[-1].ru_minflt - usage[0].ru_minflt) / args.repeats,
        "skipped_steps": int(trainer.state.skipped_steps),
        "last_loss": {k: float(out[k]) for k in ("loss", "supervised", "uncl", "fecl", "mse") if k in out},
        "parameters": sum(p.numel() for p in net.parameters()),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        result["max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if profiler is not None:
        result["profile"] = phase_profile(profiler, sum(times[args.warmup:]), args.repeats)
    return result


def phase_profile(profiler, wall_s: float, iterations: int, top: int = 8) -> dict:
    """Time per phase of the iteration (the trainer's ``record_function`` ranges, ``custom.engines.PHASES`` and the
    EMA handler's) and, inside each phase, the operators with the most self time: seconds per iteration and
    fractions of the profiled wall time. ``other`` is the iteration time outside the phases (handlers, batch)."""
    from collections import defaultdict

    from custom.engines.mean_teacher import PHASES

    phases = (*PHASES, "dycon.teacher_ema")
    per_phase = defaultdict(float)
    per_op = defaultdict(lambda: defaultdict(float))
    events = profiler.events()
    for evt in events:
        if evt.name in phases:
            per_phase[evt.name] += evt.cpu_time_total
            continue
        parent = evt.cpu_parent
        while parent is not None and parent.name not in phases:
            parent = parent.cpu_parent
        per_op[parent.name if parent is not None else "other"][evt.name] += evt.self_cpu_time_total
    wall_us = wall_s * 1e6
    per_phase["other"] = max(0.0, wall_us - sum(per_phase.values()))
    out = {}
    for name in (*phases, "other"):
        if name not in per_phase:
            continue
        ops = sorted(per_op[name].items(), key=lambda kv: -kv[1])[:top]
        out[name.removeprefix("dycon.")] = {
            "s_per_iteration": per_phase[name] / 1e6 / iterations,
            "fraction": per_phase[name] / wall_us,
            "top_ops_s_per_iteration": {op: t / 1e6 / iterations for op, t in ops},
        }
    return {"iterations": iterations, "note": "profiled run: its timings include the profiler's overhead",
            "phases": out}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", choices=BUNDLES, default="la", help="bundle whose train.yaml gives the defaults")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="patch size (default: the bundle's patch_size)")
    p.add_argument("--labeled", type=int, default=None, help="labeled volumes per batch (default: the bundle's)")
    p.add_argument("--unlabeled", type=int, default=None, help="unlabeled volumes per batch (default: the bundle's)")
    p.add_argument("--features", type=int, nargs="+", default=None,
                   help="UNet3D channels per level (default: the bundle's network, 16 32 64 128 256)")
    p.add_argument("--fecl-variant", choices=("official", "paper"), default=None)
    p.add_argument("--amp", choices=tuple(AMP), default="off")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--allocator", choices=("default", "retain"), default="default",
                   help="glibc malloc as it is, or custom.allocator.retain_freed_memory() (no mmap / trim)")
    p.add_argument("--teacher-mode", choices=("inference", "no_grad"), default="inference",
                   help="teacher forward under torch.inference_mode (the trainer's default) or torch.no_grad")
    p.add_argument("--compile", action="store_true", help="torch.compile the student's and teacher's forwards")
    p.add_argument("--profile", action="store_true",
                   help="torch.profiler over the timed iterations: time per phase and its top operators")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--repeats", type=int, default=5, help="timed iterations per arm")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(DEFAULT_ARMS))
    p.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)  # internal: run one arm here
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    d = bundle_defaults(args.bundle)
    args.config = d["config"]
    args.patch = list(args.patch or d["patch_size"])
    args.labeled = args.labeled if args.labeled is not None else d["labeled_batch_size"]
    args.unlabeled = args.unlabeled if args.unlabeled is not None else d["unlabeled_batch_size"]
    args.features = list(args.features or d["features"] or (16, 32, 64, 128, 256))
    args.fecl_variant = args.fecl_variant or d["fecl_variant"]
    for k in ("eta", "beta_max", "beta_min", "learning_rate", "max_iterations"):
        setattr(args, k, d[k])
    if args.labeled < 1 or args.unlabeled < 1:
        p.error("--labeled and --unlabeled must be >= 1")
    return args


def _child_argv(args, arm):
    argv = ["--bundle", args.bundle, "--patch", *map(str, args.patch), "--labeled", str(args.labeled),
            "--unlabeled", str(args.unlabeled), "--features", *map(str, args.features),
            "--fecl-variant", args.fecl_variant, "--amp", args.amp, "--device", args.device,
            "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--threads", str(args.threads),
            "--teacher-mode", args.teacher_mode, "--allocator", args.allocator, "--arm", arm]
    flags = [("--channels-last", args.channels_last), ("--compile", args.compile), ("--profile", args.profile)]
    return argv + [flag for flag, on in flags if on]


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.arm is not None:
        res = run_arm(args)
        print(json.dumps(res))
        return res
    arms = {arm: run_child(Path(__file__), _child_argv(args, arm)) for arm in args.arms}
    med = {a: r["median_s"] for a, r in arms.items()}
    ratios = {}
    if "dycon" in med and "mean_teacher" in med:
        ratios["dycon_over_mean_teacher"] = med["dycon"] / med["mean_teacher"]
    if "dycon" in med and "supervised" in med:
        ratios["dycon_over_supervised"] = med["dycon"] / med["supervised"]
    if "mean_teacher" in med and "supervised" in med:
        ratios["mean_teacher_over_supervised"] = med["mean_teacher"] / med["supervised"]
    if "released_loop" in med and "dycon" in med:
        ratios["released_loop_over_dycon"] = med["released_loop"] / med["dycon"]
    result = {
        "benchmark": "train_step",
        "command": " ".join(["python", "benchmarks/train_step.py", *(sys.argv[1:] if argv is None else argv)]),
        "settings": {
            "bundle": args.bundle, "config": args.config, "patch": args.patch, "labeled": args.labeled,
            "unlabeled": args.unlabeled, "features": args.features, "fecl_variant": args.fecl_variant,
            "amp": args.amp, "allocator": args.allocator, "channels_last": args.channels_last, "teacher_mode": args.teacher_mode,
            "compile": args.compile, "profile": args.profile, "device": args.device, "repeats": args.repeats,
            "warmup": args.warmup, "threads": args.threads, "eta": args.eta, "loader": "excluded (pre-built batches)",
            "memory": "peak RSS of the arm's own process (includes ~imports); max_allocated on CUDA",
        },
        "machine": machine(),
        "arms": arms,
        "ratios_of_medians": ratios,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
