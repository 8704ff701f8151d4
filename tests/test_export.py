"""``dycon export``: the exported bundle is the bundle folder plus ``scripts/``, the modules of ``custom/`` it uses,
byte for byte, and it runs from its own folder without this repository.

A tiny synthetic LA dataset (``dycon synth la`` + ``dycon prepare la``, as users type them); ``dycon_la`` exported
with ``dycon export --zip``; then, in subprocesses whose working directory is the export (so ``import scripts`` is
the export's own package, as in the model zoo) and whose environment has no PYTHONPATH:

* train (2 epochs of 2 iterations), evaluate (train.yaml + evaluate.yaml) and inference through
  ``monai.bundle run`` with relative config paths, as the bundle's README writes them, behind a wrapper that hides
  this repository (its editable install and its folder on ``sys.path``: ``import custom`` fails before the bundle
  runs), then checks that no ``custom`` module was imported and prints the file of every ``scripts`` module used;
* ``ckpt_export`` (TorchScript ``models/model.ts``) of the trained weights through a second export;
* two exported bundles whose inference networks are built one after the other in one process, as MONAI Label does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from custom.export import ExportError, code_files, check_metadata, config_modules, export_bundle
from custom.networks import UNet3D

REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "custom"
SMALL_NET = {"features": [4, 8, 16, 32, 64], "embed_dim": 16, "proj_hidden": 32}
NET_ARGS = [
    "--network_def#features", "[4,8,16,32,64]",
    "--network_def#embed_dim", "16",
    "--network_def#proj_hidden", "32",
]  # fmt: skip
SMALL_RUN = [
    *NET_ARGS,
    "--patch_size", "[32,32,32]",
    "--num_workers", "0",
    "--device", "$torch.device('cpu')",
]  # fmt: skip
#: modules of custom/ that no bundle config uses: never exported
NOT_EXPORTED = ("cli.py", "export.py", "demo.py", "__main__.py", "monailabel")

ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
# no __pycache__ written into the exports by the runs: they stay comparable file for file
ENV.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")

# ``python -c DRIVER run ARGS``: ``python -m monai.bundle run ARGS`` with this repository hidden; afterwards no
# ``custom`` module may be loaded, and the files of the ``scripts`` modules used are printed (one JSON line).
# ``python -c`` keeps the working directory (the export) first on sys.path, as ``python -m`` does.
DRIVER = f"""
import json, runpy, sys
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + repr(f)]
sys.path[:] = [p for p in sys.path if p != {str(REPO)!r}]  # (the venv may lie inside the repository)
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
used = sorted(n for n in sys.modules if n == 'custom' or n.startswith('custom.'))
assert not used, 'repository modules were imported: ' + str(used)
print('SCRIPTS_MODULES=' + json.dumps({{n: getattr(m, '__file__', None) for n, m in sys.modules.items()
                                       if n == 'scripts' or n.startswith('scripts.')}}))
"""


def _python(args: list[str], cwd: Path, timeout: int = 600) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        pytest.fail(f"exit status {proc.returncode}: {args}\n--- output tail ---\n{out[-6000:]}")
    return out


def _bundle_run(bundle: Path, args: list[str]) -> dict[str, str]:
    """``monai.bundle run`` from the export folder through DRIVER; returns the scripts modules used (all checked to
    lie inside the export)."""
    log = _python(["-c", DRIVER, "run", *args], cwd=bundle)
    assert "REPO_CUSTOM_HIDDEN" in log
    lines = [line for line in log.splitlines() if line.startswith("SCRIPTS_MODULES=")]
    assert lines, f"no SCRIPTS_MODULES line in the output:\n{log[-3000:]}"
    modules = json.loads(lines[-1][len("SCRIPTS_MODULES=") :])
    assert "scripts" in modules and "scripts.networks" in modules, modules
    for name, path in modules.items():
        assert path is not None and bundle.resolve() in Path(path).resolve().parents, f"{name} ran from {path}"
    return modules


def _files(root: Path, skip: tuple[str, ...] = ()) -> set[str]:
    """The files under ``root`` (relative posix paths), not following links, without the top-level names ``skip``."""
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts[0] not in skip and path.is_file() and not path.is_symlink():
            out.add(rel.as_posix())
    return out


def _module_files(modules: dict[str, str], bundle: Path) -> set[str]:
    """The files (relative to the export's ``scripts/``) of imported modules."""
    return {Path(p).resolve().relative_to((bundle / "scripts").resolve()).as_posix() for p in modules.values()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    _python(["-m", "custom", "synth", "la", "--dst", str(root / "raw"), "--n_train", "5", "--n_test", "2"], REPO)
    _python(["-m", "custom", "prepare", "la", "--src", str(root / "raw"), "--dst", str(root / "data"),
             "--labeled", "2", "--val", "1"], REPO)  # fmt: skip
    out = _python(["-m", "custom", "export", "dycon_la", "--dst", str(root / "dist"), "--zip"], REPO)
    archive = root / "dist" / "dycon_la.zip"
    assert str(archive) in out and archive.is_file()
    return {"root": root, "data": root / "data", "zip": archive, "bundle": root / "dist" / "dycon_la"}


@pytest.fixture(scope="module")
def runs(ws: dict[str, Path]) -> dict[str, dict[str, str]]:
    """train, evaluate and inference of the export, from its folder; the scripts modules each of them used."""
    bundle, data, out = ws["bundle"], ws["data"], ws["root"] / "train_out"
    used = {}
    used["train"] = _bundle_run(bundle, [
        "--config_file", "configs/train.yaml",
        "--dataset_dir", str(data), "--output_dir", str(out / "eval"), "--ckpt_dir", str(out / "models"),
        "--labeled_batch_size", "1", "--unlabeled_batch_size", "1",
        "--max_epochs", "2", "--epoch_length", "2",
        *SMALL_RUN,
    ])  # fmt: skip
    used["evaluate"] = _bundle_run(bundle, [
        "--config_file", "['configs/train.yaml','configs/evaluate.yaml']",
        "--dataset_dir", str(data), "--output_dir", str(out / "eval"), "--ckpt_dir", str(out / "models"),
        *SMALL_RUN,
    ])  # fmt: skip
    used["inference"] = _bundle_run(bundle, [
        "--config_file", "configs/inference.yaml",
        "--input_path", str(data / "datalist.json"), "--output_dir", str(ws["root"] / "pred"),
        "--ckpt_path", str(out / "models" / "model.pt"),
        *SMALL_RUN,
    ])  # fmt: skip
    return used


def test_export_layout(ws: dict[str, Path]):
    bundle, src = ws["bundle"], REPO / "bundles" / "dycon_la"
    # the bundle folder unchanged: the same files (its scripts link aside), byte for byte
    for rel in ("LICENSE", "large_files.yml", "configs/metadata.json", "configs/train.yaml", "configs/evaluate.yaml",
                "configs/inference.yaml", "configs/multi_gpu_train.yaml", "docs/README.md",
                "scripts/__init__.py"):  # fmt: skip
        assert (bundle / rel).is_file(), rel
    repo_files = {f for f in _files(src, skip=("scripts", "eval")) if "__pycache__" not in f}
    assert _files(bundle, skip=("scripts",)) == repo_files
    for rel in repo_files:
        assert (bundle / rel).read_bytes() == (src / rel).read_bytes(), rel
    # no link, no outputs, no caches anywhere
    everything = [p for p in bundle.rglob("*")]
    assert not [p for p in everything if p.is_symlink()]
    assert not [p for p in everything if {"__pycache__", "eval"} & set(p.relative_to(bundle).parts)]
    assert not [p for p in everything if p.suffix in (".pyc", ".pyo")]
    # scripts/: files of custom/, byte for byte, with the __init__.py of every package on the way
    code = _files(bundle / "scripts")
    assert code and "__init__.py" in code
    for rel in code:
        assert (bundle / "scripts" / rel).read_bytes() == (CUSTOM / rel).read_bytes(), rel
        for parent in Path(rel).parents[:-1]:
            assert (parent / "__init__.py").as_posix() in code, rel
    # every module the configs name is there; the modules no config needs are not
    configs = [p.read_text() for p in (bundle / "configs").glob("*.yaml")]
    for parts in config_modules(configs):
        assert {"/".join(parts) + ".py", "/".join((*parts, "__init__.py"))} & code, parts
    for name in NOT_EXPORTED:
        assert not (bundle / "scripts" / name).exists(), name
    assert not [f for f in code if f.startswith("monailabel/")]
    # metadata releasable: version is a semantic version and a changelog key
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    check_metadata(meta)
    with pytest.raises(ExportError):
        check_metadata({"version": "0.2.0", "changelog": {"0.1.0": "x"}})
    with pytest.raises(ExportError):
        check_metadata({"version": "1.0", "changelog": {"1.0": "x"}})


def test_export_zip(ws: dict[str, Path]):
    """The zip holds the bundle folder at its top, with the same files and bytes as the exported folder."""
    with zipfile.ZipFile(ws["zip"]) as zf:
        names = {n for n in zf.namelist() if not n.endswith("/")}
        assert names == {f"dycon_la/{f}" for f in _files(ws["bundle"])}
        for name in names:
            assert zf.read(name) == (ws["bundle"].parent / name).read_bytes(), name


def test_exported_runs_without_repo(ws: dict[str, Path], runs: dict[str, dict[str, str]]):
    """train / evaluate / inference ran from the export with its own scripts (checked in _bundle_run); their
    outputs are complete; every exported module was used by one of them (or a doc names it)."""
    out = ws["root"] / "train_out"
    model = out / "models" / "model.pt"
    assert model.is_file()
    UNet3D(in_channels=1, **SMALL_NET).load_state_dict(torch.load(model, map_location="cpu", weights_only=True))
    test = json.loads((ws["data"] / "datalist.json").read_text())["test"]
    assert len(test) == 2
    summary = json.loads((out / "eval" / "metrics_summary.json").read_text())
    assert summary["num_cases"] == len(test)
    assert len(list((ws["root"] / "pred").glob("*_seg.nii.gz"))) == len(test)

    bundle = ws["bundle"]
    used = set().union(*(_module_files(m, bundle) for m in runs.values()))
    code = _files(bundle / "scripts")
    assert used <= code  # automatically true: every imported scripts module lies inside the export
    # what the docs need: the modules they name (``python -m scripts.data.la``) and everything those import
    docs = [p.read_text() for p in (bundle / "docs").glob("*.md")]
    for_docs = {str(f) for f in code_files(docs)}
    unused = sorted(code - used)
    only_docs = [f for f in unused if f in for_docs]
    if only_docs:
        warnings.warn(f"exported modules that only docs/*.md need (no run imported them): {only_docs}")
    assert not [f for f in unused if f not in for_docs], f"exported but never used: {unused}"


def test_export_with_model_and_torchscript(ws: dict[str, Path], runs: dict[str, dict[str, str]]):
    model = ws["root"] / "train_out" / "models" / "model.pt"
    bundle = export_bundle(
        "la", ws["root"] / "dist2", model=model, torchscript=True,
        ckpt_overrides={f"network_def#{k}": v for k, v in SMALL_NET.items()},
    )  # fmt: skip
    assert bundle == ws["root"] / "dist2" / "dycon_la"
    assert (bundle / "models" / "model.pt").read_bytes() == model.read_bytes()
    scripted = torch.jit.load(str(bundle / "models" / "model.ts"), map_location="cpu")
    eager = UNet3D(in_channels=1, **SMALL_NET)
    eager.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    x = torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(scripted.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-5)
    # ckpt_export ran from the export: it wrote nothing into the repository's bundle
    assert not (REPO / "bundles" / "dycon_la" / "models" / "model.ts").exists()
    with pytest.raises(ExportError, match="--model"):
        export_bundle("la", ws["root"] / "dist5", torchscript=True)


def test_export_replaces_and_refuses(ws: dict[str, Path], tmp_path: Path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    first = export_bundle("dycon_la", tmp_path / "dist", model=tmp_path / "model.pt")
    assert (first / "models" / "model.pt").read_bytes() == b"weights"
    (first / "scripts" / "stale.py").write_text("")
    again = export_bundle("dycon_la", tmp_path / "dist")  # replaces the earlier export (its model and stray files)
    assert again == first and not (again / "models").exists() and not (again / "scripts" / "stale.py").exists()
    assert _files(again) == _files(ws["bundle"])
    # a folder that is not an earlier export is never replaced
    foreign = tmp_path / "dist3" / "dycon_la"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(ExportError, match="not an earlier export"):
        export_bundle("dycon_la", tmp_path / "dist3")
    assert (foreign / "mine.txt").read_text() == "keep" and sorted(foreign.iterdir()) == [foreign / "mine.txt"]
    # an unknown bundle: an error, from the API and from the command line
    with pytest.raises(ExportError, match="no bundle"):
        export_bundle("no_such_bundle", tmp_path / "dist4")
    proc = subprocess.run([sys.executable, "-m", "custom", "export", "no_such_bundle", "--dst", str(tmp_path / "d5")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.startswith("dycon: error:") and "no_such_bundle" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dist4").exists() and not (tmp_path / "d5" / "no_such_bundle").exists()
    # and never into the bundle itself
    with pytest.raises(ExportError, match="inside the bundle"):
        export_bundle("dycon_la", REPO / "bundles" / "dycon_la" / "eval")


# MONAI Label loads bundle after bundle in one server process: the bundle folder first on sys.path, the previous
# bundle's ``scripts`` unloaded, then the inference config's network built
TWO_BUNDLES = """
import json, sys
from monai.bundle import ConfigParser
sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '') + repr(f)]
report = []
for bundle in sys.argv[1:]:
    sys.path.insert(0, bundle)
    for name in [n for n in sys.modules if n == 'scripts' or n.startswith('scripts.')]:
        del sys.modules[name]
    parser = ConfigParser()
    parser.read_config(bundle + '/configs/inference.yaml')
    parser['bundle_root'] = bundle
    net = parser.get_parsed_content('network_def')
    first = next(m for m in net.modules() if hasattr(m, 'in_channels'))
    report.append({'bundle': bundle, 'class': type(net).__module__ + '.' + type(net).__qualname__,
                   'class_id': id(type(net)), 'in_channels': first.in_channels,
                   'config_in_channels': parser.get_parsed_content('in_channels'),
                   'modules': {n: getattr(m, '__file__', None) for n, m in sys.modules.items()
                               if n == 'scripts' or n.startswith('scripts.')}})
    sys.path.remove(bundle)
print('TWO_BUNDLES=' + json.dumps(report))
"""


def test_two_exported_bundles_in_one_process(tmp_path: Path):
    la = export_bundle("dycon_la", tmp_path / "dist")
    brats = export_bundle("dycon_brats19", tmp_path / "dist")
    work = tmp_path / "work"  # neither bundle's folder, nor the repository
    work.mkdir()
    out = _python(["-c", TWO_BUNDLES, str(la), str(brats)], cwd=work)
    line = next(line for line in out.splitlines() if line.startswith("TWO_BUNDLES="))
    report = json.loads(line[len("TWO_BUNDLES=") :])
    assert [r["bundle"] for r in report] == [str(la), str(brats)]
    for r in report:
        root = Path(r["bundle"]).resolve()
        assert r["class"].startswith("scripts.networks")
        assert r["in_channels"] == r["config_in_channels"]
        assert "scripts" in r["modules"] and "scripts.networks" in r["modules"]
        for name, path in r["modules"].items():  # each bundle resolved its own scripts package
            assert path is not None and root in Path(path).resolve().parents, (r["bundle"], name, path)
    assert report[0]["class_id"] != report[1]["class_id"]  # brats19's network class is its own, not la's
