"""Result rows: statistics over repetitions, the printed table and its JSON form."""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Stat:
    """A metric over repetitions: median and range (``None`` = not available)."""

    samples: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.samples)

    @property
    def median(self) -> float | None:
        return statistics.median(self.samples) if self.samples else None

    @property
    def lo(self) -> float | None:
        return min(self.samples) if self.samples else None

    @property
    def hi(self) -> float | None:
        return max(self.samples) if self.samples else None


@dataclass
class Row:
    """One line of the table: a metric of the real system against one baseline."""

    scenario: str
    metric: str
    unit: str
    value: Stat
    baseline_name: str = ""
    baseline: Stat | None = None
    # ("min", 0.5) = ratio value/baseline must be >= 0.5; ("max", 2.0) = <= 2.0;
    # ("abs_max", 200) = the value itself must be <= 200 (in ``unit``), "abs_min" >=;
    # None = informational.
    target: tuple[str, float] | None = None
    note: str = ""

    def add(self, value: float, baseline: float | None = None) -> None:
        """One repetition's sample (and its baseline's, for a row that has one)."""
        self.value.samples.append(value)
        if baseline is not None:
            assert self.baseline is not None, f"{self.metric}: no baseline declared"
            self.baseline.samples.append(baseline)

    @property
    def ratio(self) -> float | None:
        v = self.value.median
        b = self.baseline.median if self.baseline else None
        if v is None or not b:
            return None
        return v / b

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        kind, x = self.target
        return {
            "min": f">= {x:g}x",
            "max": f"<= {x:g}x",
            "abs_max": f"<= {x:g} {self.unit}",
            "abs_min": f">= {x:g} {self.unit}",
        }[kind]

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        kind, x = self.target
        if kind in ("abs_max", "abs_min"):
            v = self.value.median
            if v is None:
                return None
            return v <= x if kind == "abs_max" else v >= x
        r = self.ratio
        if r is None:
            return None
        return r >= x if kind == "min" else r <= x

    def to_json(self) -> dict[str, Any]:
        def stat(s: Stat | None) -> dict[str, Any] | None:
            if s is None:
                return None
            return {"median": s.median, "min": s.lo, "max": s.hi, "samples": s.samples}

        d = asdict(self)
        d.update(
            value=stat(self.value),
            baseline=stat(self.baseline),
            ratio=self.ratio,
            target=self.target_text,
            met=self.met,
        )
        return d


def _num(x: float | None) -> str:
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _cell(s: Stat | None) -> str:
    if s is None:
        return "-"
    if not s.ok:
        return "n/a (not available)"
    if len(s.samples) == 1:
        return _num(s.median)
    return f"{_num(s.median)} ({_num(s.lo)}-{_num(s.hi)})"


def render(rows: list[Row]) -> str:
    """The table as aligned text: median (min-max) over repetitions."""
    head = ["scenario", "metric", "unit", "value", "baseline", "baseline value", "ratio"]
    head += ["target", "met?"]
    lines = [head]
    for r in rows:
        met = {True: "MET", False: "NOT MET", None: "-"}[r.met]
        if r.target is not None and r.met is None:
            met = "n/a"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            [
                r.scenario,
                r.metric,
                r.unit,
                _cell(r.value),
                r.baseline_name or "-",
                _cell(r.baseline),
                ratio,
                r.target_text,
                met,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  [{r.scenario} {r.metric}] {r.note}" for r in rows if r.note]
    if notes:
        out += ["", "notes:", *notes]
    return "\n".join(out)


def write_json(rows: list[Row], path: Path, meta: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"meta": meta, "rows": [r.to_json() for r in rows]}
    path.write_text(json.dumps(body, indent=2) + "\n")
