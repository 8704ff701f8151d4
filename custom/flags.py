"""Boolean options as they arrive from the command line.

``python -m monai.bundle run --amp false`` hands the config the STRING ``"false"`` (python-fire reads only the
Python literals ``True`` / ``False`` as booleans), and a non-empty string is truthy: without care, ``--amp false``
would turn AMP on. Every boolean option of the bundles goes through :func:`as_bool`, in the ``custom`` components
themselves and in the configs' expressions (``$not custom.flags.as_bool(@resume)``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["as_bool"]

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def as_bool(value: Any, name: str = "option") -> bool:
    """``value`` as a bool: bools as they are, 0 / 1, and the strings true / false, yes / no, on / off, 1 / 0
    (any case). Anything else raises ``ValueError`` naming ``name``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueError(f"{name} must be true or false, got {value!r}")
