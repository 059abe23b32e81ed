"""
A gradient-boosting objective with label smoothing
==================================================

:func:`fastxent.objectives.xgboost_multiclass` (or
:func:`~fastxent.objectives.lightgbm_multiclass`) is a custom multiclass
objective with options the libraries' built-in objectives lack, here label
smoothing and class weights.  With the default options it *is* the built-in
objective, so the first curve retraces XGBoost's own ``multi:softprob``.
The example uses XGBoost when it is installed, else LightGBM, and says so
when neither is.
"""

import importlib.util

import matplotlib.pyplot as plt
import numpy as np

import fastxent
from fastxent.objectives import lightgbm_multiclass, xgboost_multiclass

rng = np.random.default_rng(0)
n, k = 2_000, 4
X = rng.standard_normal((n, 6))
y = np.argmax(X[:, :k] + 0.7 * rng.standard_normal((n, k)), axis=1)
X_valid = rng.standard_normal((n, 6))
y_valid = np.argmax(X_valid[:, :k] + 0.7 * rng.standard_normal((n, k)), axis=1)
rounds = 40
options = {
    "plain": {},
    "label_smoothing=0.1": {"label_smoothing": 0.1},
    "weight (class 3 × 3)": {"weight": [1.0, 1.0, 1.0, 3.0]},
}

curves = {}
if importlib.util.find_spec("xgboost") is not None:
    import xgboost as xgb

    library = "XGBoost"
    dtrain = xgb.DMatrix(X, label=y)
    dvalid = xgb.DMatrix(X_valid)
    params = {"num_class": k, "base_score": 0.5, "max_depth": 3, "nthread": 1}
    params["disable_default_eval_metric"] = True
    for name, opts in options.items():
        bst = xgb.train(params, dtrain, num_boost_round=rounds, obj=xgboost_multiclass(**opts))
        curves[name] = [
            fastxent.cross_entropy(
                bst.predict(dvalid, output_margin=True, iteration_range=(0, r)), y_valid
            )
            for r in range(1, rounds + 1)
        ]
elif importlib.util.find_spec("lightgbm") is not None:
    import lightgbm as lgb

    library = "LightGBM"
    for name, opts in options.items():
        params = {"objective": lightgbm_multiclass(**opts), "num_class": k, "verbose": -1}
        params.update(max_depth=3, num_threads=1)
        bst = lgb.train(params, lgb.Dataset(X, label=y), num_boost_round=rounds)
        curves[name] = [
            fastxent.cross_entropy(bst.predict(X_valid, raw_score=True, num_iteration=r), y_valid)
            for r in range(1, rounds + 1)
        ]
else:
    library = None
    print('Neither XGBoost nor LightGBM is installed: pip install "fastxent[xgboost]"')

if library is not None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot(range(1, rounds + 1), curve, label=name)
        print(f"{library}, {name}: validation log-loss {curve[-1]:.4f} after {rounds} rounds")
    ax.set_xlabel("boosting round")
    ax.set_ylabel("validation log-loss (plain)")
    ax.set_title(f"{library} with fastxent's multiclass objective")
    ax.legend()
    fig.tight_layout()
    plt.show()
