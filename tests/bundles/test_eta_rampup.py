"""``--eta_rampup N`` of every bundle's train.yaml: a sigmoid ramp of eta over N iterations (off by default)."""

from __future__ import annotations

import math

import pytest
from bundle_utils import Bundle, scripts_attr
from monai.bundle import ConfigParser


def _eta_handlers(bundle: Bundle, **overrides) -> list:
    parser = ConfigParser()
    parser.read_config(str(bundle.path(bundle.train_yaml)))
    parser.update({"dataset_dir": "/nonexistent", **overrides})
    handlers = []
    for i, h in enumerate(parser["train#handlers"]):
        if h.get("name") == "eta":
            handler = parser.get_parsed_content(f"train#handlers#{i}")
            if handler is not None:  # _disabled_ -> None
                handlers.append(handler)
    return handlers


@pytest.mark.parametrize("bundle", ["dycon_la", "dycon_brats19", "dycon_pancreas", "dycon_isles22"])
def test_eta_rampup(bundle: str):
    b = Bundle(bundle)
    with b.on_path():  # the configs' scripts.<module>.<name>
        assert _eta_handlers(b) == []  # constant eta (the released setting) by default
        (handler,) = _eta_handlers(b, eta_rampup=100, eta=0.5)
        schedule_handler = scripts_attr("handlers", "ScheduleHandler")
    assert isinstance(handler, schedule_handler) and handler.name == "eta"
    assert handler.schedule(0) == pytest.approx(0.5 * math.exp(-5.0))
    assert handler.schedule(100) == pytest.approx(0.5)
    assert 0.0 < handler.schedule(50) < 0.5
