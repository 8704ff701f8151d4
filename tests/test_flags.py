"""custom.flags.as_bool and the bundles' boolean options given as command-line strings.

``python -m monai.bundle run --keep_largest_component false`` passes the string "false" (python-fire reads only
True / False as booleans); every boolean option must still mean what it says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from custom.engines import MeanTeacherTrainer
from custom.flags import as_bool
from custom.losses import DyCONLoss, FeCLLoss

sys.path.insert(0, str(Path(__file__).resolve().parent / "bundles"))  # as pytest does for tests/bundles/test_*.py
from bundle_utils import Bundle  # noqa: E402

BUNDLES = ["dycon_la", "dycon_brats19", "dycon_pancreas", "dycon_isles22"]


@pytest.mark.parametrize("value", [True, 1, "true", "True", "TRUE", "yes", "on", "1", " true "])
def test_true(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, "false", "False", "no", "off", "0", ""])
def test_false(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, None, [True]])
def test_refused(value):
    with pytest.raises(ValueError, match="amp must be true or false"):
        as_bool(value, "amp")


def test_components_read_strings():
    loss = FeCLLoss(use_hard_negatives="false", use_entropy="False")
    assert loss.use_hard_negatives is False and loss.use_entropy is False
    import torch

    net = torch.nn.Conv3d(1, 2, 1)
    trainer = MeanTeacherTrainer("cpu", 1, [], net, torch.optim.SGD(net.parameters(), 0.1), DyCONLoss(),
                                 amp="false", compile="false", teacher_inference_mode="false", channels_last="false")
    assert trainer.amp is False and trainer.compile is False
    assert trainer.teacher_inference_mode is False and trainer.channels_last is False
    assert MeanTeacherTrainer("cpu", 1, [], net, torch.optim.SGD(net.parameters(), 0.1), DyCONLoss(),
                              compile="eager").compile == "eager"


def _parser(bundle: str, *configs: str, **overrides) -> ConfigParser:
    b = Bundle(bundle)
    parser = ConfigParser()
    parser.read_config([str(b.path(f"configs/{c}")) for c in configs])
    parser.update({"dataset_dir": "/nonexistent", "bundle_root": str(b.root), **overrides})
    return parser


def _disabled(parser: ConfigParser, section: str, target: str) -> list[bool]:
    """For every item of the list ``section`` whose _target_ contains ``target``: is it disabled?"""
    out = []
    for i, item in enumerate(parser[section]):
        if isinstance(item, dict) and target in str(item.get("_target_", "")):
            out.append(parser.get_parsed_content(f"{section}#{i}#_disabled_", instantiate=False) is True
                       if "_disabled_" in item else False)
    return out


@pytest.fixture
def on_path(bundle: str):
    """The configs' scripts.<module>.<name>: the bundle folder on sys.path while the test parses them."""
    with Bundle(bundle).on_path():
        yield


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_flags_as_strings(bundle: str, on_path):
    # --resume false / true
    assert _disabled(_parser(bundle, "train.yaml", resume="false"), "train#handlers", "TrainingCheckpointLoader") == [True]
    assert _disabled(_parser(bundle, "train.yaml", resume="true"), "train#handlers", "TrainingCheckpointLoader") == [False]
    # --keep_largest_component false (evaluation and inference)
    ev = _parser(bundle, "train.yaml", "evaluate.yaml", keep_largest_component="false")
    assert _disabled(ev, "validate#postprocessing#transforms", "KeepLargestConnectedComponent") == [True]
    inf = _parser(bundle, "inference.yaml", keep_largest_component="false", save_probabilities="false")
    assert _disabled(inf, "postprocessing#transforms", "KeepLargestConnectedComponent") == [True]
    inf = _parser(bundle, "inference.yaml", keep_largest_component="true", save_probabilities="true")
    assert _disabled(inf, "postprocessing#transforms", "KeepLargestConnectedComponent") == [False]
    # --amp false reaches the evaluators as False
    for parser, key in ((_parser(bundle, "train.yaml", amp="false"), "validate#evaluator#amp"),
                        (_parser(bundle, "inference.yaml", amp="false"), "evaluator#amp")):
        assert parser.get_parsed_content(key) is False
