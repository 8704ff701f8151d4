"""Sliding-window settings of the literature, expressed for MONAI's :class:`monai.inferers.SlidingWindowInferer`."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["overlap_for_stride", "window_for_protocol", "PROTOCOLS"]


def overlap_for_stride(roi_size: Sequence[int], stride: Sequence[int]) -> list[float]:
    """Per-dimension overlap fractions for which MONAI's window stride ``int(roi * (1 - overlap))`` is exactly
    ``stride`` (the papers give strides: LA 18 in-plane / 4 through-plane on 112x112x80, Pancreas 16 on 96^3).

    ``1 - stride / roi`` is not enough: ``int(96 * (1 - (1 - 16 / 96)))`` is 15 in floating point, so the fraction
    aims at the middle of the interval that gives ``stride``.

    Args:
        roi_size: window size per spatial dimension.
        stride: wanted stride per spatial dimension, ``0 < stride <= roi``.

    Returns:
        one overlap in [0, 1) per dimension (pass it as ``SlidingWindowInferer(overlap=...)``).
    """
    roi, step = [int(r) for r in roi_size], [int(s) for s in stride]
    if len(roi) != len(step):
        raise ValueError(f"roi_size {roi} and stride {step} must have the same length")
    out = []
    for r, s in zip(roi, step):
        if not 0 < s <= r:
            raise ValueError(f"stride must be in (0, roi] per dimension, got stride {step} for roi {roi}")
        o = max(1.0 - (s + 0.5) / r, 0.0)
        if int(r * (1 - o)) != s:  # cannot happen for integers >= 1; a guard against a silent wrong window
            raise AssertionError((r, s, o))
        out.append(o)
    return out


PROTOCOLS = ("bundle", "paper")


def window_for_protocol(
    protocol: str,
    bundle_roi: Sequence[int],
    bundle_overlap: float,
    paper_roi: Sequence[int],
    paper_stride: Sequence[int],
) -> dict[str, list]:
    """The sliding window of an evaluation protocol, as ``SlidingWindowInferer`` arguments.

    Args:
        protocol: ``"bundle"`` (the training patch with a fractional overlap, as the bundles validate) or
            ``"paper"`` (the literature's window and strides, e.g. LA 112x112x80 with stride 18 / 18 / 4).
        bundle_roi, bundle_overlap: the bundle's window and overlap.
        paper_roi, paper_stride: the literature's window and strides.

    Returns:
        ``{"roi_size": [...], "overlap": [...]}`` (one overlap per dimension).
    """
    if protocol == "bundle":
        return {"roi_size": [int(r) for r in bundle_roi], "overlap": [float(bundle_overlap)] * len(bundle_roi)}
    if protocol == "paper":
        return {"roi_size": [int(r) for r in paper_roi], "overlap": overlap_for_stride(paper_roi, paper_stride)}
    raise ValueError(f"sw_protocol must be one of {PROTOCOLS}, got {protocol!r}")
