"""Fit the polynomials of fastxent's vectorised exponential (fastxent/_rowops.c).

After the reduction x = n ln2 + r, |r| <= ln2 / 2, the kernels compute

    exp(r) ~= 1 + r + r^2 * p(r)

with p of degree 4 for float32 (exp of degree 6) and of degree 9 for float64
(exp of degree 11).  This script fits p so that the *relative* error of
exp(r) is near-minimax on [-ln2/2, ln2/2] (Lawson's iteratively reweighted
least squares on Chebyshev points, residuals in long double), prints the
coefficients and the fit's own error bound.  The shipped coefficients are
these values rounded to the element type; the test suite checks the
resulting exp against NumPy/libm in ulps (tests/test_rowops.py).

Usage: python docs/fit_exp_polynomials.py   (NumPy only; about a second)
"""

import numpy as np

LD = np.longdouble
HALF_LN2 = LD("0.346573590279972654708616060729088284")


def fit(degree, points=4000, iterations=60):
    """Coefficients c[0..degree] of p (c[0] multiplies r^2) and the largest
    relative error of 1 + r + r^2 p(r) against exp(r)."""
    k = np.arange(points, dtype=LD)
    # A hair wider than the reduced range, which rounding can overstep.
    r = HALF_LN2 * LD(1.0001) * np.cos(np.pi * (k + LD(0.5)) / points)
    e = np.exp(r)
    g = (e - 1 - r) / (r * r)
    v = np.vander(r, degree + 1, increasing=True)
    weight = np.ones(points, dtype=LD)
    for _ in range(iterations):
        sw = np.sqrt(weight)
        a = (v * sw[:, None]).astype(np.float64)

        def solve(rhs, a=a, sw=sw):
            return np.linalg.lstsq(a, (rhs * sw).astype(np.float64), rcond=None)[0].astype(LD)

        c = solve(g)
        for _ in range(3):  # refine the float64 solve with long-double residuals
            c = c + solve(g - v @ c)
        err = np.abs((v @ c - g) * r * r / e)
        weight = weight * err
        weight /= weight.sum()
    return c, float(err.max())


def main():
    for name, degree, cast in (("float32", 4, np.float32), ("float64", 9, np.float64)):
        c, err = fit(degree)
        print(f"{name}: exp of degree {degree + 2}, max relative error {err:.3g} before rounding")
        for i in reversed(range(degree + 1)):
            print(f"    r^{i + 2}: {cast(c[i])!r}")


if __name__ == "__main__":
    main()
