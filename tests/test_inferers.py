"""custom.inferers: the papers' sliding-window strides as MONAI overlaps."""

import pytest
import torch
from monai.inferers import SlidingWindowInferer
from monai.inferers.utils import _get_scan_interval

from custom.inferers import overlap_for_stride


def test_overlap_for_stride_is_exact():
    for roi in (32, 80, 96, 112):
        for stride in range(1, roi + 1):
            (o,) = overlap_for_stride([roi], [stride])
            assert int(roi * (1 - o)) == stride
    assert int(96 * (1 - (1 - 16 / 96))) == 15  # why overlap_for_stride exists


@pytest.mark.parametrize("roi, stride", [((112, 112, 80), (18, 18, 4)), ((96, 96, 96), (16, 16, 16))])
def test_monai_scans_with_the_papers_strides(roi, stride):
    # what MONAI's SlidingWindowInferer computes from the overlaps: the literature's LA and Pancreas strides
    image = (160, 150, 100)
    assert tuple(_get_scan_interval(image, roi, 3, overlap_for_stride(roi, stride))) == stride
    seen = []

    def net(x):
        seen.append(x.shape)
        return torch.zeros(x.shape[0], 2, *x.shape[2:])

    small = tuple(r // 8 for r in roi)
    step = tuple(max(1, s // 8) for s in stride)
    SlidingWindowInferer(small, overlap=overlap_for_stride(small, step))(torch.zeros(1, 1, *(2 * r for r in small)), net)
    expected = 1
    for r, s in zip(small, step):
        expected *= -(-(2 * r - r) // s) + 1
    assert len(seen) == expected


def test_argument_errors():
    with pytest.raises(ValueError, match="same length"):
        overlap_for_stride([96, 96], [16])
    with pytest.raises(ValueError, match="stride must be"):
        overlap_for_stride([96], [97])


def test_window_for_protocol():
    from custom.inferers import window_for_protocol

    bundle = window_for_protocol("bundle", [48, 48, 32], 0.5, [112, 112, 80], [18, 18, 4])
    assert bundle == {"roi_size": [48, 48, 32], "overlap": [0.5, 0.5, 0.5]}
    paper = window_for_protocol("paper", [48, 48, 32], 0.5, [112, 112, 80], [18, 18, 4])
    assert paper["roi_size"] == [112, 112, 80]
    assert _get_scan_interval((200, 200, 100), paper["roi_size"], 3, paper["overlap"]) == (18, 18, 4)
    with pytest.raises(ValueError, match="sw_protocol must be one of"):
        window_for_protocol("papers", [48, 48, 32], 0.5, [112, 112, 80], [18, 18, 4])
