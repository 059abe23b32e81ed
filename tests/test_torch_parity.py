"""Parity of fastxent with torch.nn.functional.cross_entropy (torch 2.13.0).

The reference values live in tests/fixtures/torch_parity_{float32,float64}.npz
and were produced by tests/fixtures/make_torch_fixtures.py (see its docstring for
the file layout and for how z_loss / softcap were composed with autograd).
PyTorch is not needed to run these tests.

Float32 tolerances: torch's own float32 results are not exactly rounded.  A
per-sample loss that is small compared with logsumexp(z) (e.g. 0.025 = lse - z_y
with |z| ~ 5) carries an absolute error of ~eps32 * |lse|, i.e. ~1e-7 absolute but
up to ~6e-6 relative, and gradient entries carry ~1e-7 absolute error.  The
exactly rounded answer therefore fails rtol=1e-6 with atol=0 on the loss (2 of 168
cases) and needs atol ~1.02e-7 on the gradient; the atols below keep a ~3x margin.
"""

import json
import os

import numpy as np
import pytest

import fastxent

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
DTYPES = ("float32", "float64")

# dtype -> (loss rtol, loss atol, grad rtol, grad atol)
TOLERANCES = {
    "float32": (1e-6, 1e-6, 1e-6, 3e-7),
    "float64": (1e-12, 1e-14, 1e-12, 1e-14),
}


def _load_cases(dtype_name):
    path = os.path.join(FIXTURE_DIR, f"torch_parity_{dtype_name}.npz")
    with np.load(path) as data:
        flat = {k: data[k] for k in data.files}
    index = json.loads(str(flat["index"]))
    cases = []
    for entry in index:
        shape = tuple(entry["shape"])

        def take(field, key, entry=entry):
            start, stop = entry[key]
            return flat[field][start:stop]

        if entry["target_kind"] == "labels":
            target = take("labels", "target").reshape(shape[:-1])
        else:
            target = take("probs", "target").reshape(shape)
        cases.append(
            dict(
                id=f"{dtype_name}-{entry['id']}-{entry['name']}",
                dtype=np.dtype(dtype_name),
                logits=take("logits", "logits").reshape(shape),
                target=target,
                loss=take("loss", "loss").reshape(entry["loss_shape"]),
                grad=take("grad", "grad").reshape(shape),
                options=dict(
                    reduction=entry["reduction"],
                    weight=None if entry["weight"] is None else take("weight", "weight"),
                    ignore_index=entry["ignore_index"],
                    label_smoothing=entry["label_smoothing"],
                    z_loss=entry["z_loss"],
                    softcap=entry["softcap"],
                ),
            )
        )
    return cases


CASES = [case for dt in DTYPES for case in _load_cases(dt)]


def _run(case):
    logits, target, opts = case["logits"], case["target"], case["options"]
    loss = fastxent.cross_entropy(logits, target, **opts)
    grad = fastxent.cross_entropy_grad(logits, target, **opts)
    loss2, grad2 = fastxent.cross_entropy_with_grad(logits, target, **opts)
    return loss, grad, loss2, grad2


def test_fixtures_loaded():
    assert len(CASES) == 2 * 216
    assert len({c["id"] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_torch_parity(case):
    loss, grad, loss2, grad2 = _run(case)
    loss, grad = np.asarray(loss), np.asarray(grad)
    loss2, grad2 = np.asarray(loss2), np.asarray(grad2)
    dtype = case["dtype"]
    lrtol, latol, grtol, gatol = TOLERANCES[dtype.name]

    assert loss.dtype == dtype and grad.dtype == dtype
    assert loss2.dtype == dtype and grad2.dtype == dtype
    assert loss.shape == case["loss"].shape
    assert grad.shape == case["grad"].shape

    np.testing.assert_allclose(loss, case["loss"], rtol=lrtol, atol=latol)
    np.testing.assert_allclose(grad, case["grad"], rtol=grtol, atol=gatol)

    # one shared kernel: the three entry points agree bit for bit
    np.testing.assert_array_equal(loss2, loss)
    np.testing.assert_array_equal(grad2, grad)


@pytest.mark.parametrize(
    "case", [c for c in CASES if c["dtype"] == np.float64], ids=lambda c: c["id"]
)
def test_reference_matches_torch(case):
    """The test suite's own oracle (tests/reference.py) agrees with PyTorch,
    including the inf/NaN pattern of a zero "mean" denominator."""
    import reference as ref

    loss, grad = ref.cross_entropy(case["logits"], case["target"], **case["options"])
    np.testing.assert_allclose(loss, case["loss"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, case["grad"], rtol=1e-12, atol=1e-14)


def _normwise(actual, expected):
    fin = np.isfinite(expected)
    if not fin.any():
        return 0.0
    err = np.abs(np.asarray(actual, np.float64)[fin] - expected[fin])
    return float(np.max(err) / max(np.max(np.abs(expected[fin])), np.finfo(np.float64).tiny))


def _max_rel(actual, expected):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    nz = (expected != 0) & np.isfinite(expected)
    if not nz.any():
        return 0.0
    with np.errstate(invalid="ignore"):
        return float(np.nanmax(np.abs(actual[nz] - expected[nz]) / np.abs(expected[nz])))


#: The gradient's largest error over a case, relative to its largest entry,
#: in units of the dtype's epsilon.  The per-case test above allows each
#: entry rtol (1e-6 in float32, 1e-12 in float64): up to 8 and 4 500 eps
#: on the largest entries; this bounds the error of the gradient as a
#: whole much tighter.
NORMWISE_EPS = 8


@pytest.mark.parametrize("dt", DTYPES)
def test_gradient_error_normwise_is_a_few_eps(dt):
    """Over every fixture case, the gradient differs from PyTorch's by at
    most NORMWISE_EPS eps of its largest entry; the failure message lists
    the largest errors (loss and gradient, elementwise and normwise) and
    the cases they come from."""
    eps = float(np.finfo(dt).eps)
    worst = {"loss rel": (0.0, ""), "grad rel": (0.0, ""), "grad normwise rel": (0.0, "")}
    for case in (c for c in CASES if c["dtype"].name == dt):
        loss, grad, _, _ = _run(case)
        errs = {
            "loss rel": _max_rel(loss, case["loss"]),
            "grad rel": _max_rel(grad, case["grad"]),
            "grad normwise rel": _normwise(grad, case["grad"]),
        }
        for k, v in errs.items():
            if v > worst[k][0]:
                worst[k] = (v, case["id"])
    summary = "\n".join(
        f"  {dt:8s} max {k:18s} {v:.3e} = {v / eps:.1f} eps  ({cid})"
        for k, (v, cid) in worst.items()
    )
    assert worst["grad normwise rel"][0] <= NORMWISE_EPS * eps, summary
