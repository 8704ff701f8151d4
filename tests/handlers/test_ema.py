"""TeacherEMAHandler: alpha(t) = min(1 - 1/(t+1), decay), parameters averaged, buffers copied."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Engine, Events
from torch import nn

from custom.handlers import TeacherEMAHandler, unwrap
from custom.schedules import ema_alpha


def make_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():  # non-trivial buffers
        net[1].running_mean.normal_()
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].num_batches_tracked.fill_(seed + 3)
    return net


def perturb(net: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g))
        for b in net.buffers():
            if b.is_floating_point():
                b.add_(torch.rand(b.shape, generator=g))
            else:
                b.add_(1)


def params(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.named_parameters()}


def assert_buffers_equal(a: nn.Module, b: nn.Module) -> None:
    for (ka, va), (kb, vb) in zip(a.named_buffers(), b.named_buffers()):
        assert ka == kb and torch.equal(va, vb)


def test_first_update_copies_the_student():
    student, teacher = make_net(0), make_net(1)
    assert not torch.equal(student[0].weight, teacher[0].weight)
    alpha = TeacherEMAHandler(teacher).update(student, 0)
    assert alpha == 0.0
    for k, v in params(student).items():
        assert torch.equal(dict(teacher.named_parameters())[k], v)
    assert_buffers_equal(student, teacher)


def test_second_update_is_the_alpha_formula():
    student, teacher = make_net(0), make_net(1)
    ema = TeacherEMAHandler(teacher, decay=0.99)
    ema.update(student, 0)
    t1 = params(teacher)
    perturb(student, 5)
    alpha = ema.update(student, 1)
    assert alpha == 0.5
    s2 = params(student)
    for k, v in params(teacher).items():
        torch.testing.assert_close(v, 0.5 * t1[k] + 0.5 * s2[k], rtol=0, atol=1e-7)
    assert_buffers_equal(student, teacher)  # copied, not averaged
    assert teacher[1].num_batches_tracked.item() == student[1].num_batches_tracked.item()


def test_many_updates_match_by_hand_including_the_ceiling():
    student, teacher = make_net(0), make_net(1)
    ema = TeacherEMAHandler(teacher, decay=0.6)
    own = params(teacher)
    for step in range(6):
        perturb(student, 100 + step)
        alpha = ema.update(student, step)
        expected_alpha = min(1 - 1 / (step + 1), 0.6)
        assert alpha == pytest.approx(expected_alpha, rel=1e-12) and alpha == ema_alpha(step, 0.6)
        s = params(student)
        own = {k: expected_alpha * own[k] + (1 - expected_alpha) * s[k] for k in own}
        for k, v in params(teacher).items():
            torch.testing.assert_close(v, own[k], rtol=1e-6, atol=1e-6)
    assert alpha == 0.6


def test_student_untouched_and_teacher_has_no_grad():
    student, teacher = make_net(0), make_net(1)
    before = params(student)
    TeacherEMAHandler(teacher).update(student, 3)
    for k, v in params(student).items():
        assert torch.equal(v, before[k])
    assert all(p.grad is None for p in teacher.parameters())


def test_engine_handler_uses_iteration_and_engine_network():
    student, teacher = make_net(0), make_net(1)
    g = torch.Generator().manual_seed(0)
    own: dict[str, torch.Tensor] = {}
    seen_alpha = []

    def step(engine, batch):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))

    engine = Engine(step)
    engine.network = student
    TeacherEMAHandler(teacher, decay=0.99).attach(engine)

    @engine.on(Events.ITERATION_COMPLETED)
    def check(e):  # attached after the EMA handler: sees the updated teacher
        a = 1 - 1 / e.state.iteration if e.state.iteration > 1 else 0.0
        seen_alpha.append(e.state.ema_alpha)
        s = params(student)
        for k in s:
            own[k] = a * own[k] + (1 - a) * s[k] if k in own else s[k]
            torch.testing.assert_close(dict(teacher.named_parameters())[k].detach(), own[k], rtol=1e-6, atol=1e-7)

    engine.run(range(5), max_epochs=1)
    assert seen_alpha == pytest.approx([0.0, 0.5, 2 / 3, 0.75, 0.8], rel=1e-12)


def test_explicit_student_and_wrapped_modules():
    student, teacher = make_net(0), make_net(1)
    wrapped_student, wrapped_teacher = nn.DataParallel(student), nn.DataParallel(teacher)
    assert unwrap(wrapped_student) is student and unwrap(student) is student
    engine = Engine(lambda e, b: None)
    engine.network = make_net(7)  # ignored: the explicit student wins
    TeacherEMAHandler(wrapped_teacher, student=wrapped_student).attach(engine)
    engine.run([0], max_epochs=1)
    for k, v in params(student).items():
        assert torch.equal(dict(teacher.named_parameters())[k], v)


def test_mismatched_architectures_and_bad_decay():
    with pytest.raises(ValueError):
        TeacherEMAHandler(nn.Linear(3, 2)).update(nn.Sequential(nn.Linear(3, 2)), 0)
    for decay in (-0.1, 1.0):
        with pytest.raises(ValueError):
            TeacherEMAHandler(nn.Linear(3, 2), decay=decay)


def test_teacher_copy_is_deepcopy_safe():
    """A teacher made with copy.deepcopy and frozen (as in the bundles) is updated in place."""
    student = make_net(0)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    ids = [id(p) for p in teacher.parameters()]
    perturb(student, 1)
    TeacherEMAHandler(teacher).update(student, 1)
    assert [id(p) for p in teacher.parameters()] == ids
    assert all(not p.requires_grad for p in teacher.parameters())
