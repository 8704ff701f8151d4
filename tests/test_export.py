"""``dycon export``: the exported bundle runs from anywhere with its OWN copy of ``custom``.

A tiny synthetic LA dataset; ``dycon_la`` exported (folder + zip); then, in subprocesses started from an empty
temporary working directory without PYTHONPATH:

* a 2-iteration training through ``monai.bundle run`` with this repository's editable install hidden (its import
  finder removed from ``sys.meta_path``, so ``import custom`` fails before the bundle runs);
* inference through ``python -m monai.bundle run`` exactly as a user types it;
* ``ckpt_export`` (TorchScript ``models/model.ts``) of the trained weights through a second export.

Each run prints the files of the ``custom`` modules that it used: all must lie inside the export.
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from custom.cli import DyconCLI
from custom.data.la import prepare_la, synth_la
from custom.export import ExportError, check_metadata, export_bundle
from custom.networks import UNet3D

REPO = Path(__file__).resolve().parents[1]
SMALL_NET = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
NET_ARGS = [
    "--network_def#features", "[4,8,16,32,64]",
    "--network_def#embed_dim", "16",
    "--network_def#proj_hidden", "32",
]  # fmt: skip
PATCH = "[32,32,32]"

ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
ENV.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")

# prints the files of every imported custom module (one JSON line), after the run
REPORT = (
    "import json, sys; print('CUSTOM_MODULES=' + json.dumps({n: getattr(m, '__file__', None) "
    "for n, m in sys.modules.items() if n == 'custom' or n.startswith('custom.')}))"
)
# runs monai.bundle's command line with the editable install of this repository hidden
HIDDEN_REPO_DRIVER = f"""
import runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + repr(f)]
sys.path[:] = [p for p in sys.path if p not in ('', {str(REPO)!r}) and not p.startswith({str(REPO)!r} + '/custom')]
try:
    import custom
except ImportError:
    print('REPO_CUSTOM_HIDDEN')
else:
    raise SystemExit('custom is still importable: ' + str(custom.__file__))
sys.argv = ['monai.bundle'] + sys.argv[1:]
try:
    runpy.run_module('monai.bundle', run_name='__main__', alter_sys=True)
except SystemExit as e:
    if e.code not in (0, None):
        raise
{REPORT}
"""


def _run(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"exit status {proc.returncode}: {args}\n--- output tail ---\n{out[-6000:]}")
    return out


def _custom_modules(out: str) -> dict[str, str]:
    lines = [line for line in out.splitlines() if line.startswith("CUSTOM_MODULES=")]
    assert lines, f"no CUSTOM_MODULES line in the output:\n{out[-3000:]}"
    return json.loads(lines[-1][len("CUSTOM_MODULES=") :])


def _assert_inside(modules: dict[str, str], root: Path) -> None:
    assert "custom" in modules and "custom.networks" in modules, modules
    root = root.resolve()
    for name, path in modules.items():
        assert path is not None and root in Path(path).resolve().parents, f"{name} ran from {path}, not {root}"


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    raw = synth_la(root / "raw", n_train=4, n_test=2, shape=(48, 48, 32))
    prepare_la(raw, root / "data", labeled=2)
    archive = Path(DyconCLI().export("dycon_la", str(root / "dist"), zip=True))
    work = root / "work"  # an empty working directory for every command
    work.mkdir()
    return {"root": root, "data": root / "data", "zip": archive, "bundle": root / "dist" / "dycon_la", "work": work}


@pytest.fixture(scope="module")
def trained(ws: dict[str, Path]) -> tuple[Path, str]:
    bundle, out = ws["bundle"], ws["root"] / "train_out"
    log = _run(
        [
            "-c", HIDDEN_REPO_DRIVER, "run",
            "--bundle_root", str(bundle),
            "--config_file", str(bundle / "configs" / "train.yaml"),
            "--dataset_dir", str(ws["data"]),
            "--output_dir", str(out / "eval"),
            "--ckpt_dir", str(out / "models"),
            "--max_iterations", "2", "--val_interval", "2",
            "--patch_size", PATCH,
            "--labeled_batch_size", "1", "--unlabeled_batch_size", "1",
            "--num_workers", "0", "--device", "$torch.device('cpu')",
            *NET_ARGS,
        ],
        cwd=ws["work"],
    )  # fmt: skip
    return out / "models" / "model.pt", log


def test_export_layout_and_zip(ws: dict[str, Path]):
    bundle, src = ws["bundle"], REPO / "bundles" / "dycon_la"
    for rel in ("LICENSE", "large_files.yml", "configs/metadata.json", "configs/inference.yaml", "configs/train.yaml",
                "docs/README.md", "docs/RELEASING.md", "scripts/load_custom.py", "custom/__init__.py",
                "custom/networks/__init__.py", "custom/data/splits/Pancreas/test.list"):  # fmt: skip
        assert (bundle / rel).is_file(), rel
    files = [p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file()]
    assert not [p for p in files if {"__pycache__", "eval"} & set(p.parts) or p.suffix == ".pyc"]
    # metadata unchanged and releasable: version is a semantic version and a changelog key
    assert (bundle / "configs" / "metadata.json").read_bytes() == (src / "configs" / "metadata.json").read_bytes()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    check_metadata(meta)
    with pytest.raises(ExportError):
        check_metadata({"version": "0.2.0", "changelog": {"0.1.0": "x"}})
    # the exported configs no longer import `custom` by name; the repository's configs are untouched
    for name in ("train.yaml", "evaluate.yaml", "inference.yaml", "multi_gpu_train.yaml"):
        exported = yaml.safe_load((bundle / "configs" / name).read_text())
        assert "load_custom" in exported["custom"]
        assert not any("import custom" in s for s in exported.get("imports", []))
    assert "$import custom" in (src / "configs" / "inference.yaml").read_text()
    # the zip: the bundle folder at the top, the same files
    assert ws["zip"] == ws["root"] / "dist" / "dycon_la.zip"
    with zipfile.ZipFile(ws["zip"]) as zf:
        names = set(zf.namelist())
    assert all(n.startswith("dycon_la/") for n in names)
    assert names == {f"dycon_la/{p.as_posix()}" for p in files}


def test_loader_refuses_another_custom(ws: dict[str, Path]):
    """This process imported the repository's ``custom``: the exported bundle refuses to run next to it."""
    loader = runpy.run_path(str(ws["bundle"] / "scripts" / "load_custom.py"))["load_custom"]
    with pytest.raises(ImportError, match="already imported"):
        loader(str(ws["bundle"]))


def test_exported_train_without_repo(ws: dict[str, Path], trained: tuple[Path, str]):
    model, log = trained
    assert "REPO_CUSTOM_HIDDEN" in log
    assert model.is_file()
    UNet3D(in_channels=1, **SMALL_NET).load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    _assert_inside(_custom_modules(log), ws["bundle"])


def test_exported_inference(ws: dict[str, Path], trained: tuple[Path, str]):
    bundle, pred = ws["bundle"], ws["root"] / "pred"
    log = _run(
        [
            "-m", "monai.bundle", "run",
            "--bundle_root", str(bundle),
            "--config_file", str(bundle / "configs" / "inference.yaml"),
            "--input_path", str(ws["data"] / "datalist.json"),
            "--output_dir", str(pred),
            "--ckpt_path", str(trained[0]),
            "--patch_size", PATCH, "--num_workers", "0", "--device", "$torch.device('cpu')",
            *NET_ARGS,
            "--finalize", "$exec(" + json.dumps(REPORT) + ")",
        ],
        cwd=ws["work"],
    )  # fmt: skip
    _assert_inside(_custom_modules(log), bundle)
    test = json.loads((ws["data"] / "datalist.json").read_text())["test"]
    segs = sorted(p.name for p in pred.glob("*_seg.nii.gz"))
    assert len(segs) == len(test) == 2


def test_exported_evaluate(ws: dict[str, Path], trained: tuple[Path, str]):
    """train.yaml + evaluate.yaml of the export merged (both define the `custom` id)."""
    bundle, out = ws["bundle"], ws["root"] / "train_out"
    configs = [str(bundle / "configs" / n) for n in ("train.yaml", "evaluate.yaml")]
    log = _run(
        [
            "-m", "monai.bundle", "run",
            "--bundle_root", str(bundle),
            "--config_file", json.dumps(configs),
            "--dataset_dir", str(ws["data"]),
            "--output_dir", str(out / "eval"),
            "--ckpt_dir", str(out / "models"),
            "--patch_size", PATCH, "--num_workers", "0", "--device", "$torch.device('cpu')",
            *NET_ARGS,
            "--finalize", "$exec(" + json.dumps(REPORT) + ")",
        ],
        cwd=ws["work"],
    )  # fmt: skip
    _assert_inside(_custom_modules(log), bundle)
    summary = json.loads((out / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2


def test_export_with_model_and_torchscript(ws: dict[str, Path], trained: tuple[Path, str]):
    bundle = export_bundle(
        "la", ws["root"] / "dist2", model=trained[0], torchscript=True,
        ckpt_overrides={f"network_def#{k}": v for k, v in SMALL_NET.items()},
    )  # fmt: skip
    assert bundle == ws["root"] / "dist2" / "dycon_la"
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu")
    eager = UNet3D(in_channels=1, **SMALL_NET)
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-5)
    # exporting again replaces the earlier export; a foreign folder is never replaced
    export_bundle("dycon_la", ws["root"] / "dist2")
    assert not (bundle / "models" / "model.ts").exists()
    (ws["root"] / "dist3" / "dycon_la").mkdir(parents=True)
    with pytest.raises(ExportError, match="not an earlier export"):
        export_bundle("dycon_la", ws["root"] / "dist3")
    with pytest.raises(ExportError, match="no bundle"):
        export_bundle("no_such_bundle", ws["root"] / "dist4")
