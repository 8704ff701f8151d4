"""The ``dycon`` command line (also ``python -m custom``), built with fire.

    dycon prepare la --src DIR --dst DIR [--labeled N | --fraction F] [--random --seed S] [--val N]
    dycon synth la --dst DIR
    dycon demo [--workdir demo_output] [--source auto|real|synthetic] [--iterations 60]

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
        from custom.data.la import prepare_la

        return str(prepare_la(src, dst, **kwargs))


class Synth:
    """Write a small fake dataset in the exact raw layout of a public release (tests, demo)."""

    def la(self, dst: str, **kwargs: Any) -> str:
        """Fake 2018 LA challenge release: ``<id>/lgemri.nrrd``, ``<id>/laendo.nrrd``, train.list, test.list."""
        from custom.data.la import synth_la

        return str(synth_la(dst, **kwargs))


class DyconCLI:
    """DyCON semi-supervised segmentation for MONAI."""

    def __init__(self) -> None:
        self.prepare = Prepare()
        self.synth = Synth()

    def demo(self, workdir: str = "demo_output", source: str = "auto", iterations: int = 60, **kwargs: Any) -> None:
        """Prepare a small LA dataset (real cases when present, else synthetic), train, evaluate and infer."""
        from custom.demo import run_demo

        run_demo(workdir=workdir, source=source, iterations=iterations, **kwargs)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``dycon`` console script."""
    try:
        fire.Fire(DyconCLI, command=argv, name="dycon")
    except (CLIError, FileNotFoundError, ValueError) as err:
        print(f"dycon: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
