"""
SoftmaxRegression against LogisticRegression
============================================

:class:`fastxent.estimators.SoftmaxRegression` minimises the objective of
scikit-learn's ``LogisticRegression(solver="lbfgs")`` with the loss and
gradient of the fused linear cross-entropy.  Both fit the same data here, at
a few sizes small enough for the documentation build; the fit times are
measured on the machine that builds these pages, so read them as a sketch
(the benchmark pages hold the recorded figures).
"""

import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression

from fastxent.estimators import SoftmaxRegression

sizes = [500, 1_000, 2_000, 4_000]
times = {"fastxent SoftmaxRegression": [], "sklearn LogisticRegression": []}
for n in sizes:
    X, y = make_classification(
        n_samples=n, n_features=30, n_informative=20, n_classes=8, random_state=0
    )
    fitted = {}
    for name, est in (
        ("fastxent SoftmaxRegression", SoftmaxRegression(C=1.0, max_iter=200)),
        ("sklearn LogisticRegression", LogisticRegression(C=1.0, max_iter=200)),
    ):
        t0 = time.perf_counter()
        fitted[name] = est.fit(X, y)
        times[name].append(time.perf_counter() - t0)
    fx, sk = fitted.values()
    agree = (fx.predict(X) == sk.predict(X)).mean()
    print(f"n = {n:5d}: predictions agree on {agree:.2%} of the samples")

fig, ax = plt.subplots(figsize=(6, 3.5))
for name, t in times.items():
    ax.loglog(sizes, np.array(t) * 1e3, "o-", label=name)
ax.set_xlabel("samples n (30 features, 8 classes)")
ax.set_ylabel("fit time, ms")
ax.set_title("Fit time against n on the build machine")
ax.legend()
fig.tight_layout()
plt.show()
