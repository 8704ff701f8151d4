"""Schedules of the DyCON training (beta, EMA alpha, FeCL cross threshold, sigmoid ramp-up) and the
ScheduleHandler that puts them on ``engine.state``.

(The ScheduleHandler tests live here and not in ``tests/handlers/test_schedules.py``: the test folders have no
``__init__.py``, so two test modules named ``test_schedules.py`` would collide at collection.)
"""

from __future__ import annotations

import math

import pytest
from ignite.engine import Engine, Events

from custom.handlers import ScheduleHandler
from custom.schedules import BetaSchedule, SigmoidRampUp, cross_threshold, ema_alpha, sigmoid_rampup

REL = 1e-9


# ------------------------------------------------------------------------------------------------ beta
@pytest.mark.parametrize("step, expected", [(0, 5.0), (50, 1.5811388300841898), (100, 0.5)])
def test_beta_golden(step, expected):
    assert BetaSchedule(beta_max=5.0, beta_min=0.5, total_steps=100)(step) == pytest.approx(expected, rel=REL)


def test_beta_formula_floor_and_monotone():
    sched = BetaSchedule(5.0, 0.5, 100)
    lam = math.log(10.0)
    for t in (1, 17, 33, 99):
        assert sched(t) == pytest.approx(5.0 * math.exp(-lam * t / 100), rel=REL)
    values = [sched(t) for t in range(0, 301)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert values[150] == 0.5 and values[300] == 0.5  # floor after T
    assert BetaSchedule(1.0, 0.5, 20000)(0) == 1.0  # the slides' beta_max = 1.0 example
    assert BetaSchedule(1.0, 0.5, 20000)(20000) == pytest.approx(0.5, rel=REL)


def test_beta_custom_decay_rate():
    sched = BetaSchedule(5.0, 0.5, 100, decay_rate=1.0)
    assert sched(50) == pytest.approx(5.0 * math.exp(-0.5), rel=REL)
    assert sched(100) == pytest.approx(5.0 * math.exp(-1.0), rel=REL)  # above the floor: lambda < ln 10
    assert BetaSchedule(5.0, 0.5, 100, decay_rate=10.0)(100) == 0.5


def test_beta_constant():
    sched = BetaSchedule(constant=0.8)
    assert {sched(t) for t in (0, 1, 100, 10**6)} == {0.8}
    # a constant beta does not validate the (unused) schedule parameters
    assert BetaSchedule(beta_max=0.0, beta_min=0.0, total_steps=0, constant=2.0)(5) == 2.0


@pytest.mark.parametrize("kwargs", [dict(beta_max=0.0), dict(beta_min=-1.0), dict(beta_max=0.5, beta_min=1.0),
                                    dict(total_steps=0)])
def test_beta_validation(kwargs):
    with pytest.raises(ValueError):
        BetaSchedule(**kwargs)


# ----------------------------------------------------------------------------------------------- alpha
def test_ema_alpha():
    assert ema_alpha(0) == 0.0
    assert ema_alpha(1) == 0.5
    assert ema_alpha(2) == pytest.approx(2 / 3, rel=REL)
    assert ema_alpha(98) == pytest.approx(0.98989898989899, rel=REL)
    assert ema_alpha(99) == pytest.approx(0.99, rel=REL)
    assert ema_alpha(100) == 0.99 and ema_alpha(10**6) == 0.99  # ceiling
    assert ema_alpha(1, decay=0.3) == 0.3 and ema_alpha(10, decay=0.999) == pytest.approx(10 / 11, rel=REL)


# ------------------------------------------------------------------------------------------ threshold
def test_cross_threshold():
    assert cross_threshold(0) == pytest.approx(0.3013475893998171, rel=REL)
    assert cross_threshold(0, 1500) == pytest.approx(0.3013475893998171, rel=REL)
    assert cross_threshold(750, 1500) == pytest.approx(0.357300959372038, rel=REL)
    assert cross_threshold(1500, 1500) == pytest.approx(0.5, rel=REL)
    assert cross_threshold(5000, 1500) == pytest.approx(0.5, rel=REL)
    assert cross_threshold(10, 0) == 0.5
    assert cross_threshold(50, 100) == pytest.approx(0.3 + 0.2 * math.exp(-1.25), rel=REL)


# ------------------------------------------------------------------------------------------- ramp-up
def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 100) == pytest.approx(math.exp(-5.0), rel=REL)
    assert sigmoid_rampup(50, 100) == pytest.approx(math.exp(-1.25), rel=REL)
    assert sigmoid_rampup(100, 100) == 1.0
    assert sigmoid_rampup(1000, 100) == 1.0
    assert sigmoid_rampup(-5, 100) == pytest.approx(math.exp(-5.0), rel=REL)
    assert sigmoid_rampup(7, 0) == 1.0
    values = [sigmoid_rampup(t, 40) for t in range(60)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_sigmoid_rampup_class():
    assert SigmoidRampUp(0.5, 100)(50) == pytest.approx(0.5 * math.exp(-1.25), rel=REL)
    assert SigmoidRampUp(0.5, 0)(0) == 0.5 and SigmoidRampUp()(123) == 0.5
    assert SigmoidRampUp(2.0, 10)(10) == 2.0


# ------------------------------------------------------------------------------------ ScheduleHandler
def test_schedule_handler_sets_state_from_zero_based_iteration():
    seen = []
    engine = Engine(lambda e, b: seen.append((e.state.iteration, e.state.beta, e.state.eta)))
    ScheduleHandler("beta", BetaSchedule(5.0, 0.5, 100)).attach(engine)
    ScheduleHandler("eta", SigmoidRampUp(0.5, 4)).attach(engine)
    engine.run(range(6), max_epochs=1)
    assert [it for it, _, _ in seen] == [1, 2, 3, 4, 5, 6]
    for it, beta, eta in seen:
        assert isinstance(beta, float) and isinstance(eta, float)
        assert beta == BetaSchedule(5.0, 0.5, 100)(it - 1)
        assert eta == pytest.approx(0.5 * sigmoid_rampup(it - 1, 4), rel=REL)
    assert seen[0][1] == 5.0  # the first iteration uses t = 0


def test_schedule_handler_continues_after_resume():
    """The value depends on the iteration only: an engine resumed at iteration 50 sets beta(50) first."""
    seen = []
    engine = Engine(lambda e, b: seen.append(e.state.beta))
    ScheduleHandler("beta", BetaSchedule(5.0, 0.5, 100)).attach(engine)

    @engine.on(Events.STARTED)
    def _resume(e):
        e.state.iteration = 50
        e.state.epoch = 5

    engine.run(range(10), max_epochs=6)
    assert len(seen) == 10
    assert seen[0] == pytest.approx(1.5811388300841898, rel=REL)


def test_schedule_handler_name_validation():
    with pytest.raises(ValueError):
        ScheduleHandler("not a name", lambda t: 0.0)
