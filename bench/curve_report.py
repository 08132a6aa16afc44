"""The cost curves' table (curves.md) and plots (PNG)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.curve_runs import FORMATS


def table(points: list[dict[str, Any]]) -> str:
    cols = [
        ("curve", "curve"),
        ("n", "clients/tasks"),
        ("format", "format"),
        ("saturation_delivered_per_s", "saturation deliveries/s"),
        ("rate", "paced events/s (per task)"),
        ("delivered_per_s", "paced deliveries/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_us_gateway", "gateway CPU us/delivery"),
        ("cpu_us_proxy", "proxy CPU us/delivery"),
        ("cpu_us_tasks", "tasks CPU us/event"),
        ("rss_mib", "gateway RSS MiB"),
        ("fds", "gateway fds"),
        ("lost_connections", "lost conns"),
        ("error", "not measured"),
    ]
    lines = [
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for p in points:
        lines.append("| " + " | ".join(_cell(p.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.1f}" if v < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def plot(points: list[dict[str, Any]], into: Path) -> list[Path]:
    """One PNG per curve: throughput, p99 and gateway CPU per delivery against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for curve, xlabel in (("clients", "clients of one task"), ("tasks", "concurrent tasks")):
        # (the deflate A/B is one point per case: the table shows it)
        pts = [p for p in points if p["curve"] == curve]
        if not pts:
            continue
        metrics = [
            ("saturation_delivered_per_s", "saturation deliveries/s"),
            ("p99_ms", "p99 latency, ms (paced)"),
            ("cpu_us_gateway", "gateway CPU µs per delivery"),
            ("rss_mib", "gateway RSS, MiB"),
        ]
        metrics = [m for m in metrics if any(p.get(m[0]) is not None for p in pts)]
        fig, grid = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
        axes = list(grid[0])
        for ax, (key, title) in zip(axes, metrics, strict=True):
            for label, _, _ in FORMATS:
                xs = [p["n"] for p in pts if p["format"] == label and p.get(key) is not None]
                ys = [p[key] for p in pts if p["format"] == label and p.get(key) is not None]
                if xs:
                    ax.plot(xs, ys, marker="o", label=label)
            ax.set_xscale("log")
            if key != "rss_mib":
                ax.set_yscale("log")
            ax.set_title(title, fontsize=10)
            ax.set_xlabel(xlabel)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = into / f"curve-{curve}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written
