"""Draw throughput against client count from a results file.

    python -m bench.plot bench/results/latest.json docs/bench-throughput.png

Needs matplotlib (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def plot(results: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(results.read_text())
    rows = data["measurements"]
    workloads = sorted({r["workload"] for r in rows}, key=lambda w: (w != "hot", w))
    fig, axes = plt.subplots(1, len(workloads), figsize=(6 * len(workloads), 4.5), squeeze=False)
    for ax, workload in zip(axes[0], workloads, strict=True):
        impls = sorted(
            {
                r["implementation"]
                for r in rows
                if r["workload"] == workload and not r["implementation"].startswith("batch")
            }
        )
        for impl in impls:
            points = sorted(
                (r["clients"], r["per_second"])
                for r in rows
                if r["workload"] == workload and r["implementation"] == impl
            )
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=impl)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["clients"] for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("client processes")
        ax.set_ylabel("reserve+commit cycles per second")
        ax.set_title(
            f"{workload} ({data['settings'].get('server_version', '?')}, "
            f"{data['machine']['cpus']} cores)"
        )
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    plot(Path(sys.argv[1]), Path(sys.argv[2]))
