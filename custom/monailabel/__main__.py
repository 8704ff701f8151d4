"""``python -m custom.monailabel APP_DIR [--bundles dycon_la ...] [--model model.pt]``: a DyCON-aware monaibundle app
(see :mod:`custom.monailabel.app`)."""

from __future__ import annotations

import argparse
import sys

from .app import install_into_app


def main(argv: list[str] | None = None) -> int:
    """Set up (or update) a DyCON-aware monaibundle app; prints the start_server command."""
    parser = argparse.ArgumentParser(prog="python -m custom.monailabel", description=__doc__)
    parser.add_argument("app_dir", help="app folder: created from the monaibundle sample app when it has no main.py")
    parser.add_argument("--bundles", nargs="*", default=[], help="bundles to copy into APP_DIR/model (dycon_la ...)")
    parser.add_argument("--model", default=None, help="model.pt to ship as models/model.pt of each copied bundle")
    args = parser.parse_args(argv)
    try:
        app = install_into_app(args.app_dir, args.bundles, model=args.model)
    except (OSError, ValueError) as err:
        print(f"dycon: error: {err}", file=sys.stderr)
        return 2
    bundles = sorted(p for p in (app / "model").iterdir() if (p / "configs" / "metadata.json").is_file())
    for b in bundles:
        if not any((b / "models" / n).is_file() for n in ("model.pt", "model.ts")):
            print(f"note: {b}/models has no model.pt: MONAI Label offers its training but no inference (--model)")
    names = ",".join(b.name for b in bundles) or "<bundle>"
    print(f"{app} is ready; start the server with:")
    print(
        f"  python -m monailabel.main start_server --app {app} --studies STUDIES --conf models {names}"
        " --conf zoo_source github --conf sam2 false"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
