"""custom.handlers.checkpoint: trainer state in checkpoints without config reference cycles."""

import os
import time

import pytest
import torch
from ignite.engine import Engine, Events

from custom.handlers import TrainingCheckpointLoader, TrainingCheckpointSaver, latest_checkpoint, loss_parts


def _engine(max_epochs=3):
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = max_epochs
    return engine


def test_saver_adds_the_engine_and_loader_restores_it(tmp_path):
    net = torch.nn.Linear(2, 2)
    engine = _engine()
    TrainingCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": net}, save_interval=1, n_saved=1).attach(engine)
    engine.run([0, 1], max_epochs=2)
    saved = latest_checkpoint(tmp_path)
    assert saved is not None and saved.endswith("epoch=2.pt")
    content = torch.load(saved, weights_only=True)
    assert content["trainer"]["iteration"] == 4 and "net" in content

    fresh_net = torch.nn.Linear(2, 2)
    resumed = _engine()
    TrainingCheckpointLoader(load_path=str(tmp_path), load_dict={"net": fresh_net}).attach(resumed)
    seen = []
    resumed.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    resumed.run([0, 1], max_epochs=3)
    assert seen == [5, 6]  # continued after iteration 4
    assert torch.equal(fresh_net.weight, net.weight)


def test_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        TrainingCheckpointLoader(load_path=str(tmp_path), load_dict={})
    with pytest.raises(FileNotFoundError, match="not found"):
        TrainingCheckpointLoader(load_path=str(tmp_path / "x.pt"), load_dict={})


def test_latest_checkpoint_by_mtime(tmp_path):
    assert latest_checkpoint(tmp_path / "missing") is None
    (tmp_path / "a.pt").write_bytes(b"1")
    time.sleep(0.01)
    (tmp_path / "b.pt").write_bytes(b"2")
    os.utime(tmp_path / "a.pt", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert latest_checkpoint(tmp_path).endswith("a.pt")


def test_loss_parts():
    out = {"loss": torch.tensor(1.5), "uncl": torch.tensor(0.25), "image": torch.zeros(1)}
    assert loss_parts(out) == {"loss": 1.5, "uncl": 0.25}
    assert loss_parts([out]) == {"loss": 1.5, "uncl": 0.25}


def test_saver_writes_atomically(tmp_path):
    saver = TrainingCheckpointSaver(save_dir=str(tmp_path), save_dict={"net": torch.nn.Linear(2, 2)}, save_interval=1,
                                    save_final=True, final_filename="final.pt")
    assert saver._interval_checkpoint.save_handler._atomic
    assert saver._final_checkpoint.save_handler._atomic
