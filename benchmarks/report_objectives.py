"""The "Gradient-boosting objectives" section of ``report.py``:
the groups of ``test_bench_objectives.py``, one pair of tables per thread
count.  Every ratio divides two numbers of the same group and run."""

from __future__ import annotations

from collections import defaultdict


def _t(impls, name):
    rec = impls.get(name)
    return None if rec is None else rec["t"]


def _ms(t):
    return "–" if t is None else f"{t * 1e3:.3g}"


def _ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}×"


def _share(part, whole):
    return "–" if part is None or whole is None or whole == 0 else f"{100 * part / whole:.1f} %"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def objectives_section(groups):
    """Markdown lines for the objective groups (empty if there are none)."""
    by_threads = defaultdict(dict)  # threads -> {n: impls}
    for name, impls in groups.items():
        if name.startswith("objective-"):
            rec = next(iter(impls.values()))
            by_threads[rec["threads"]][int(rec["case"].split("x")[0])] = impls
    out = []
    for threads, per_n in sorted(by_threads.items()):
        big_n = max(per_n)
        big = per_n[big_n]
        k = next(iter(big.values()))["case"].split("x")[1]
        fx = _t(big, "objective_fastxent")
        builtin = big.get("round_builtin", {}).get("getgradient_s")
        rows = [
            ["fastxent `xgboost_multiclass()`", _ms(fx), "1.00×"],
            ["NumPy: XGBoost's demo objective, vectorised", _ms(_t(big, "objective_numpy"))]
            + [_ratio(_t(big, "objective_numpy"), fx)],
            ["XGBoost's built-in gradient (monitor: `GetGradient`)", _ms(builtin)]
            + [_ratio(builtin, fx)],
        ]
        small_n = min(per_n)
        small = per_n[small_n]
        loop, fx_small = _t(small, "objective_numpy_loop"), _t(small, "objective_fastxent")
        if small_n != big_n and loop is not None:
            rows.append(
                [
                    f"XGBoost's demo as written (Python loops), {small_n} rows",
                    f"{_ms(loop)} (fastxent {_ms(fx_small)})",
                    _ratio(loop, fx_small),
                ]
            )
        rb = _t(big, "round_builtin")
        rounds = [
            ['`objective="multi:softprob"` (built-in)', _ms(rb), "1.00×", _share(builtin, rb)],
            ["`obj=xgboost_multiclass()`", _ms(_t(big, "round_fastxent"))]
            + [_ratio(_t(big, "round_fastxent"), rb), _share(fx, _t(big, "round_fastxent"))],
            ["`obj=` the vectorised NumPy demo", _ms(_t(big, "round_numpy"))]
            + [
                _ratio(_t(big, "round_numpy"), rb),
                _share(_t(big, "objective_numpy"), _t(big, "round_numpy")),
            ],
            ["precomputed gradients (`Booster.boost`)", _ms(_t(big, "round_given_grad"))]
            + [_ratio(_t(big, "round_given_grad"), rb), "–"],
        ]
        plural = "s" if threads > 1 else ""
        out += [
            f"## Gradient-boosting objectives (XGBoost, {big_n}×{k} float32, "
            f"{threads} thread{plural})",
            "",
            "One call of each objective (× fastxent: its time / fastxent's):",
            "",
            *_table(["objective", "ms per call", "× fastxent"], rows),
            "",
            "One boosting round (`Booster.update`, hist, depth 6) with each objective; "
            "the objective's share of that round:",
            "",
            *_table(["round with", "ms", "× built-in round", "objective's share"], rounds),
            "",
        ]
    return out
