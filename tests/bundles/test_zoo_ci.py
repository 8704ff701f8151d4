"""The model zoo's own CI checks on every exported bundle, where the project is NOT installed.

For each bundle: ``custom.export.export_bundle`` into ``models/<bundle>`` of a writable copy of the zoo folder
(../shared/tools/model-zoo, or ``DYCON_MODEL_ZOO``), then, with the Python of the zoo venv (``.venv-zoo``, or
``DYCON_ZOO_VENV``: ONLY the pins of the bundles' metadata.json, made by ``bash scripts/run.sh setup``), from the zoo
copy and without PYTHONPATH, as a zoo pull request is checked:

* ``python ci/get_bundle_requirements.py --b <bundle>``: the requirements file lists exactly the metadata's pins, and
  the venv holds exactly those versions;
* every module of the exported ``scripts/`` imports (from the bundle folder), and so does every third-party module
  that they import anywhere (also inside functions) or that the configs load through MONAI / ignite (tqdm, tensorboard,
  scikit-image ...): each package used at run time is in required_packages_version (the venv holds the union of
  the bundles' pins; what another bundle pins and this one does not is blocked in that check);
* ``python ci/verify_bundle.py -b <bundle> -m min`` and ``-m full`` (data shape at the zoo's default n=1, TorchScript
  export of the full network).

The project's package must not be importable there (asserted). Without the zoo copy or the venv the tests skip.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ZOO = Path(os.environ.get("DYCON_MODEL_ZOO") or REPO.parent / "shared" / "tools" / "model-zoo")  # as scripts/run.sh
ZOO_VENV = Path(os.environ.get("DYCON_ZOO_VENV") or REPO / ".venv-zoo")
ZOO_PYTHON = ZOO_VENV / "bin" / "python"
BUNDLES = sorted(p.name for p in (REPO / "bundles").glob("dycon_*"))
TIMEOUT = 900

#: modules that the configs use through MONAI / ignite rather than through an import in scripts/: ProgressBar (tqdm),
#: TensorBoardStatsHandler (tensorboard), KeepLargestConnectedComponentd on the CPU (scikit-image), SaveImaged
#: (nibabel; itk when installed), the yaml configs and ``python -m monai.bundle`` (pyyaml, fire)
CONFIG_MODULES = ["tqdm", "torch.utils.tensorboard", "skimage.measure", "nibabel", "itk", "yaml", "fire"]

pytestmark = [
    pytest.mark.skipif(not ZOO.is_dir(), reason=f"no model-zoo copy at {ZOO} (a user's fresh clone still passes)"),
    pytest.mark.skipif(
        not ZOO_PYTHON.is_file(),
        reason=f"no zoo venv at {ZOO_VENV}: bash scripts/run.sh setup creates it (only the metadata pins)",
    ),
]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1")
    # nothing may be fetched: any request through the standard proxies fails at once
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", no_proxy="")
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    return env


def _zoo_python(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    start = time.monotonic()
    proc = subprocess.run(
        [str(ZOO_PYTHON), *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT
    )
    print(f"[{time.monotonic() - start:.1f} s] python {' '.join(args)[:120]} -> {proc.returncode}")
    if check:
        assert (
            proc.returncode == 0
        ), f"python {' '.join(args)} -> {proc.returncode}\n{(proc.stdout + proc.stderr)[-8000:]}"
    return proc


RANDOM_WEIGHTS = """
import torch
from monai.bundle import ConfigParser

parser = ConfigParser()
parser.read_config("configs/inference.yaml")
parser.read_meta("configs/metadata.json")
torch.manual_seed(0)
torch.save(parser.get_parsed_content("network_def").state_dict(), "models/model.pt")
"""


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the zoo folder with every bundle exported into models/, as the zoo's CI expects it."""
    from custom.export import export_bundle

    root = tmp_path_factory.mktemp("zoo_ci") / "model-zoo"
    shutil.copytree(ZOO, root)
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)
    (root / "models" / "model_info.json").write_text("{}\n")  # no released version yet: any version is new
    for bundle in BUNDLES:
        out = export_bundle(bundle, root / "models")
        (out / "eval").mkdir(exist_ok=True)
        shutil.copyfile(root / "meta_schema_20240725.json", out / "eval" / "schema.json")  # ci/prepare_schema.py
        # No weights exist yet (large_files.yml has an empty url). ci/utils.py download_large_files -> monai's
        # download_url skips a file that exists when no hash is given, so the checks get RANDOM weights of the
        # inference config's network_def (made in the zoo venv, from the bundle folder) as models/model.pt: they
        # check that the bundle loads, runs and exports, not what it has learned.
        (out / "models").mkdir(exist_ok=True)
        _zoo_python(["-c", RANDOM_WEIGHTS], out)
    return root


def test_project_is_not_importable(zoo: Path):
    for cwd in (zoo, zoo / "models" / BUNDLES[0]):
        proc = _zoo_python(["-c", "import custom"], cwd, check=False)
        assert proc.returncode != 0 and "No module named 'custom'" in proc.stderr, (cwd, proc.stderr[-2000:])


def _metadata_pins(meta: dict) -> set[str]:
    pins = {f"monai=={meta['monai_version']}", f"torch=={meta['pytorch_version']}", f"numpy=={meta['numpy_version']}"}
    return pins | {f"{k}=={v}" for k, v in meta.get("required_packages_version", {}).items()}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_requirements(zoo: Path, bundle: str):
    proc = _zoo_python(["ci/get_bundle_requirements.py", "--b", bundle], zoo)
    name = proc.stdout.strip().splitlines()[-1]
    assert name == f"requirements_{bundle}.txt"
    lines = (zoo / name).read_text().splitlines()
    meta = json.loads((zoo / "models" / bundle / "configs" / "metadata.json").read_text())
    assert len(lines) == len(set(lines)) and set(lines) == _metadata_pins(meta)
    # the venv holds these versions (it was made from the union of these files)
    code = "import importlib.metadata as m, sys; print(*(m.version(n) for n in sys.argv[1:]))"
    names = [line.split("==")[0] for line in lines]
    installed = _zoo_python(["-c", code, *names], zoo).stdout.split()
    assert dict(zip(names, installed)) == {line.split("==")[0]: line.split("==")[1] for line in lines}


def _third_party_imports(scripts: Path) -> set[str]:
    """Absolute imports anywhere in scripts/ (also inside functions) that are not the standard library."""
    found: set[str] = set()
    for path in scripts.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
    return {m for m in found if m.split(".")[0] not in sys.stdlib_module_names and m != "__future__"}


#: distribution name -> import name where they differ
IMPORT_NAMES = {
    "pyyaml": "yaml",
    "scikit-image": "skimage",
    "pytorch-ignite": "ignite",
    "pynrrd": "nrrd",
    "pillow": "PIL",
}

IMPORT_ALL = """
import importlib, importlib.abc, sys, traceback

blocked = set(sys.argv[1].split(",")) - {""}


class Block(importlib.abc.MetaPathFinder):  # packages of the venv that this bundle's metadata does not pin
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} is not pinned by this bundle (blocked)", name=name)
        return None


sys.meta_path.insert(0, Block())
bad = []
for name in sys.argv[2:]:
    try:
        importlib.import_module(name)
    except Exception:
        bad.append(name + ": " + traceback.format_exc(limit=1).strip().splitlines()[-1])
print("\\n".join(bad))
sys.exit(1 if bad else 0)
"""


def _pinned(bundle: str) -> set[str]:
    meta = json.loads((REPO / "bundles" / bundle / "configs" / "metadata.json").read_text())
    return {name.lower() for name in meta.get("required_packages_version", {})}


@pytest.mark.parametrize("bundle", BUNDLES)
def test_scripts_import(zoo: Path, bundle: str):
    """The venv holds the union of the bundles' pins: what other bundles pin and this one does not is blocked, so
    each bundle is proven on its own pins."""
    root = zoo / "models" / bundle
    modules = sorted(
        ".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for p in (root / "scripts").rglob("*.py")
    )
    third_party = sorted(_third_party_imports(root / "scripts") | set(CONFIG_MODULES))
    assert "scripts" in modules and "scripts.networks" in modules
    others = set().union(*(_pinned(b) for b in BUNDLES)) - _pinned(bundle)
    blocked = ",".join(sorted(IMPORT_NAMES.get(name, name) for name in others))
    print(f"{bundle}: blocked {blocked or 'nothing'}")
    _zoo_python(["-c", IMPORT_ALL, blocked, *modules, *third_party], root)


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize("mode", ["min", "full"])
def test_verify_bundle(zoo: Path, bundle: str, mode: str):
    proc = _zoo_python(["ci/verify_bundle.py", "-b", bundle, "-m", mode], zoo)
    out = proc.stdout
    assert "metadata format is verified correctly." in out
    if mode == "full":
        assert "data shape is verified correctly." in out
        assert "export weights into TorchScript module successfully." in out
