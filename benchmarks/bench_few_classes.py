"""Few classes: loss + gradient against the copy floor and the exps alone.

For each shape and dtype, at 1 and 2 threads: :func:`fastxent.cross_entropy_with_grad`
into a preallocated ``out=``, against the copy floor (``fastxent.bench.copy_floor``:
the faster of ``np.copyto`` on one thread and split over two Python threads;
NumPy releases the GIL) and against the kernels' own exponential over the
same number of elements (``fastxent.bench.kernel_exps`` on one thread,
divided by the thread count: the exps alone, ideally split).  Also the same
for float16 and bfloat16 logits against float32 (``--half``).  Run::

    python benchmarks/bench_few_classes.py [--half] [--repeats 25]

Each time is the best per-call time of ``--repeats`` timings of
``fastxent.bench.time_call``.  Ratios are of times measured in the same
process, minutes apart at most; the machine is shared, so rerun before
believing a difference under ~15 %.
"""

from __future__ import annotations

import argparse
import functools

import numpy as np

import fastxent
from fastxent.bench import build_info, copy_floor, kernel_exps, make_case, time_call

SHAPES = [(1_000_000, 2), (100_000, 10), (65_536, 100), (16_384, 1_000)]


def best(fn, repeats, *args, **kwargs):
    """The best per-call time of ``repeats`` timings of ``fn(*args, **kwargs)``."""
    return min(time_call(functools.partial(fn, *args, **kwargs), repeats)[1])


def few_classes(repeats: int) -> None:
    print(build_info()["simd"])
    for n, m in SHAPES:
        for dt in ("float32", "float64"):
            z, y = make_case(n, m, dt)
            out = np.zeros_like(z)
            flat, zneg = out.reshape(-1), -np.abs(z).reshape(-1)
            with copy_floor(out, z) as copy:
                copy1 = best(copy, repeats)
            with copy_floor(out, z, 2) as copy:
                copy2 = best(copy, repeats)
            exps = best(kernel_exps, repeats, zneg, flat)
            cells = []
            for t in (1, 2):
                fx = best(fastxent.cross_entropy_with_grad, repeats, z, y, out=out, num_threads=t)
                copy = copy1 if t == 1 else min(copy1, copy2)
                cells.append(f"{t}T {fx * 1e3:.3f} ms = {fx / copy:.2f}x copy, "
                             f"{fx / (exps / t):.2f}x exps")  # fmt: skip
            print(f"{n}x{m} {dt}: " + "  ".join(cells))


def half_precision(repeats: int) -> None:
    import ml_dtypes

    for n, m in [(4096, 32_000), (65_536, 100), (100_000, 10)]:
        z32, y = make_case(n, m, "float32")
        times = {}
        for name, dt in (("float32", np.float32), ("float16", np.float16),
                         ("bfloat16", ml_dtypes.bfloat16)):  # fmt: skip
            z = z32.astype(dt)
            out = np.empty_like(z)
            times[name] = best(
                fastxent.cross_entropy_with_grad, repeats, z, y, out=out, num_threads=2
            )
        f32 = times["float32"]
        print(f"{n}x{m} 2T: " + ", ".join(f"{k} {v * 1e3:.1f} ms ({v / f32:.2f}x float32)"
                                         for k, v in times.items()))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=25)
    p.add_argument("--half", action="store_true", help="float16/bfloat16 against float32")
    args = p.parse_args()
    if args.half:
        half_precision(args.repeats)
    else:
        few_classes(args.repeats)


if __name__ == "__main__":
    main()
