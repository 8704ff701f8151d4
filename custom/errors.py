"""Input errors reach the user as one line, also from ``python -m monai.bundle run``.

MONAI wraps an exception raised in a config expression in ``RuntimeError: Failed to evaluate ConfigExpression``
and the interpreter prints the whole chained traceback. The bundles call :func:`install_excepthook` first in their
``initialize`` list: for an uncaught exception whose chain contains a user error (a missing file or folder, a
:class:`custom.data.DatasetError`) it prints ``dycon: error: <message>`` instead (exit status 1). Anything else,
or ``DYCON_TRACEBACK=1`` in the environment, keeps the full traceback.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType

__all__ = ["install_excepthook", "user_error"]


def user_error(exc: BaseException | None) -> BaseException | None:
    """The first user error (DatasetError, FileNotFoundError) in the cause / context chain of ``exc``."""
    from .data.datalist import DatasetError

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (DatasetError, FileNotFoundError)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def install_excepthook() -> None:
    """Replace ``sys.excepthook`` (once) so that user errors print as one line."""
    previous = sys.excepthook
    if getattr(previous, "_dycon", False):
        return

    def hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        cause = None if os.environ.get("DYCON_TRACEBACK") else user_error(exc)
        if cause is None:
            previous(exc_type, exc, tb)
        else:
            print(f"dycon: error: {cause}", file=sys.stderr)

    hook._dycon = True  # type: ignore[attr-defined]
    sys.excepthook = hook
