"""A real MONAI Label 0.8.5 server with two DyCON bundles (``custom.monailabel``) in one app, driven over HTTP.

The app is MONAI Label's own ``monaibundle`` sample app (copied from the installed wheel) set up by
``custom.monailabel.install_into_app``: the exports of ``bundles/dycon_la`` and ``bundles/dycon_brats19`` in its
``model/`` folder, each with its own ``scripts/`` (the modules it uses), a tiny network (a different size for each, so
that one bundle's weights or config cannot load into the other's network), 32^3 patches, 2 iterations per epoch and
random weights as ``models/model.pt``. The studies folder holds 3 labeled NIfTI studies (labels in ``labels/final``)
and 2 unlabeled ones, all in a non-RAS, anisotropic geometry. The server runs this checkout's ``custom`` (PYTHONPATH).

``monailabel start_server`` (``python -m monailabel.main``) runs on 127.0.0.1 in its own process group with
``zoo_source github`` (the local bundle is used, nothing is fetched), ``sam2 false`` and an unreachable HTTP(S)
proxy, so any outbound request would fail; the group (the server and its training subprocess) is always killed at
teardown. Over HTTP: ``/info/`` lists both bundles; inference with each on a study (shape and affine of the returned
label = the study's); a 2-epoch DyCON training of the LA bundle that must finish and have used the unlabeled studies
(its datalist and log), then a 1-epoch training of the BraTS bundle, whose ``val_interval`` of 3 epochs the DyCON
task lowers so that it still validates and writes ``models/model.pt``; each training must have run its own bundle's
``scripts`` (a line the test adds to the front of each copy's ``run`` list prints the file of the trainer's training
step) and left the other bundle's weights alone; inference with each trained model. Without a server: supervised
training when the datastore holds no unlabeled study (MONAI Label's own ``monailabel.interfaces.utils.app`` runner),
and the set-up helpers' checks (a repository bundle is copied as its export, any other bundle folder as it is).
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

REPO = Path(__file__).resolve().parents[2]
MODEL = "dycon_la"
OTHER = "dycon_brats19"  # the second DyCON bundle of the app
CT = "dycon_pancreas"  # the third: serves a raw CT study
ZOO = "zoo_toy"  # a model-zoo style bundle (inference only) whose own scripts/ also has a `networks` module
SMALL_NET = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
NETS = {MODEL: SMALL_NET, OTHER: {"features": [4, 8, 16, 32, 64], "embed_dim": 8, "proj_hidden": 16},
        CT: {"features": [4, 8, 16, 32, 64], "embed_dim": 12, "proj_hidden": 24}}  # fmt: skip
TINY_TRAIN = {"patch_size": [32, 32, 32], "epoch_length": 2, "val_interval": 1, "labeled_batch_size": 1,
              "unlabeled_batch_size": 1, "num_workers": 0}  # fmt: skip
#: per bundle: OTHER validates every 3 epochs, more than its 1-epoch MONAI Label training
TRAIN_EXTRA = {MODEL: {}, OTHER: {"val_interval": 3}, CT: {}}
TINY_INFER = {"patch_size": [32, 32, 32], "num_workers": 0, "sw_batch_size": 1}
#: printed by the first item of each copy's ``run`` list: the file of the training step of the trainer that runs
#: (no "import" in the expression: MONAI would try to parse it as an import statement)
TRAINER_MARK = "DYCON-TEST trainer of"
MARK_RUN = ("$print('" + TRAINER_MARK + "', @bundle_root, 'from', "
            "type(@train#trainer)._iteration.__code__.co_filename, flush=True)")  # fmt: skip
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
        # the server imports this checkout's custom (custom.monailabel), not another installed copy
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
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


def _make_app(root: Path, models: tuple[str, ...] = (MODEL,)) -> Path:
    """The sample app + the ``models`` bundles (tiny settings, random weights, the trainer mark) in ``root/app``."""
    app = install_into_app(root / "app")
    for i, name in enumerate(models):
        weights = root / f"random_{name}.pt"
        torch.manual_seed(i)
        torch.save(UNet3D(in_channels=1, out_channels=2, **NETS[name]).state_dict(), weights)
        install_into_app(app, [name], model=weights)
        bundle = app / "model" / name
        for config_name, tiny in (("train.yaml", {**TINY_TRAIN, **TRAIN_EXTRA[name]}), ("inference.yaml", TINY_INFER)):
            path = bundle / "configs" / config_name
            config = yaml.safe_load(path.read_text())
            config.update(tiny)
            config["network_def"].update(NETS[name])
            if config_name == "train.yaml":
                config["run"] = [MARK_RUN, *config["run"]]
            path.write_text(yaml.safe_dump(config, sort_keys=False))
    return app


def _write_zoo_bundle(root: Path) -> Path:
    """``root/zoo_toy``: a minimal model-zoo style bundle (configs, ``scripts/`` of its own, weights), inference only.
    Its ``scripts.networks`` is not DyCON's (no ``UNet3D``): were it still loaded when a DyCON bundle runs, that bundle
    could not build its network. After NormalizeIntensityd its 1x1x1 convolution (-x, x) labels the voxels above the
    image's mean."""
    bundle = root / ZOO
    (bundle / "configs").mkdir(parents=True)
    (bundle / "scripts").mkdir()
    (bundle / "models").mkdir()
    (bundle / "scripts" / "__init__.py").write_text("")
    (bundle / "scripts" / "networks.py").write_text(
        "import torch\n\n\nclass ToyNet(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.conv = torch.nn.Conv3d(1, 2, 1)\n\n"
        "    def forward(self, x):\n        return self.conv(x)\n"
    )  # fmt: skip
    meta = {
        "version": "0.1.0", "changelog": {"0.1.0": "toy"}, "description": "a toy zoo-style bundle",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": [32, 32, 32]}},
            "outputs": {"pred": {"type": "image", "num_channels": 2,
                                 "channel_def": {"0": "background", "1": "foreground"}}},
        },
    }  # fmt: skip
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "scripts.networks.ToyNet"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "NormalizeIntensityd", "keys": "image"},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }  # fmt: skip
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
    weights = {"conv.weight": torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1), "conv.bias": torch.zeros(2)}
    torch.save(weights, bundle / "models" / "model.pt")
    return bundle


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

    def bundle(self, name: str = MODEL) -> Path:
        return self.app / "model" / name

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
    app = _make_app(root, (MODEL, OTHER, CT))
    install_into_app(app, [_write_zoo_bundle(root)])  # copied as it is (not a repository bundle)
    studies = root / "studies"
    _write_studies(studies, LABELED, UNLABELED)
    port = _free_port()
    log = root / "server.log"
    cmd = [
        sys.executable, "-m", "monailabel.main", "start_server",
        "--app", str(app), "--studies", str(studies),
        "--conf", "models", f"{MODEL},{OTHER},{CT},{ZOO}", "--conf", "zoo_source", "github", "--conf", "sam2", "false",
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
        for name in (MODEL, OTHER, CT):
            assert name in info["models"] and name in info["trainers"], info
        assert ZOO in info["models"] and ZOO not in info["trainers"], info  # no train config: inference only
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


def _train(server: Server, name: str, request: dict) -> str:
    """``POST /train/<name>``, poll ``GET /train/`` until the task is done; returns the log written meanwhile."""
    start = server.log.stat().st_size
    task = server.json("POST", f"/train/{name}", request)
    assert task["status"] in ("SUBMITTED", "RUNNING"), task
    deadline = time.monotonic() + TRAIN_TIMEOUT
    while True:
        status = server.json("GET", "/train/")
        if status["status"] not in ("SUBMITTED", "RUNNING"):
            break
        if time.monotonic() > deadline:
            pytest.fail(f"training of {name} still {status['status']} after {TRAIN_TIMEOUT} s:\n{_tail(server.log)}")
        time.sleep(1)
    assert status["id"] == task["id"]
    assert status["status"] == "DONE", "\n".join(status.get("details", [])) + "\n" + _tail(server.log)
    return server.log.read_bytes()[start:].decode(errors="replace")


def _check_own_scripts(log: str, bundle: Path) -> None:
    """The training whose output is ``log`` ran once, with the trainer class of ``bundle``'s own ``scripts/``."""
    runs = re.findall(rf"{TRAINER_MARK} (\S+) from (\S+)", log)
    assert len(runs) == 1, runs
    root, trainer_file = (Path(p).resolve() for p in runs[0])
    assert root == bundle.resolve()
    assert trainer_file == bundle.resolve() / "scripts" / "engines" / "mean_teacher.py"


def _check_datalist(server: Server, name: str) -> None:
    datalist = json.loads((server.bundle(name) / "eval" / DATALIST_NAME).read_text())
    studies = server.studies.resolve()
    unlabeled = [Path(d["image"]) for d in datalist["unlabeled"]]
    assert unlabeled == [studies / f"{n}.nii.gz" for n in UNLABELED]
    assert all(set(d) == {"image"} for d in datalist["unlabeled"])  # no label of an unlabeled study
    labeled = datalist["training"] + datalist["validation"]
    assert sorted(Path(d["image"]).name for d in labeled) == [f"{n}.nii.gz" for n in LABELED]
    assert all(Path(d["label"]).parent == studies / "labels" / "final" for d in labeled)
    assert len(datalist["validation"]) >= 1  # val_split 0.4 of 3


def test_app_uses_dycon_trainer(server: Server) -> None:
    assert is_installed(server.app)
    log = server.log.read_text()
    for name in (MODEL, OTHER):  # "+++ Adding Trainer:: dycon_la => <...DyCONBundleTrainTask...>"
        assert re.search(rf"Adding Trainer:: {name} => .*DyCONBundleTrainTask", log), name


def test_bundles_carry_their_own_scripts(server: Server) -> None:
    """Each DyCON copy is an export: a ``scripts/`` folder of its own with the modules it uses, byte for byte; the zoo
    bundle keeps its own."""
    zoo_scripts = sorted(p.name for p in (server.bundle(ZOO) / "scripts").iterdir())
    assert zoo_scripts == ["__init__.py", "networks.py"]
    for name in (MODEL, OTHER):
        scripts = server.bundle(name) / "scripts"
        assert scripts.is_dir() and not scripts.is_symlink()
        files = sorted(p.relative_to(scripts) for p in scripts.rglob("*.py"))
        assert Path("engines/mean_teacher.py") in files and Path("__init__.py") in files
        assert not (scripts / "monailabel").exists() and not (scripts / "export.py").exists()
        for rel in files:
            assert (scripts / rel).read_bytes() == (REPO / "custom" / rel).read_bytes(), rel


@pytest.mark.parametrize("name", [MODEL, ZOO, OTHER])  # a DyCON bundle runs after the zoo bundle's scripts
def test_infer_returns_label_in_study_geometry(server: Server, tmp_path: Path, name: str) -> None:
    content = server.request("POST", f"/infer/{name}?image=case3&output=image")
    label = _check_label(content, server.studies / "case3.nii.gz", tmp_path / "case3_label.nii.gz")
    if name == ZOO:  # the zoo bundle's own network ran: voxels above the study's mean
        image = np.asarray(nib.load(str(server.studies / "case3.nii.gz")).dataobj)
        mean = image.astype(np.float64).mean()
        differ = label != (image > mean)
        assert np.all(np.abs(image[differ] - mean) < 1e-4), differ.sum()  # only ties to float precision may differ
        assert 0 < label.sum() < label.size


def test_train_uses_unlabeled_studies(server: Server, tmp_path: Path) -> None:
    model_pt, other_pt = (server.bundle(n) / "models" / "model.pt" for n in (MODEL, OTHER))
    before, other_before = model_pt.stat().st_mtime_ns, other_pt.stat().st_mtime_ns
    log = _train(server, MODEL, {"max_epochs": 2, "val_split": 0.4, "device": "cpu", "multi_gpu": False})
    _check_datalist(server, MODEL)
    _check_own_scripts(log, server.bundle(MODEL))

    assert "DyCON semi-supervised training: 2 labeled, 1 validation, 2 unlabeled studies" in log
    assert "Epoch[2] Complete" in log and "MeanTeacherTrainer" in log
    assert "validating after epoch" not in log  # val_interval 1 <= max_epochs: left as it is
    parts = _loss_parts(log)  # the unlabeled branch ran: the consistency (UnCL) / contrastive (FeCL) terms are > 0
    assert len(parts["uncl"]) == 4 and all(v > 0 for v in parts["uncl"] + parts["fecl"]), parts  # 2 epochs x 2
    assert model_pt.stat().st_mtime_ns > before  # the best model of the validation replaced the weights
    assert other_pt.stat().st_mtime_ns == other_before  # the other bundle's weights are untouched
    UNet3D(in_channels=1, out_channels=2, **NETS[MODEL]).load_state_dict(torch.load(model_pt, weights_only=True))

    # the app reloads the new weights for inference
    content = server.request("POST", f"/infer/{MODEL}?image=case4&output=image")
    _check_label(content, server.studies / "case4.nii.gz", tmp_path / "case4_label.nii.gz")


def test_train_second_bundle_validates_short_run(server: Server, tmp_path: Path) -> None:
    """The second bundle of the app trains after the first, with its own code; its val_interval (3 epochs) exceeds
    the request's max_epochs (1), so the DyCON task validates after epoch 1 and models/model.pt is written."""
    model_pt, other_pt = (server.bundle(n) / "models" / "model.pt" for n in (OTHER, MODEL))
    before, other_before = model_pt.stat().st_mtime_ns, other_pt.stat().st_mtime_ns
    log = _train(server, OTHER, {"max_epochs": 1, "val_split": 0.4, "device": "cpu", "multi_gpu": False})
    _check_datalist(server, OTHER)
    _check_own_scripts(log, server.bundle(OTHER))

    assert "DyCON semi-supervised training: 2 labeled, 1 validation, 2 unlabeled studies" in log
    assert "DyCON: val_interval 3 > max_epochs 1: validating after epoch 1" in log
    assert "Epoch[1] Complete" in log and "Epoch[2]" not in log
    assert re.search(r"Epoch\[1\] Metrics -- .*val_mean_dice", log), log[-3000:]  # the validation ran
    parts = _loss_parts(log)
    assert len(parts["uncl"]) == 2 and all(v > 0 for v in parts["uncl"] + parts["fecl"]), parts  # 1 epoch x 2
    assert model_pt.stat().st_mtime_ns > before  # written by the validation's CheckpointSaver
    assert other_pt.stat().st_mtime_ns == other_before
    UNet3D(in_channels=1, out_channels=2, **NETS[OTHER]).load_state_dict(torch.load(model_pt, weights_only=True))

    content = server.request("POST", f"/infer/{OTHER}?image=case4&output=image")
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
    scripts = bundle / "scripts"  # the export's scripts/, not the link (nor all of custom/ behind it)
    assert (scripts / "engines" / "mean_teacher.py").is_file() and not scripts.is_symlink()
    assert not (scripts / "monailabel").exists() and not (scripts / "cli.py").exists()
    out = capsys.readouterr().out
    assert "no model.pt" in out and f"--conf models {MODEL} --conf zoo_source github --conf sam2 false" in out
    assert main([str(tmp_path / "app"), "--bundles", "no_such_bundle"]) == 2
    assert "dycon: error: no bundle 'no_such_bundle'" in capsys.readouterr().err


def test_copy_bundle_keeps_other_bundles_as_they_are(tmp_path: Path) -> None:
    """A bundle folder that is not one of this repository's (an export, a model-zoo bundle with its own scripts/) is
    copied as it is; a copy replaces an earlier one."""
    from custom.monailabel import copy_bundle

    src = tmp_path / "zoo_bundle"
    (src / "configs").mkdir(parents=True)
    (src / "configs" / "metadata.json").write_text('{"version": "0.1.0", "changelog": {"0.1.0": "x"}}')
    (src / "configs" / "inference.json").write_text('{"network_def": {"_target_": "scripts.net.Net"}}')
    (src / "scripts").mkdir()
    (src / "scripts" / "__init__.py").write_text("")
    (src / "scripts" / "net.py").write_text("class Net: ...\n")
    (src / "eval").mkdir()
    (src / "eval" / "out.txt").write_text("an output")
    app = tmp_path / "app"
    for _ in range(2):
        dst = copy_bundle(src, app)
        assert dst == (app / "model" / "zoo_bundle").resolve()
        files = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
        assert files == ["configs/inference.json", "configs/metadata.json", "scripts/__init__.py", "scripts/net.py"]
        assert (dst / "scripts" / "net.py").read_text() == "class Net: ...\n"
    (app / "model" / "not_a_bundle").mkdir()
    with pytest.raises(FileExistsError, match="is not a bundle"):
        copy_bundle(src, app, name="not_a_bundle")


# ------------------------------------------------------------------ raw studies, as they come from the scanner


def _raw_lge_mri(folder: Path) -> Path:
    """An uncropped LGE-MRI exactly as the LA challenge ships it: ``lgemri.nrrd`` (uint8, LPS header, 1 mm space
    directions), from the synthetic release generator."""
    from custom.data.la import IMAGE_NRRD, synth_la

    release = synth_la(folder / "la_release", n_train=1, n_test=0, shape=(48, 40, 36), seed=3)
    case = next(p for p in release.iterdir() if p.is_dir())
    return case / IMAGE_NRRD


def _raw_flair(folder: Path) -> Path:
    """A clinical-looking FLAIR: a synthetic BraTS FLAIR (1 mm, skull-stripped) re-sliced to 3 mm slices and stored
    with the rows flipped and the first two axes swapped, so its affine is neither RAS nor isotropic."""
    from custom.data.brats19 import synth_brats19

    release = synth_brats19(folder / "brats_release", n_hgg=1, n_lgg=0, shape=(48, 44, 36), seed=5)
    flair = next(release.rglob("*_flair.nii.gz"))
    img = nib.load(str(flair))
    data = np.asarray(img.dataobj)[:, :, ::3]  # every third slice: 3 mm
    affine = img.affine @ np.diag([1.0, 1.0, 3.0, 1.0])
    swap = np.array([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)  # voxel axes i <-> j
    flip = np.diag([1.0, -1.0, 1.0, 1.0])
    flip[1, 3] = data.shape[0] - 1  # new j runs backwards along the old i
    data = np.ascontiguousarray(np.swapaxes(data, 0, 1)[:, ::-1])
    out = folder / "flair_raw.nii.gz"
    write_nifti(data, out, affine @ swap @ flip, np.int16)
    return out


def _raw_ct(folder: Path) -> Path:
    """A contrast CT in Hounsfield units at 0.7 x 0.7 x 2.5 mm in the TCIA series' orientation (rows run
    anterior -> posterior, as ImageOrientationPatient 1\\0\\0\\0\\-1\\0 gives): air -1000, a body ellipse of fat
    and soft tissue, a bright enhancing organ."""
    shape = (72, 64, 24)
    grid = np.indices(shape).astype(float)
    rng = np.random.default_rng(7)
    centre = np.array(shape) / 2
    body = ((grid[0] - centre[0]) / 32) ** 2 + ((grid[1] - centre[1]) / 26) ** 2 < 1
    organ = ((grid - (centre + [6, -4, 0])[:, None, None, None]) ** 2 / np.array([8, 6, 4.0])[:, None, None, None] ** 2)
    hu = np.where(body, 40.0, -1000.0) + np.where(organ.sum(0) < 1, 110.0, 0.0) + rng.normal(0, 12, shape)
    affine = np.array([[-0.7, 0, 0, 120.0], [0, 0.7, 0, -80.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])  # not RAS
    out = folder / "ct_raw.nii.gz"
    write_nifti(np.rint(hu).astype(np.int16), out, affine, np.int16)
    return out


RAW = {"lge_raw": (MODEL, _raw_lge_mri), "flair_raw": (OTHER, _raw_flair), "ct_raw": (CT, _raw_ct)}


def _upload(server: Server, study: str, path: Path) -> None:
    """``PUT /datastore/image?image=<study>`` with the file as multipart form data, as a viewer uploads a study."""
    boundary = "dycon-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"params\"\r\n\r\n{{}}\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{server.url}/datastore/image?image={study}", data=body, method="PUT",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=60) as resp:
        assert json.loads(resp.read())["image"] == study


def _inference_yaml(bundle: Path, study: Path, out: Path) -> list[Path]:
    """The masks ``configs/inference.yaml`` of the served copy (same weights, same settings) writes for ``study``."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
           "--input_path", str(study), "--output_dir", str(out)]  # fmt: skip
    env = {k: v for k, v in _env(out).items() if k != "PYTHONPATH"}  # the copy's own scripts/, like the server
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return sorted(out.glob("*_seg.nii.gz"))


@pytest.mark.parametrize("study", list(RAW))
def test_infer_raw_study(server: Server, tmp_path: Path, study: str) -> None:
    """A raw study of each dataset's kind, uploaded to the running server: the returned label is uint8, on the
    study's own grid (shape and affine), with both classes present, and equal voxel for voxel to what the bundle's
    inference.yaml gives for the same file."""
    name, make = RAW[study]
    path = make(tmp_path)
    _balance_weights(server.bundle(name), path)
    _upload(server, study, path)
    content = server.request("POST", f"/infer/{name}?image={study}&output=image")
    suffix = "".join(path.suffixes)  # MONAI Label answers in the study's own format (.nrrd for the LGE-MRI)
    where = tmp_path / f"{study}_label{suffix}"
    where.write_bytes(content)
    served, reference = _read(where), _read(path)
    assert _stored_dtype(where) == np.uint8
    assert served.shape == reference.shape
    np.testing.assert_allclose(served.affine.numpy(), reference.affine.numpy(), atol=1e-3)
    assert set(np.unique(served.numpy()).tolist()) == {0, 1}  # a mask, not all background
    (mask,) = _inference_yaml(server.bundle(name), path, tmp_path / "inference_yaml")
    expected = _read(mask)
    np.testing.assert_allclose(expected.affine.numpy(), reference.affine.numpy(), atol=1e-3)
    np.testing.assert_array_equal(served.numpy(), expected.numpy())


def _balance_weights(bundle: Path, study: Path, foreground: float = 0.1) -> None:
    """Shift the final bias of the served copy's ``models/model.pt`` so that the ``foreground`` share of the study's
    voxels with the largest logit difference are labelled foreground: tiny random or briefly trained networks answer
    all background, which would make the comparisons below trivial. Computed with the copy's own inference.yaml
    (its preprocessing, network and sliding window); MONAI Label reloads a changed model.pt before it infers."""
    from monai.bundle import ConfigParser

    from custom.export import bundle_code

    weights = bundle / "models" / "model.pt"
    with bundle_code(bundle), torch.no_grad():
        parser = ConfigParser()
        parser.read_config(str(bundle / "configs" / "inference.yaml"))
        parser["device"] = "$torch.device('cpu')"
        net = parser.get_parsed_content("network_def")
        net.load_state_dict(torch.load(weights, weights_only=True))
        image = parser.get_parsed_content("preprocessing")({"image": str(study)})["image"]
        logits = parser.get_parsed_content("inferer")(image[None], net.eval())
        difference = (logits[0, 1] - logits[0, 0]).flatten().float()
        threshold = torch.quantile(difference, 1.0 - foreground)
        above = difference[difference > threshold]
        assert above.numel() > 0, "the network's output is constant on the study"
        state = net.state_dict()
        state["final.bias"][1] -= (threshold + above.min()) / 2  # between two values: no ties at the decision
    torch.save(state, weights)


def _stored_dtype(path: Path) -> np.dtype:
    """The voxel type a label file stores (MONAI's readers return float32 whatever it is)."""
    if path.name.endswith(".nrrd"):
        import nrrd

        return np.dtype({"unsigned char": np.uint8, "uchar": np.uint8, "uint8": np.uint8}.get(
            nrrd.read_header(str(path))["type"], np.float32))  # fmt: skip
    return np.dtype(nib.load(str(path)).get_data_dtype())


def _read(path: Path):
    """The file as MONAI reads it (nrrd: LPS header -> RAS affine, like NIfTI)."""
    from monai.transforms import LoadImage

    return LoadImage(image_only=True)(str(path))
