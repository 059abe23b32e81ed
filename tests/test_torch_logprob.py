"""Parity of token_logprobs, token_logprobs_vjp and distillation_loss_with_grad
with PyTorch (torch 2.13.0): log_softmax + gather, the entropy, F.kl_div with
log_target=True and the generalised JSD formula.

The values live in tests/fixtures/torch_logprob_{float32,float64}.npz, made
by tests/fixtures/make_torch_logprob_fixtures.py (its docstring says how);
PyTorch is not needed to run these tests.
"""

import json
import os

import numpy as np
import pytest

import fastxent

FIXTURE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# dtype -> (rtol, atol): torch's float32 values are not exactly rounded (see
# test_torch_parity.py), and the JSD's log of the mixture adds a few ulp.
TOL = {"float32": (2e-5, 2e-6), "float64": (1e-11, 1e-13)}


def _cases():
    out = []
    for name in TOL:
        with np.load(os.path.join(FIXTURE_DIR, f"torch_logprob_{name}.npz")) as data:
            flat = {k: data[k] for k in data.files}
        for entry in json.loads(str(flat["index"])):
            fields = {
                k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(entry["id"] + "/")
            }
            out.append(
                pytest.param(name, entry, fields, id=f"{name}-{entry['id']}-{entry['kind']}")
            )
    return out


@pytest.mark.parametrize(("dtype", "entry", "f"), _cases())
def test_matches_torch(dtype, entry, f):
    rtol, atol = TOL[dtype]
    opts = entry["options"]
    if entry["kind"] == "logprob":
        lp, ent = fastxent.token_logprobs(f["logits"], f["target"], return_entropy=True, **opts)
        assert lp.dtype == np.dtype(dtype)
        np.testing.assert_allclose(lp, f["logprobs"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(ent, f["entropy"], rtol=rtol, atol=atol)
        g = fastxent.token_logprobs_vjp(f["logits"], f["target"], f["gl"], f["ge"], **opts)
        np.testing.assert_allclose(g, f["grad"], rtol=rtol, atol=atol)
    else:
        loss, g = fastxent.distillation_loss_with_grad(f["student"], f["teacher"], **opts)
        np.testing.assert_allclose(loss, f["loss"], rtol=rtol, atol=atol)
        np.testing.assert_allclose(g, f["grad"], rtol=rtol, atol=atol)
