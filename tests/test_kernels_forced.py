"""Every loss kernel, chosen directly: the option matrix and the PyTorch
fixtures through the row, tile and two-class kernels.

Which kernel runs is decided in one place (``choose_kernel`` in
``_kernels.pyx``): the tile kernel (two-class kernel for m = 2) for class
indices without a soft-cap up to a per-dtype number of classes, the row
kernel otherwise.  Through m alone, tests would reach each kernel only for
the shapes that happen to select it (float32's row kernel with class
indices needs m > 100, for example); here the test hook
``_kernels.force_kernel`` makes every case that a kernel can take run on
it, and ``_kernels.kernel_for`` confirms which one ran.
"""

from __future__ import annotations

import numpy as np
import pytest
import test_options as opt_tests
import test_torch_parity as parity
from helpers import REDUCTIONS, check_cross_entropy, make_logits

import fastxent
from fastxent import _kernels

KERNELS = ["row", "tile", "two_class"]


@pytest.fixture
def kernel(request):
    previous = _kernels.force_kernel(request.param)
    yield request.param
    _kernels.force_kernel(previous)


def takes(kernel, labels, m, softcap):
    """Whether ``kernel`` can take the case (else the normal choice runs)."""
    if kernel == "row":
        return True
    ok = labels and not softcap and m <= 128
    return ok and (m == 2 if kernel == "two_class" else True)


def test_force_kernel_hook():
    assert _kernels.kernel_for(True, 10, 0.0, "float32") == "tile"
    assert _kernels.kernel_for(True, 2, 0.0, "float64") == "two_class"
    assert _kernels.kernel_for(True, 101, 0.0, "float32") == "row"
    assert _kernels.kernel_for(False, 10, 0.0, "float32") == "row"
    previous = _kernels.force_kernel("row")
    try:
        assert _kernels.kernel_for(True, 2, 0.0, "float32") == "row"
        _kernels.force_kernel("tile")
        assert _kernels.kernel_for(True, 2, 0.0, "float32") == "tile"
        assert _kernels.kernel_for(True, 120, 0.0, "float64") == "tile"
        # a case the tile kernel cannot take keeps the normal choice
        assert _kernels.kernel_for(True, 10, 3.0, "float32") == "row"
        assert _kernels.kernel_for(True, 200, 0.0, "float32") == "row"
    finally:
        _kernels.force_kernel(previous)
    with pytest.raises(ValueError, match="kernel must be one of"):
        _kernels.force_kernel("simd")


SHAPES = [(70, 2), (70, 6), (9, 70), (67, 120)]

# Only the combinations each kernel takes (the others run on the row kernel,
# which the "row" entries cover).
MATRIX = [
    pytest.param(k, name, kind, shape, id=f"{k}-{name}-{kind}-{shape[0]}x{shape[1]}")
    for k in KERNELS
    for name in opt_tests.OPTIONS
    for kind in ("int64", "probs")
    for shape in SHAPES
    if takes(k, kind != "probs", shape[1], name in ("softcap", "all"))
]


@pytest.mark.parametrize(("kernel", "name", "target_kind", "shape"), MATRIX, indirect=["kernel"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_option_matrix_on_every_kernel(kernel, name, dtype, reduction, target_kind, shape, rng):
    n, m = shape
    opts = opt_tests.options_for(name, rng, n=n, m=m)
    labels = target_kind != "probs"
    assert _kernels.kernel_for(labels, m, opts.get("softcap") or 0.0, np.dtype(dtype).name) == (
        kernel
    )
    t = opt_tests.target_for(target_kind, rng, opts, n=n, m=m, dtype=dtype)
    z = make_logits(rng, (n, m), dtype)
    if "label_smoothing" not in opts or "weight" in opts:
        z[::4, 1] = -np.inf
        if target_kind == "probs":
            t[::4, 1] = 0
        else:
            t[::4][t[::4] == 1] = 0
    check_cross_entropy(z, t, reduction=reduction, **opts)


def _fixture_takes(k, case):
    logits, target = case["logits"], case["target"]
    return takes(k, target.ndim == logits.ndim - 1, logits.shape[-1], case["options"]["softcap"])


FIXTURES = [
    pytest.param(k, case, id=f"{k}-{case['id']}")
    for k in KERNELS
    for case in parity.CASES
    if _fixture_takes(k, case)
]


@pytest.mark.parametrize(("kernel", "case"), FIXTURES, indirect=["kernel"])
def test_torch_fixtures_on_every_kernel(kernel, case):
    logits, target, options = case["logits"], case["target"], case["options"]
    loss, grad = fastxent.cross_entropy_with_grad(logits, target, **options)
    lrtol, latol, grtol, gatol = parity.TOLERANCES[case["dtype"].name]
    np.testing.assert_allclose(np.asarray(loss), case["loss"], rtol=lrtol, atol=latol)
    np.testing.assert_allclose(grad, case["grad"], rtol=grtol, atol=gatol)


def test_every_kernel_is_reached():
    for k in KERNELS:
        assert any(p.values[0] == k for p in MATRIX), k
    # the PyTorch fixtures have no two-class case (the option matrix has)
    for k in ("row", "tile"):
        assert any(p.values[0] == k for p in FIXTURES), k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_agree_with_each_other(dtype, rng):
    """Same case on each kernel: within a few ulps of each other (they
    reduce in different orders, so not bit for bit)."""
    z = make_logits(rng, (130, 2), dtype)
    y = rng.integers(0, 2, 130)
    results = {}
    for k in KERNELS:
        previous = _kernels.force_kernel(k)
        try:
            results[k] = fastxent.cross_entropy_with_grad(
                z, y, reduction="none", label_smoothing=0.1, z_loss=1e-3
            )
        finally:
            _kernels.force_kernel(previous)
    tol = 64 * np.finfo(dtype).eps
    for k in ("tile", "two_class"):
        np.testing.assert_allclose(results[k][0], results["row"][0], rtol=tol, atol=tol)
        np.testing.assert_allclose(results[k][1], results["row"][1], rtol=tol, atol=tol)
