"""
A small Dask fit
================

:class:`fastxent.dask.SoftmaxRegression` fits the multinomial logistic
regression over a dask array, one pass over the blocks per L-BFGS step.  The
cluster here is a ``LocalCluster(processes=False)``: workers are threads of
this process, enough to show the calls (on a real cluster only the
``Client`` line changes).  The fit reaches the in-memory estimator's
optimum: the plot sets the two fits' coefficients against each other.
"""

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
from distributed import Client, LocalCluster

from fastxent.dask import SoftmaxRegression
from fastxent.estimators import SoftmaxRegression as InMemorySoftmaxRegression

cluster = LocalCluster(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None)
client = Client(cluster)

rs = da.random.RandomState(0)
X = rs.standard_normal((40_000, 10), chunks=(10_000, 10))
labels = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5) + (X[:, 2] > 1)  # 4 classes
clf = SoftmaxRegression(C=1.0).fit(X, labels)
accuracy = (clf.predict(X) == labels).mean().compute()
print(f"{clf.n_iter_[0]} L-BFGS iterations, training accuracy {accuracy:.3f}")

ref = InMemorySoftmaxRegression(C=1.0).fit(X.compute(), labels.compute())
print(f"largest coefficient difference {np.abs(clf.coef_ - ref.coef_).max():.2e}")

client.close()
cluster.close()

fig, ax = plt.subplots(figsize=(4.5, 4))
ax.plot(ref.coef_.ravel(), clf.coef_.ravel(), "o")
lim = np.abs(ref.coef_).max() * 1.1
ax.plot([-lim, lim], [-lim, lim], "k:", lw=1)
ax.set_xlabel("coef_, in memory")
ax.set_ylabel("coef_, Dask")
ax.set_title("The same optimum")
fig.tight_layout()
plt.show()
