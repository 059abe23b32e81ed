"""
Recorded benchmark results
==========================

The benchmark pages render the recorded JSON results under
``docs/benchmarks/`` as tables; this example draws two of them: fastxent's
loss + gradient against its floor (a copy of the logits) and, like for
like, each peer's time divided by fastxent's, on the Intel Xeon
(Sapphire Rapids) VM, float32, 2 threads.
"""

import json
import os
import re

import matplotlib.pyplot as plt
import numpy as np

here = os.path.dirname(os.path.abspath(__file__)) if "__file__" in globals() else os.getcwd()
path = os.path.join(here, "..", "benchmarks", "xeon-sapphire-rapids-2vcpu.json")
if not os.path.exists(path):  # sphinx-gallery runs the script from docs/gallery
    path = os.path.join("..", "benchmarks", "xeon-sapphire-rapids-2vcpu.json")
with open(path, encoding="utf-8") as f:
    data = json.load(f)
tables = {t["id"]: t for t in data["tables"]}
peers = tables[
    "report-speed-up-of-fastxent-loss-grad-over-each-peer-like-for-like-float32-2-threads"
]
floors = tables["report-fastxent-against-the-memory-floors-float32-2-threads"]


def ratio(cell):
    """'9.52 (18.32×)' -> 18.32; '1.98×' -> 1.98; '–' -> nan."""
    m = re.search(r"([\d.]+)×", cell)
    return float(m.group(1)) if m else np.nan


shapes = [r[0] for r in peers["rows"]]
names = ["NumPy naive", "torch", "scikit-learn", "JAX"]
cols = [peers["columns"].index(c) for c in names]

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
ax = axes[0]
x = np.arange(len(shapes))
for j, (name, c) in enumerate(zip(names, cols, strict=True)):
    ax.bar(x + (j - 1.5) * 0.2, [ratio(r[c]) for r in peers["rows"]], 0.2, label=name)
ax.axhline(1, color="k", lw=0.8)
ax.set_xticks(x, shapes, rotation=20)
ax.set_ylabel("peer time / fastxent time")
ax.set_title("Like for like, float32, 2 threads")
ax.legend(fontsize=8)

ax = axes[1]
c = floors["columns"].index("× T-copy")
ax.bar([r[0] for r in floors["rows"]], [ratio(r[c]) for r in floors["rows"]])
ax.axhline(1, color="k", lw=0.8)
ax.tick_params(axis="x", rotation=20)
ax.set_ylabel("loss+grad time / 2-thread copy time")
ax.set_title("Against the copy floor (1 = the floor)")
fig.suptitle(f"{data['machine']['machine']}, commit {peers['commit']}, {peers['date']}")
fig.tight_layout()
plt.show()
