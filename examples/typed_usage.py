"""Typed use of fastxent: multinomial logistic regression by gradient descent.

``mypy --strict fastxent examples/typed_usage.py`` checks this file in CI
(.ci/lint.sh).  The annotated assignments below are deliberate: they only
type-check because ``reduction="mean"``/``"sum"`` return a NumPy floating
scalar and ``reduction="none"`` returns an array (the overloads in
``fastxent/_loss.py``).  Run it with ``python examples/typed_usage.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

import fastxent

Floats = NDArray[np.floating[Any]]


def make_data(
    n: int, d: int, m: int, seed: int = 0
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Features and labels drawn from a random linear model."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    w_true = rng.standard_normal((d, m))
    y = np.argmax(x @ w_true + 0.5 * rng.standard_normal((n, m)), axis=1)
    return x, y.astype(np.int64)


def fit(
    x: NDArray[np.float64], y: NDArray[np.int64], m: int, *, steps: int = 200, lr: float = 0.5
) -> tuple[NDArray[np.float64], list[float]]:
    """Gradient descent on the mean cross-entropy; returns weights and the loss history."""
    w = np.zeros((x.shape[1], m))
    history: list[float] = []
    for _ in range(steps):
        logits = x @ w
        loss: np.floating[Any]
        grad: Floats
        loss, grad = fastxent.cross_entropy_with_grad(logits, y, label_smoothing=0.05)
        history.append(float(loss))
        # grad is dL/dlogits (already divided by n under "mean").
        w -= lr * (x.T @ grad)
    return w, history


def main() -> None:
    x, y = make_data(n=2000, d=8, m=4)
    w, history = fit(x, y, m=4)
    logits = x @ w

    total: np.floating[Any] = fastxent.cross_entropy(logits, y, reduction="sum")
    per_sample: Floats = fastxent.cross_entropy(logits, y, reduction="none")
    probs: Floats = fastxent.softmax(logits)
    lse: Floats = fastxent.logsumexp(logits)

    assert history[-1] < history[0]
    assert np.isclose(float(total), float(per_sample.sum()))
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert np.allclose(lse, np.log(np.exp(logits).sum(axis=1)))
    accuracy = float(np.mean(np.argmax(probs, axis=1) == y))
    print(f"loss {history[0]:.4f} -> {history[-1]:.4f}, training accuracy {accuracy:.3f}")


if __name__ == "__main__":
    main()
