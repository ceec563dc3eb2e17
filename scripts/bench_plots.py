"""Draws the plots of docs/performance.md from what scripts/bench.sh measured.

throughput.png: durable events/s of meterd and Redis (appendfsync always) at each level of
connections x events in flight. latency.png: the distribution (CDF) of per-event ack latency.
"""

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = Path(sys.argv[1])
runs = {}
for line in (out / "results.txt").read_text().splitlines():
    fields = dict(re.findall(r"(\w+)=(\S+)", line))
    if "target" in fields:
        level = f'{fields["connections"]}x{fields["depth"]}'
        # The comparison runs come first; later meterd-only runs (memory, replay, drain) are not plotted.
        runs.setdefault(level, {}).setdefault(fields["target"], float(fields["events_per_sec"]))
levels = [level for level in runs if "redis" in runs[level]]

fig, ax = plt.subplots(figsize=(8, 4.5))
width = 0.38
for i, (target, color) in enumerate([("meterd", "#1f77b4"), ("redis", "#d62728")]):
    xs = [x + (i - 0.5) * width for x in range(len(levels))]
    ys = [runs[level].get(target, 0) for level in levels]
    bars = ax.bar(xs, ys, width, label=target if target == "meterd" else "Redis (AOF, appendfsync always)", color=color)
    ax.bar_label(bars, labels=[f"{y / 1000:.1f}k" for y in ys], fontsize=8)
ax.set_xticks(range(len(levels)), [f"{level.split('x')[0]} conn\n× {level.split('x')[1]} in flight" for level in levels])
ax.set_ylabel("durable events/s")
ax.set_yscale("log")
ax.set_title("Throughput vs concurrency (acknowledged only after fdatasync)")
ax.legend()
fig.tight_layout()
fig.savefig(out / "throughput.png", dpi=110)

fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 3.8), sharey=True)
for ax, level in zip(axes, levels):
    for target, color in [("meterd", "#1f77b4"), ("redis", "#d62728")]:
        path = out / f"latency-{target}-{level}.txt"
        if not path.exists():
            continue
        samples = [int(v) / 1000 for v in path.read_text().split()]
        if not samples:
            continue
        ys = [(i + 1) / len(samples) for i in range(len(samples))]
        ax.plot(samples, ys, label=target, color=color)
    ax.set_xscale("log")
    ax.set_xlabel("ack latency (ms)")
    ax.set_title(f"{level.split('x')[0]} conn × {level.split('x')[1]} in flight")
    ax.grid(True, which="both", alpha=0.3)
axes[0].set_ylabel("fraction of events")
axes[0].legend()
fig.tight_layout()
fig.savefig(out / "latency.png", dpi=110)
