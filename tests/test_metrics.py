"""ssa.eval.metrics: DAVIS-2017 J / F against hand-derived values, a brute-force F, and pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as mask_utils

from ssa.eval import boundary_tolerance, disk_kernel, f_score, j_score, jf, seg2bmap, summarize


def _square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[top : top + size, left : left + size] = True
    return m


def _brute_f(gt: np.ndarray, pred: np.ndarray) -> float:
    """Independent F: explicit Euclidean distance between boundary pixels, no dilation."""
    r = boundary_tolerance(*gt.shape)
    gb, pb = np.argwhere(seg2bmap(gt)), np.argwhere(seg2bmap(pred))
    if len(gb) == 0 and len(pb) == 0:
        return 1.0
    if len(gb) == 0 or len(pb) == 0:
        return 0.0
    d2 = ((pb[:, None, :] - gb[None, :, :]) ** 2).sum(-1)
    p = float((d2.min(axis=1) <= r * r).mean())
    rc = float((d2.min(axis=0) <= r * r).mean())
    return 0.0 if p + rc == 0 else 2 * p * rc / (p + rc)


def test_both_empty_is_one() -> None:
    z = np.zeros((8, 9), dtype=bool)
    np.testing.assert_array_equal(j_score(z, z), [1.0])
    np.testing.assert_array_equal(f_score(z, z), [1.0])
    assert jf(z, z) == {"J": 1.0, "F": 1.0, "J&F": 1.0}


def test_one_empty_is_zero() -> None:
    z = np.zeros((10, 10), dtype=bool)
    m = _square(10, 10, 2, 2, 3)
    for gt, pred in ((z, m), (m, z)):
        np.testing.assert_array_equal(j_score(gt, pred), [0.0])
        np.testing.assert_array_equal(f_score(gt, pred), [0.0])


def test_single_pixel() -> None:
    # 20x20: tolerance = ceil(0.008 * sqrt(800)) = ceil(0.226) = 1.
    assert boundary_tolerance(20, 20) == 1
    a = np.zeros((20, 20), dtype=bool)
    a[5, 5] = True
    b = np.zeros_like(a)
    b[5, 6] = True
    np.testing.assert_array_equal(j_score(a, a), [1.0])
    np.testing.assert_array_equal(f_score(a, a), [1.0])
    # Boundary of a lone pixel (y, x) is the 2x2 block rows y-1..y, cols x-1..x. For a: cols 4..5,
    # for b: cols 5..6; every pixel of one block is within 1 px of the other -> P = R = 1.
    np.testing.assert_array_equal(j_score(a, b), [0.0])
    np.testing.assert_array_equal(f_score(a, b), [1.0])


def test_shifted_square() -> None:
    # 100x100: tolerance = ceil(0.008 * 141.42) = ceil(1.131) = 2.
    assert boundary_tolerance(100, 100) == 2
    gt = _square(100, 100, 40, 40, 20)  # rows/cols 40..59
    # Shift by 1 px: overlap 20*19 = 380, union 800 - 380 = 420. Every boundary pixel moves 1 px -> F = 1.
    p1 = _square(100, 100, 40, 41, 20)
    np.testing.assert_allclose(j_score(gt, p1), [380 / 420])
    np.testing.assert_allclose(f_score(gt, p1), [1.0])
    # Shift by 5 px: overlap 20*15 = 300, union 500 -> J = 0.6.
    # Boundary of a square rows/cols r0..r1 is the 21x21 ring rows r0-1..r1, cols c0-1..c1 (80 px).
    # gt ring cols 39..59, pred ring cols 44..64, both rows 39..59. Pred pixels within 2 px of gt ring:
    #   top row and bottom row, cols 44..61 (col 61 is 2 px from gt corner col 59): 18 + 18;
    #   left column (col 44) rows 40, 41, 57, 58 (1-2 px from gt top/bottom rows): 4;
    #   right column (col 64) is 5 px from everything: 0.
    # Precision = 40 / 80 = 0.5; recall = 0.5 by mirror symmetry; F = 0.5.
    p5 = _square(100, 100, 40, 45, 20)
    np.testing.assert_allclose(j_score(gt, p5), [0.6])
    np.testing.assert_allclose(f_score(gt, p5), [0.5])
    assert f_score(gt, p5)[0] == pytest.approx(_brute_f(gt, p5))


def test_disk_kernel_r2() -> None:
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        dtype=np.uint8,
    )
    k = disk_kernel(2)
    assert k.dtype == np.uint8
    np.testing.assert_array_equal(k, expected)
    dy, dx = np.nonzero(k)
    assert {(int(y) - 2, int(x) - 2) for y, x in zip(dy, dx, strict=True)} == {
        (y, x) for y in range(-2, 3) for x in range(-2, 3) if y * y + x * x <= 4
    }


def test_seg2bmap_interior_square() -> None:
    seg = np.zeros((6, 6), dtype=bool)
    seg[1:4, 1:4] = True
    expected = np.array(
        [
            [1, 1, 1, 1, 0, 0],
            [1, 0, 0, 1, 0, 0],
            [1, 0, 0, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)


def test_seg2bmap_border_rules() -> None:
    # Square in the bottom-right corner: last row compares only east, last column only south,
    # the bottom-right pixel is never boundary (DAVIS reference behaviour).
    seg = np.zeros((6, 6), dtype=bool)
    seg[3:, 3:] = True
    expected = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0],
            [0, 0, 1, 1, 1, 1],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
        ],
        dtype=bool,
    )
    np.testing.assert_array_equal(seg2bmap(seg), expected)
    assert not seg2bmap(np.ones((5, 7), dtype=bool)).any()


def test_video_matches_frame_by_frame() -> None:
    rng = np.random.default_rng(0)
    gt = rng.random((4, 30, 40)) > 0.6
    pred = rng.random((4, 30, 40)) > 0.6
    pred[2] = gt[2]
    gt[3] = False
    j, f = j_score(gt, pred), f_score(gt, pred)
    assert j.shape == f.shape == (4,) and j.dtype == f.dtype == np.float64
    for t in range(4):
        assert j[t] == j_score(gt[t], pred[t])[0]
        assert f[t] == f_score(gt[t], pred[t])[0]
        assert f[t] == pytest.approx(_brute_f(gt[t], pred[t]), abs=1e-12)
    assert j[2] == f[2] == 1.0
    assert ((j >= 0) & (j <= 1) & (f >= 0) & (f <= 1)).all()
    scores = jf(gt.astype(np.uint8), pred.astype(np.uint8))
    assert scores["J"] == pytest.approx(j.mean()) and scores["F"] == pytest.approx(f.mean())
    assert scores["J&F"] == pytest.approx((j.mean() + f.mean()) / 2)


def test_shape_errors() -> None:
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        j_score(np.zeros((4, 5)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="shape"):
        f_score(np.zeros((2, 3, 4)), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="H, W"):
        j_score(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="H, W"):
        f_score(np.zeros((1, 2, 3, 4)), np.zeros((1, 2, 3, 4)))


def test_summarize() -> None:
    out = summarize([(1.0, 0.5), (0.5, 0.0), (0.0, 1.0)])
    assert out["count"] == 3
    assert out["J"] == pytest.approx(0.5) and out["F"] == pytest.approx(0.5)
    assert out["J&F"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        summarize([])


def test_j_matches_pycocotools() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        h, w = rng.integers(1, 25, size=2)
        gt = rng.random((h, w)) > rng.random()
        pred = rng.random((h, w)) > rng.random()
        if not gt.any() or not pred.any():
            continue
        rles = [mask_utils.encode(np.asfortranarray(m.astype(np.uint8))) for m in (gt, pred)]
        ref = mask_utils.iou([rles[1]], [rles[0]], [0])[0, 0]
        assert j_score(gt, pred)[0] == pytest.approx(ref, abs=1e-9)


_masks = st.tuples(st.integers(1, 3), st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda s: st.tuples(arrays(np.bool_, s), arrays(np.bool_, s))
)


@settings(max_examples=150, deadline=None)
@given(_masks)
def test_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    gt, pred = pair
    j, f = j_score(gt, pred), f_score(gt, pred)
    assert j.shape == f.shape == (gt.shape[0],)
    np.testing.assert_array_equal(j, j_score(pred, gt))
    np.testing.assert_allclose(f, f_score(pred, gt), atol=1e-12)
    assert ((j >= 0) & (j <= 1) & (f >= 0) & (f <= 1)).all()
    np.testing.assert_array_equal(j_score(gt, gt), 1.0)
    np.testing.assert_array_equal(f_score(gt, gt), 1.0)
    for t in range(gt.shape[0]):
        g, p = gt[t], pred[t]
        assert f[t] == pytest.approx(_brute_f(g, p), abs=1e-12)
        if not g.any() and not p.any():
            assert j[t] == f[t] == 1.0
        elif not g.any() or not p.any():
            assert j[t] == 0.0
            # F uses boundary counts; an all-foreground frame has no boundary (DAVIS quirk).
            if not (g.all() or p.all()):
                assert f[t] == 0.0
