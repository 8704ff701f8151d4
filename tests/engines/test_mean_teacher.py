"""MeanTeacherTrainer on a tiny synthetic 3D set (16^3 spheres in noise, 2 labeled + 2 unlabeled per batch).

Every test runs a few iterations of a small UNet3D on the CPU. The intra-op thread pool is pinned to one thread
for this module: on a shared CPU, oversubscribed OpenMP threads make these small convolutions 10-30x slower.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.data import DataLoader, Dataset
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader, CheckpointSaver
from torch import nn

from custom.engines import MeanTeacherTrainer
from custom.handlers import ScheduleHandler, TeacherEMAHandler
from custom.losses import DyCONLoss, FeCLLoss
from custom.networks import UNet3D
from custom.samplers import InfiniteSeededSampler, SeededDataset
from custom.schedules import BetaSchedule, ema_alpha

SIZE = 16
PARTS = ("loss", "supervised", "uncl", "fecl", "mse", "beta", "eta")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def sphere(seed: int, labeled: bool = True) -> dict:
    r = np.random.default_rng(seed)
    c = r.uniform(0.3 * SIZE, 0.7 * SIZE, 3)
    rad = r.uniform(0.15 * SIZE, 0.28 * SIZE)
    g = np.stack(np.meshgrid(*[np.arange(SIZE)] * 3, indexing="ij"), 0)
    m = ((g - c[:, None, None, None]) ** 2).sum(0) < rad**2
    img = (m * 1.0 + r.normal(0, 0.5, m.shape)).astype(np.float32)[None]
    d = {"image": torch.tensor(img)}
    if labeled:
        d["label"] = torch.tensor(m[None].astype(np.float32))
    return d


LABELED = [sphere(i) for i in range(4)]
UNLABELED = [sphere(100 + i, labeled=False) for i in range(4)]


def make_net(seed: int = 0) -> UNet3D:
    torch.manual_seed(seed)
    return UNet3D(features=(8, 16, 32, 64), embed_dim=16, proj_hidden=32)


def make_teacher(net: nn.Module) -> nn.Module:
    teacher = copy.deepcopy(net)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def loader(data: list[dict], seed: int) -> DataLoader:
    return DataLoader(SeededDataset(Dataset(data)), batch_size=2, sampler=InfiniteSeededSampler(len(data), seed=seed))


@dataclass
class Run:
    trainer: MeanTeacherTrainer
    net: nn.Module
    teacher: nn.Module | None
    optimizer: torch.optim.Optimizer
    records: list[dict] = field(default_factory=list)

    def save_dict(self) -> dict:
        return {"network": self.net, "teacher": self.teacher, "optimizer": self.optimizer, "trainer": self.trainer}


def build(
    *,
    max_epochs: int = 1,
    epoch_length: int = 4,
    semi: bool = True,
    net: nn.Module | None = None,
    net_seed: int = 0,
    loss: DyCONLoss | None = None,
    unlabeled: list[dict] | None = None,
    teacher: bool = True,
    ema: bool = True,
    beta: bool = True,
    seed: int | None = 1337,
    lr: float = 0.01,
    total_steps: int | None = None,
    **trainer_kwargs,
) -> Run:
    net = make_net(net_seed) if net is None else net
    tnet = make_teacher(net) if teacher else None
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    handlers: list = []
    if ema and tnet is not None:
        handlers.append(TeacherEMAHandler(tnet))
    if beta:
        handlers.append(ScheduleHandler("beta", BetaSchedule(5.0, 0.5, total_steps or max_epochs * epoch_length)))
    trainer = MeanTeacherTrainer(
        device="cpu",
        max_epochs=max_epochs,
        train_data_loader=loader(LABELED, seed=1),
        network=net,
        optimizer=opt,
        loss_function=DyCONLoss(fecl=FeCLLoss("paper", top_k=4)) if loss is None else loss,
        teacher=tnet,
        unlabeled_data_loader=loader(UNLABELED if unlabeled is None else unlabeled, seed=2) if semi else None,
        epoch_length=epoch_length,
        seed=seed,
        train_handlers=handlers,
        **trainer_kwargs,
    )
    run = Run(trainer, net, tnet, opt)

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine):
        out = engine.state.output
        run.records.append({"iteration": engine.state.iteration, **{k: float(out[k]) for k in PARTS}})

    return run


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------------- (a)
def test_training_lowers_the_supervised_loss():
    run = build(epoch_length=30)
    run.trainer.run()
    sup = [r["supervised"] for r in run.records]
    assert len(sup) == 30 and all(math.isfinite(v) for v in sup)
    first, last = float(np.mean(sup[:5])), float(np.mean(sup[-5:]))
    print(f"supervised loss: first 5 {first:.3f}, last 5 {last:.3f}")
    assert last < 0.8 * first
    # every part of the objective was active
    assert all(r["uncl"] > 0 and r["fecl"] > 0 for r in run.records)
    assert all(r["loss"] == pytest.approx(r["supervised"] + 0.5 * (r["uncl"] + r["fecl"]), rel=1e-5) for r in run.records)
    assert run.trainer.state.skipped_steps == 0
    # beta followed the schedule (t = iteration - 1)
    assert [r["beta"] for r in run.records] == pytest.approx([BetaSchedule(5.0, 0.5, 30)(t) for t in range(30)])


# ---------------------------------------------------------------------------------------------------- (b)
def test_teacher_is_the_ema_of_the_student():
    run = build(epoch_length=5)
    student, teacher = run.net, run.teacher
    own = {k: v.detach().clone() for k, v in teacher.named_parameters()}
    checked = []

    @run.trainer.on(Events.ITERATION_COMPLETED)  # attached after the EMA handler (a train handler)
    def _check(engine):
        t = engine.state.iteration - 1
        alpha = ema_alpha(t, 0.99)
        assert engine.state.ema_alpha == alpha
        s_params = dict(student.named_parameters())
        t_params = dict(teacher.named_parameters())
        for k in own:
            own[k] = own[k] * alpha + s_params[k].detach() * (1.0 - alpha)
            torch.testing.assert_close(t_params[k], own[k], rtol=1e-6, atol=1e-7)
            if t == 0:
                assert torch.equal(t_params[k], s_params[k])  # alpha = 0: teacher := student
        for (kb, sb), (_, tb) in zip(student.named_buffers(), teacher.named_buffers()):
            assert torch.equal(sb, tb), kb  # buffers copied
        checked.append(t)

    run.trainer.run()
    assert checked == [0, 1, 2, 3, 4]
    # after more than one step the teacher lags behind the student
    assert not torch.equal(student.final.weight, teacher.final.weight)
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------------- (c)
def test_resume_from_checkpoint_is_exact(tmp_path: Path):
    # uninterrupted: 2 epochs of 4 iterations, checkpointing every epoch
    full = build(max_epochs=2, epoch_length=4)
    CheckpointSaver(str(tmp_path / "full"), full.save_dict(), save_interval=1, epoch_level=True).attach(full.trainer)
    full.trainer.run()
    assert [r["iteration"] for r in full.records] == list(range(1, 9))

    # interrupted: 1 epoch, saved ...
    first = build(max_epochs=1, epoch_length=4, total_steps=8)  # the same beta schedule as the full run
    CheckpointSaver(str(tmp_path / "part"), first.save_dict(), save_interval=1, epoch_level=True).attach(first.trainer)
    first.trainer.run()
    for a, b in zip(first.records, full.records[:4]):
        assert a == b
    ckpts = sorted((tmp_path / "part").glob("*.pt"))
    assert len(ckpts) == 1, ckpts

    # ... and resumed by a fresh process-like set-up: new networks (other init), optimizer, loaders, trainer
    resumed = build(max_epochs=2, epoch_length=4, net_seed=123)
    assert not torch.equal(resumed.net.final.weight, full.net.final.weight)
    CheckpointLoader(load_path=str(ckpts[0]), load_dict=resumed.save_dict(), map_location="cpu").attach(resumed.trainer)
    resumed.trainer.run()

    assert [r["iteration"] for r in resumed.records] == [5, 6, 7, 8]
    for a, b in zip(resumed.records, full.records[4:]):
        assert a == b  # bit-identical losses and parts
    for name, a, b in (("student", resumed.net, full.net), ("teacher", resumed.teacher, full.teacher)):
        sa, sb = state(a), state(b)
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}"
    opt_a, opt_b = resumed.optimizer.state_dict()["state"], full.optimizer.state_dict()["state"]
    for k in opt_b:
        assert torch.equal(opt_a[k]["momentum_buffer"], opt_b[k]["momentum_buffer"])
    assert resumed.trainer.state.iteration == 8 and resumed.trainer.state.epoch == 2
    assert resumed.trainer.state.skipped_steps == full.trainer.state.skipped_steps == 0


# ---------------------------------------------------------------------------------------------------- (d)
def test_supervised_only_without_unlabeled_loader():
    run = build(semi=False, ema=False, epoch_length=3)
    calls = {"teacher": 0, "head": 0}
    run.teacher.register_forward_pre_hook(lambda m, a: calls.__setitem__("teacher", calls["teacher"] + 1))
    run.net.head.register_forward_pre_hook(lambda m, a: calls.__setitem__("head", calls["head"] + 1))
    teacher_before = state(run.teacher)
    run.trainer.run()
    assert not run.trainer.semi_supervised
    assert calls == {"teacher": 0, "head": 0}  # no teacher forward, no embeddings
    assert len(run.records) == 3
    for r in run.records:
        assert r["uncl"] == 0.0 and r["fecl"] == 0.0 and r["mse"] == 0.0
        assert r["loss"] == r["supervised"] > 0
    for k, v in state(run.teacher).items():
        assert torch.equal(v, teacher_before[k])
    # no teacher at all is fine too, and no beta schedule is needed
    build(semi=False, teacher=False, beta=False, epoch_length=1).trainer.run()


# ---------------------------------------------------------------------------------------------------- (e)
def test_unlabeled_batch_with_label_is_refused():
    run = build(unlabeled=LABELED, epoch_length=2)
    before = state(run.net)
    with pytest.raises(ValueError, match="label"):
        run.trainer.run()
    for k, v in state(run.net).items():
        assert torch.equal(v, before[k])  # refused before any step


# ---------------------------------------------------------------------------------------------------- (f)
def test_nan_loss_skips_the_step():
    run = build(epoch_length=5)
    bad_iteration = 3
    snapshots: dict[int, dict] = {}

    @run.trainer.on(Events.ITERATION_STARTED)
    def _inject(engine):
        snapshots[engine.state.iteration] = {
            "params": {k: p.detach().clone() for k, p in run.net.named_parameters()},
            "momentum": {k: v["momentum_buffer"].clone() for k, v in run.optimizer.state_dict()["state"].items()},
        }
        if engine.state.iteration == bad_iteration:
            engine.state.batch["image"][0, 0, 3, 3, 3] = float("nan")

    after: dict[int, dict] = {}

    @run.trainer.on(IterationEvents.MODEL_COMPLETED)
    def _after_step(engine):
        after[engine.state.iteration] = {k: p.detach().clone() for k, p in run.net.named_parameters()}
        if engine.state.iteration == bad_iteration:
            assert all(p.grad is None for p in run.net.parameters())  # the NaN gradients are dropped

    run.trainer.run()
    losses = [r["loss"] for r in run.records]
    assert math.isnan(losses[bad_iteration - 1])
    assert all(math.isfinite(v) for i, v in enumerate(losses) if i != bad_iteration - 1)
    assert run.trainer.state.skipped_steps == 1
    for it in range(1, 6):
        changed = any(not torch.equal(after[it][k], snapshots[it]["params"][k]) for k in after[it])
        assert changed == (it != bad_iteration), it
    momentum_next = snapshots[bad_iteration + 1]["momentum"]
    for k, v in snapshots[bad_iteration]["momentum"].items():
        assert torch.equal(momentum_next[k], v)  # no optimizer step at all
    assert all(torch.isfinite(p).all() for p in run.net.parameters())
    assert all(torch.isfinite(p).all() for p in run.teacher.parameters())
    assert "skipped_steps" in run.trainer.state_dict()


def test_skipped_step_runs_no_ema_and_does_not_advance_the_schedules():
    # released loop: a non-finite step is skipped whole: no teacher update, beta / eta / FeCL's step stay where they were
    from custom.handlers import ScheduleHandler

    run = build(epoch_length=5)
    ScheduleHandler("step_seen", lambda step: step).attach(run.trainer)
    bad_iteration = 3
    teacher_before: dict[int, dict] = {}
    steps: dict[int, float] = {}
    alphas: dict[int, float] = {}

    @run.trainer.on(Events.ITERATION_STARTED)
    def _inject(engine):
        teacher_before[engine.state.iteration] = state(run.teacher)
        steps[engine.state.iteration] = engine.state.step_seen
        if engine.state.iteration == bad_iteration:
            engine.state.batch["image"][0, 0, 3, 3, 3] = float("nan")

    @run.trainer.on(Events.ITERATION_COMPLETED)
    def _alpha(engine):
        alphas[engine.state.iteration] = engine.state.ema_alpha

    run.trainer.run()
    assert run.trainer.state.skipped_steps == 1
    assert steps == {1: 0, 2: 1, 3: 2, 4: 2, 5: 3}  # the iteration after the skip repeats step 2
    # the teacher after the skipped iteration is the one before it; every other iteration changes it
    for it in range(1, 5):
        nxt = teacher_before[it + 1]
        same = all(torch.equal(nxt[k], teacher_before[it][k]) for k in nxt)
        assert same == (it == bad_iteration), it
    # alpha follows the steps taken: iteration 4 uses alpha(2), the value iteration 3 would have used
    assert alphas[4] == ema_alpha(2, 0.99) and alphas[5] == ema_alpha(3, 0.99) and alphas[2] == ema_alpha(1, 0.99)
    betas = [r["beta"] for r in run.records]
    schedule = BetaSchedule(5.0, 0.5, 5)
    assert betas == pytest.approx([schedule(0), schedule(1), schedule(2), schedule(2), schedule(3)], rel=1e-6)


def test_nan_loss_leaves_buffers_finite():
    run = build(epoch_length=2)

    @run.trainer.on(Events.ITERATION_STARTED)
    def _inject(engine):
        if engine.state.iteration == 1:
            engine.state.batch["image"][0, 0, 3, 3, 3] = float("nan")

    run.trainer.run()
    assert run.trainer.state.skipped_steps == 1
    for name, buf in run.net.named_buffers():
        assert torch.isfinite(buf.float()).all(), name


# ---------------------------------------------------------------------------------------------------- (g)
def test_same_seed_same_losses():
    a, b = build(epoch_length=3), build(epoch_length=3)
    a.trainer.run()
    b.trainer.run()
    assert a.records == b.records
    for k, v in state(a.net).items():
        assert torch.equal(v, state(b.net)[k])
    # the per-iteration seed matters (dropout, teacher noise)
    c = build(epoch_length=3, seed=7)
    c.trainer.run()
    assert c.records[0]["loss"] != a.records[0]["loss"]


def test_teacher_inference_mode_matches_no_grad():
    """The teacher under inference_mode (default) gives exactly what it gives under no_grad, and its running
    statistics (projection-head BatchNorm) still follow the EMA handler."""
    a, b = build(epoch_length=3), build(epoch_length=3, teacher_inference_mode=False)
    assert a.trainer.teacher_inference_mode and not b.trainer.teacher_inference_mode
    a.trainer.run()
    b.trainer.run()
    assert a.records == b.records
    for k, v in state(a.teacher).items():
        assert torch.equal(v, state(b.teacher)[k]), k


def test_compiled_forward_passes_match_eager():
    """compile (dynamo tracing; the 'eager' backend keeps the test fast) runs the same iterations, for the student
    with embeddings and the teacher, and leaves the networks themselves uncompiled."""
    a, b = build(epoch_length=2), build(epoch_length=2, compile="eager")
    a.trainer.run()
    b.trainer.run()
    assert len(b.trainer._compiled) == 2  # student and teacher, with embeddings
    assert type(b.net) is UNet3D and "forward_with_embeddings" not in vars(b.net)
    for ra, rb in zip(a.records, b.records):
        for k in PARTS:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), k


# ---------------------------------------------------------------------------------------------------- (h)
def plain_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.1), nn.Conv3d(4, 2, 1))


def test_plain_network_needs_fecl_off():
    run = build(net=plain_net(), epoch_length=2)
    with pytest.raises(TypeError, match="forward_with_embeddings"):
        run.trainer.run()

    run = build(net=plain_net(), epoch_length=3, loss=DyCONLoss(fecl_weight=0.0))
    before = state(run.net)
    run.trainer.run()
    assert len(run.records) == 3
    for r in run.records:
        assert math.isfinite(r["loss"]) and r["fecl"] == 0.0 and r["uncl"] > 0
    assert any(not torch.equal(v, before[k]) for k, v in state(run.net).items())


# ---------------------------------------------------------------------------------------------------- (i)
def test_amp_bfloat16_on_cpu():
    run = build(epoch_length=1, amp=True, amp_dtype="bfloat16")
    before = state(run.net)
    run.trainer.run()
    r = run.records[0]
    assert all(math.isfinite(r[k]) for k in ("loss", "supervised", "uncl", "fecl"))
    assert run.trainer.scaler is None  # no GradScaler for bfloat16 / CPU
    assert run.trainer.state.skipped_steps == 0
    assert any(not torch.equal(v, before[k]) for k, v in state(run.net).items())


# ------------------------------------------------------------------------------------------------- misc
def test_output_and_argument_checks():
    run = build(epoch_length=1)
    run.trainer.run()
    out = run.trainer.state.output
    assert out["pred"].shape == (2, 2, SIZE, SIZE, SIZE) and not out["pred"].requires_grad
    assert out["label"].shape == (2, 1, SIZE, SIZE, SIZE)
    assert float(out["beta"]) == 5.0 and float(out["eta"]) == 0.5

    with pytest.raises(RuntimeError, match="beta"):
        build(beta=False, epoch_length=1).trainer.run()
    with pytest.raises(ValueError, match="teacher"):
        build(teacher=False, epoch_length=1)
    with pytest.raises(TypeError):
        MeanTeacherTrainer("cpu", 1, loader(LABELED, 1), make_net(), torch.optim.SGD(make_net().parameters(), 0.1),
                           nn.MSELoss(), epoch_length=1)
    with pytest.raises(ValueError):
        build(epoch_length=1, amp_dtype="float64")


def test_amp_auto_follows_the_device():
    from custom.precision import native_bf16

    trainer = build(epoch_length=1, amp="auto", amp_dtype="auto").trainer
    assert trainer.amp is native_bf16("cpu")
    assert trainer.amp_dtype == (torch.bfloat16 if native_bf16("cpu") else torch.float16)
    forced = build(epoch_length=1, amp="false", amp_dtype="auto").trainer  # the command line's fp32 flag
    assert forced.amp is False


def test_channels_last_converts_both_networks_and_trains():
    from custom.precision import native_bf16

    run = build(epoch_length=2, amp=True, amp_dtype="bfloat16", channels_last=True)
    cl = torch.channels_last_3d
    conv_weights = [p for p in run.net.parameters() if p.dim() == 5 and p.shape[1] > 1]
    assert conv_weights and all(p.is_contiguous(memory_format=cl) for p in conv_weights)
    assert all(p.is_contiguous(memory_format=cl) for p in run.trainer.teacher.parameters() if p.dim() == 5)
    params_before = [id(p) for p in run.net.parameters()]
    run.trainer.run()
    assert [id(p) for p in run.net.parameters()] == params_before  # converted in place: the optimizer's own
    assert all(math.isfinite(r["loss"]) for r in run.records) and run.trainer.state.skipped_steps == 0
    auto = build(epoch_length=1, amp="auto", amp_dtype="auto", channels_last="auto").trainer
    assert auto.channels_last is native_bf16("cpu")  # auto: with bf16 autocast on the CPU only
    assert build(epoch_length=1, amp=False, channels_last="auto").trainer.channels_last is False
