"""A real MONAI Label 0.8.5 server with the DyCON LA bundle (``custom.monailabel``), driven over HTTP.

The app is MONAI Label's own ``monaibundle`` sample app (copied from the installed wheel) set up by
``custom.monailabel.install_into_app``: ``bundles/dycon_la`` in its ``model/`` folder with a tiny network, 32^3
patches and 2 iterations per epoch, random weights as ``models/model.pt``. The studies folder holds 3 labeled NIfTI
studies (labels in ``labels/final``) and 2 unlabeled ones, all in a non-RAS, anisotropic geometry.

``monailabel start_server`` (``python -m monailabel.main``) runs on 127.0.0.1 in its own process group with
``zoo_source github`` (the local bundle is used, nothing is fetched), ``sam2 false`` and an unreachable HTTP(S)
proxy, so any outbound request would fail; the group (the server and its training subprocess) is always killed at
teardown. Over HTTP: inference on a study (shape and affine of the returned label = the study's), a 2-epoch DyCON
training that must finish and have used the unlabeled studies (its datalist and log), inference with the trained
model. Without a server: supervised training when the datastore holds no unlabeled study (MONAI Label's own
``monailabel.interfaces.utils.app`` runner), and the set-up helper's checks.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip(
    "monailabel", reason="monailabel is not installed: bash scripts/run.sh setup (the 'monailabel' extra + monailabel)"
)

import nibabel as nib  # noqa: E402
import torch  # noqa: E402

from custom.data.nifti import write_nifti  # noqa: E402
from custom.monailabel import install_into_app, is_installed  # noqa: E402
from custom.monailabel.train_task import DATALIST_NAME  # noqa: E402
from custom.networks import UNet3D  # noqa: E402

MODEL = "dycon_la"
SMALL_NET = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
TINY_TRAIN = {"patch_size": [32, 32, 32], "val_interval": 2, "labeled_batch_size": 1, "unlabeled_batch_size": 1,
              "num_workers": 0}  # fmt: skip
TINY_INFER = {"patch_size": [32, 32, 32], "num_workers": 0, "sw_batch_size": 1}
SHAPE = (40, 36, 34)
AFFINE = np.array([[-0.8, 0, 0, 10.0], [0, -0.9, 0, -5.0], [0, 0, 1.2, 3.0], [0, 0, 0, 1]])  # LPS-like, anisotropic
LABELED = ("case0", "case1", "case2")
UNLABELED = ("case3", "case4")
START_TIMEOUT = 120
TRAIN_TIMEOUT = 240


def _env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PYTHONUNBUFFERED": "1",
        "MONAI_LABEL_SESSION_PATH": str(tmp / "sessions"),
        # nothing may leave the machine: any outbound HTTP(S) request goes to a closed local port and fails
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }


def _write_studies(studies: Path, names_labeled: tuple[str, ...], names_unlabeled: tuple[str, ...]) -> None:
    """Noisy volumes with a bright sphere (the label) in the module's geometry; labels of the labeled ones only."""
    (studies / "labels" / "final").mkdir(parents=True)
    rng = np.random.default_rng(0)
    grid = np.indices(SHAPE)
    for name in names_labeled + names_unlabeled:
        centre = np.array(SHAPE) / 2 + rng.integers(-3, 4, 3)
        label = (((grid - centre[:, None, None, None]) ** 2).sum(0) < 8**2).astype(np.uint8)
        image = (rng.normal(0, 1, SHAPE) + 2 * label).astype(np.float32)
        write_nifti(image, studies / f"{name}.nii.gz", AFFINE, np.float32)
        if name in names_labeled:
            write_nifti(label, studies / "labels" / "final" / f"{name}.nii.gz", AFFINE, np.uint8)


def _make_app(root: Path) -> Path:
    """The sample app + the LA bundle (tiny settings, random weights) in ``root/app``."""
    weights = root / "random_model.pt"
    torch.manual_seed(0)
    torch.save(UNet3D(in_channels=1, out_channels=2, **SMALL_NET).state_dict(), weights)
    app = install_into_app(root / "app", [MODEL], model=weights)
    bundle = app / "model" / MODEL
    for name, tiny in (("train.yaml", TINY_TRAIN), ("inference.yaml", TINY_INFER)):
        path = bundle / "configs" / name
        config = yaml.safe_load(path.read_text())
        config.update(tiny)
        config["network_def"].update(SMALL_NET)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return app


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 6000) -> str:
    return path.read_text(errors="replace")[-n:] if path.is_file() else "<no log>"


@dataclass
class Server:
    url: str
    app: Path
    studies: Path
    log: Path
    proc: subprocess.Popen

    @property
    def bundle(self) -> Path:
        return self.app / "model" / MODEL

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> bytes:
        data = json.dumps(body).encode() if body is not None else b""
        headers = {"Content-Type": "application/json"} if body is not None else {}
        req = urllib.request.Request(self.url + path, data=data if method == "POST" else None, headers=headers,
                                     method=method)  # fmt: skip
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # 127.0.0.1 directly
        try:
            with opener.open(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")
            pytest.fail(f"{method} {path}: HTTP {err.code}: {detail}\n--- server log tail ---\n{_tail(self.log)}")

    def json(self, method: str, path: str, body: dict | None = None, timeout: float = 120) -> dict:
        return json.loads(self.request(method, path, body, timeout))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (server + training subprocess), SIGKILL after 15 s."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (a training subprocess), if any
    except ProcessLookupError:
        pass
    proc.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("monailabel")
    app = _make_app(root)
    studies = root / "studies"
    _write_studies(studies, LABELED, UNLABELED)
    port = _free_port()
    log = root / "server.log"
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies),
        "--conf", "models", MODEL, "--conf", "zoo_source", "github", "--conf", "sam2", "false",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=_env(root), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    srv = Server(f"http://127.0.0.1:{port}", app, studies, log, proc)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the MONAI Label server exited with {proc.returncode}:\n{_tail(log)}")
            try:
                with opener.open(srv.url + "/info/", timeout=5) as resp:
                    info = json.loads(resp.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    pytest.fail(f"the MONAI Label server did not answer /info/ within {START_TIMEOUT} s:\n{_tail(log)}")
                time.sleep(1)
        assert MODEL in info["models"] and MODEL in info["trainers"], info
        assert info["datastore"]["total"] == len(LABELED) + len(UNLABELED), info["datastore"]
        yield srv
    finally:
        _stop(proc)


def _loss_parts(log: str) -> dict[str, list[float]]:
    """The loss terms of each iteration from the bundle's StatsHandler lines (``... -- fecl: 1.2 ... uncl: 0.8``)."""
    lines = [line for line in log.splitlines() if re.search(r"Epoch: \d+/\d+, Iter: \d+/\d+ -- ", line)]
    return {k: [float(m) for line in lines for m in re.findall(rf"\b{k}: ([-\d.eE+]+)", line)]
            for k in ("supervised", "uncl", "fecl")}  # fmt: skip


def _check_label(content: bytes, study: Path, where: Path) -> np.ndarray:
    where.write_bytes(content)
    label, image = nib.load(str(where)), nib.load(str(study))
    assert label.shape == image.shape == SHAPE
    np.testing.assert_allclose(label.affine, image.affine, atol=1e-4)
    data = np.asarray(label.dataobj)
    assert set(np.unique(data)) <= {0, 1}
    return data


def test_app_uses_dycon_trainer(server: Server) -> None:
    assert is_installed(server.app)
    assert "DyCONBundleTrainTask" in server.log.read_text()  # "+++ Adding Trainer:: dycon_la => <...DyCON...>"


def test_infer_returns_label_in_study_geometry(server: Server, tmp_path: Path) -> None:
    content = server.request("POST", f"/infer/{MODEL}?image=case3&output=image")
    _check_label(content, server.studies / "case3.nii.gz", tmp_path / "case3_label.nii.gz")


def test_train_uses_unlabeled_studies(server: Server, tmp_path: Path) -> None:
    model_pt = server.bundle / "models" / "model.pt"
    before = model_pt.stat().st_mtime_ns
    request = {"max_epochs": 2, "val_split": 0.4, "device": "cpu", "multi_gpu": False}
    task = server.json("POST", f"/train/{MODEL}", request)
    assert task["status"] in ("SUBMITTED", "RUNNING"), task
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while True:
        status = server.json("GET", "/train/")
        if status["status"] not in ("SUBMITTED", "RUNNING"):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"training still {status['status']} after {TRAIN_TIMEOUT} s:\n{_tail(server.log)}")
        time.sleep(1)
    assert status["id"] == task["id"]
    assert status["status"] == "DONE", "\n".join(status.get("details", [])) + "\n" + _tail(server.log)

    datalist = json.loads((server.bundle / "eval" / DATALIST_NAME).read_text())
    studies = server.studies.resolve()
    unlabeled = [Path(d["image"]) for d in datalist["unlabeled"]]
    assert unlabeled == [studies / f"{n}.nii.gz" for n in UNLABELED]
    assert all(set(d) == {"image"} for d in datalist["unlabeled"])  # no label of an unlabeled study
    labeled = datalist["training"] + datalist["validation"]
    assert sorted(Path(d["image"]).name for d in labeled) == [f"{n}.nii.gz" for n in LABELED]
    assert all(Path(d["label"]).parent == studies / "labels" / "final" for d in labeled)
    assert len(datalist["validation"]) >= 1  # val_split 0.4 of 3

    log = server.log.read_text()
    assert "DyCON semi-supervised training: 2 labeled, 1 validation, 2 unlabeled studies" in log
    assert "Epoch[2] Complete" in log and "MeanTeacherTrainer" in log
    parts = _loss_parts(log)  # the unlabeled branch ran: the consistency (UnCL) / contrastive (FeCL) terms are > 0
    assert len(parts["uncl"]) == 4 and all(v > 0 for v in parts["uncl"] + parts["fecl"]), parts
    assert model_pt.stat().st_mtime_ns > before  # the best model of the validation replaced the weights

    # the app reloads the new weights for inference
    content = server.request("POST", f"/infer/{MODEL}?image=case4&output=image")
    _check_label(content, server.studies / "case4.nii.gz", tmp_path / "case4_label.nii.gz")


@pytest.mark.parametrize("case", ["no_unlabeled_studies", "semi_supervised_false"])
def test_train_supervised_fallback(tmp_path: Path, case: str) -> None:
    """Only labeled studies, or ``"semi_supervised": false`` in the request: the DyCON task trains supervised (empty
    unlabeled list, no unlabeled loader); run through MONAI Label's own train runner
    (``python -m monailabel.interfaces.utils.app -m train``), no server."""
    app = _make_app(tmp_path)
    studies = tmp_path / "studies"
    _write_studies(studies, ("case0", "case1"), () if case == "no_unlabeled_studies" else ("case2",))
    env = _env(tmp_path)
    env["MONAI_LABEL_APP_CONF"] = json.dumps({"models": MODEL, "zoo_source": "github", "sam2": "false"})
    request = {"model": MODEL, "max_epochs": 1, "val_split": 0.0, "device": "cpu", "multi_gpu": False}
    if case == "semi_supervised_false":
        request["semi_supervised"] = "false"  # as a string, the way a UI option may arrive
    cmd = [sys.executable, "-m", "monailabel.interfaces.utils.app", "-a", str(app), "-s", str(studies),
           "-m", "train", "-r", json.dumps(request)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TRAIN_TIMEOUT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    why = "no unlabeled studies in the datastore" if case == "no_unlabeled_studies" else "semi_supervised is false"
    assert f"DyCON supervised training ({why}): 2 labeled, 0 validation, 0 unlabeled studies" in out
    datalist = json.loads((app / "model" / MODEL / "eval" / DATALIST_NAME).read_text())
    assert datalist["unlabeled"] == [] and datalist["validation"] == [] and len(datalist["training"]) == 2
    assert "Training Finished" in out
    # supervised: every logged consistency (UnCL) / contrastive (FeCL) term is 0
    parts = _loss_parts(out)
    assert parts["supervised"] and all(v > 0 for v in parts["supervised"]), out[-3000:]
    assert parts["uncl"] and all(v == 0 for v in parts["uncl"] + parts["fecl"]), out[-3000:]


def test_install_into_app_checks(tmp_path: Path) -> None:
    app = install_into_app(tmp_path / "app")
    main = (app / "main.py").read_text()
    assert main.count("# >>> dycon-monai") == 1
    install_into_app(app)  # a second time: unchanged
    assert (app / "main.py").read_text() == main
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.py").write_text("class MyApp:\n    pass\n")
    with pytest.raises(ValueError, match="not MONAI Label's monaibundle sample app"):
        install_into_app(other)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no main.py"):
        install_into_app(tmp_path / "junk")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from custom.monailabel.__main__ import main

    assert main([str(tmp_path / "app"), "--bundles", MODEL]) == 0
    bundle = tmp_path / "app" / "model" / MODEL
    assert (bundle / "configs" / "train.yaml").is_file() and not (bundle / "eval").exists()
    out = capsys.readouterr().out
    assert "no model.pt" in out and f"--conf models {MODEL} --conf zoo_source github --conf sam2 false" in out
    assert main([str(tmp_path / "app"), "--bundles", "no_such_bundle"]) == 2
    assert "dycon: error: no bundle 'no_such_bundle'" in capsys.readouterr().err
