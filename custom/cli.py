"""The ``dycon`` command line (also ``python -m custom``), built with fire.

    dycon prepare {la,brats19,pancreas,isles22} --src DIR --dst DIR [--labeled N | --fraction F] [--random --seed S]
    dycon synth {la,brats19,pancreas,isles22} --dst DIR
    dycon demo [--workdir demo_output] [--source auto|real|synthetic] [--iterations 60] [--amp auto|false]

Every sub-command imports its implementation lazily, so ``dycon --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Any

import fire


class CLIError(Exception):
    """An error a user can fix: printed as one line, exit status 2."""


class Prepare:
    """Prepare a raw public release (or the literature's preprocessed h5) for a DyCON bundle."""

    def la(self, src: str, dst: str, **kwargs: Any) -> str:
        """Left Atrium: h5 release (``2018LA_Seg_Training Set``) or raw challenge nrrd -> NIfTI + datalist.json."""
        from .data.la import prepare_la

        return str(prepare_la(src, dst, **kwargs))

    def brats19(self, src: str, dst: str, **kwargs: Any) -> str:
        """BraTS 2019: raw ``MICCAI_BraTS_2019_Data_Training/{HGG,LGG}`` NIfTI -> whole-tumour NIfTI + datalist.json."""
        from .data.brats19 import prepare_brats19

        return str(prepare_brats19(src, dst, **kwargs))

    def pancreas(self, src: str, dst: str, **kwargs: Any) -> str:
        """Pancreas-NIH: TCIA DICOM series + NIfTI labels (or the preprocessed h5) -> NIfTI + datalist.json."""
        from .data.pancreas import prepare_pancreas

        return str(prepare_pancreas(src, dst, **kwargs))

    def isles22(self, src: str, dst: str, **kwargs: Any) -> str:
        """ISLES 2022: BIDS release (nested or flat) -> DWI (+ ADC) NIfTI + datalist.json for one fold."""
        from .data.isles22 import prepare_isles22

        return str(prepare_isles22(src, dst, **kwargs))


class Synth:
    """Write a small fake dataset in the exact raw layout of a public release (tests, demo)."""

    def la(self, dst: str, **kwargs: Any) -> str:
        """Fake 2018 LA challenge release: ``<id>/lgemri.nrrd``, ``<id>/laendo.nrrd``, train.list, test.list."""
        from .data.la import synth_la

        return str(synth_la(dst, **kwargs))

    def brats19(self, dst: str, **kwargs: Any) -> str:
        """Fake BraTS 2019 training release: ``{HGG,LGG}/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``."""
        from .data.brats19 import synth_brats19

        return str(synth_brats19(dst, **kwargs))

    def pancreas(self, dst: str, **kwargs: Any) -> str:
        """Fake TCIA Pancreas-CT release: DICOM series per case + ``TCIA_pancreas_labels-02-05-2017``."""
        from .data.pancreas import synth_pancreas

        return str(synth_pancreas(dst, **kwargs))

    def isles22(self, dst: str, **kwargs: Any) -> str:
        """Fake ISLES 2022 BIDS release (``--layout nested | flat``)."""
        from .data.isles22 import synth_isles22

        return str(synth_isles22(dst, **kwargs))


class DyconCLI:
    """DyCON semi-supervised segmentation for MONAI."""

    def __init__(self) -> None:
        self.prepare = Prepare()
        self.synth = Synth()

    def demo(self, workdir: str = "demo_output", source: str = "auto", iterations: int = 60, **kwargs: Any) -> None:
        """Prepare a small LA dataset (real cases when present, else synthetic), train, evaluate and infer."""
        from .demo import run_demo

        run_demo(workdir=workdir, source=source, iterations=iterations, **kwargs)

    def export(
        self, bundle: str, dst: str, zip: bool = False, model: str | None = None, torchscript: bool = False
    ) -> str:
        """The bundle (name or folder) as a model-zoo pull request holds it: ``DST/<bundle>/`` with ``scripts/`` = the
        modules of this package that it uses, byte for byte (``--zip``: also ``DST/<bundle>.zip``); ``--model
        model.pt`` ships weights, ``--torchscript`` adds model.ts."""
        from .export import export_bundle

        return str(export_bundle(bundle, dst, zip=zip, model=model, torchscript=torchscript))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dycon`` console script."""
    try:
        fire.Fire(DyconCLI(), command=argv, name="dycon")
    except (CLIError, FileNotFoundError, ValueError) as err:
        print(f"dycon: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
