"""Two builds of fastxent side by side: loss + gradient into ``out=``.

Each build is a checkout with its compiled module in place (``python setup.py
build_ext --inplace``); the two run in alternating processes (A, B, A, B, ...)
so that a drifting machine affects both alike.  For each shape and dtype a
process times ``cross_entropy_with_grad(z, y, out=o, num_threads=NT)`` (best
of 15 calls after a warm-up); the ratios B / A are per round, then
summarised.  With ``NT=1`` the clock is the thread's CPU time, which
preemption by other programs on a shared machine does not inflate.  Run::

    git worktree add /tmp/old 40fb5fb && (cd /tmp/old && python setup.py build_ext --inplace)
    NT=1 env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/compare_builds.py /tmp/old . [rounds]

``CASES=1000000x2,100000x10`` picks the shapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

# The child process builds its cases itself rather than with fastxent.bench's
# make_case: it also runs the builds of commits older than that module.
DEFAULT_CASES = "1000000x2,100000x10,65536x100,16384x1000,1024x32000"

CHILD = r"""
import json, os, time
import numpy as np, fastxent
nt = int(os.environ.get("NT", "1"))
clock = time.thread_time if nt == 1 else time.perf_counter
res = {}
for case in os.environ.get("CASES", "DEFAULT_CASES").split(","):
    n, m = map(int, case.split("x"))
    for dt in ("float32", "float64"):
        rng = np.random.default_rng(0)
        z = rng.standard_normal((n, m)).astype(dt)
        y = rng.integers(0, m, n)
        o = np.empty_like(z)
        fastxent.cross_entropy_with_grad(z, y, out=o, num_threads=nt)
        ts = []
        for _ in range(15):
            t = clock()
            fastxent.cross_entropy_with_grad(z, y, out=o, num_threads=nt)
            ts.append(clock() - t)
        res[f"{n}x{m}-{dt}"] = min(ts)
print(json.dumps(res))
""".replace("DEFAULT_CASES", DEFAULT_CASES)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    a, b = argv[0], argv[1]
    rounds = int(argv[2]) if len(argv) > 2 else 4
    runs: dict[str, list[dict[str, float]]] = {a: [], b: []}
    for _ in range(rounds):
        for root in (a, b):
            env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
            out = subprocess.run(
                [sys.executable, "-c", CHILD], env=env, cwd="/", capture_output=True, text=True
            )
            if out.returncode:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            runs[root].append(json.loads(out.stdout))
    for key in runs[a][0]:
        ta = np.array([r[key] for r in runs[a]])
        tb = np.array([r[key] for r in runs[b]])
        ratio = tb / ta
        print(
            f"{key:>22}: A {1e3 * np.median(ta):8.3f} ms  B {1e3 * np.median(tb):8.3f} ms  "
            f"B/A median {np.median(ratio):.3f} (min {ratio.min():.3f}, max {ratio.max():.3f}); "
            f"B/A of the minima {tb.min() / ta.min():.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
