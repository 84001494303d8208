"""Figures with units, the issue's targets, and the markdown table of `results.md`.

A figure is `{"value": v, "unit": u}`, or `{"skipped": reason, "unit": u}` for a peer figure that could not be
measured. A `Target` compares one ratio against the issue's threshold; its `met` is `None` when a figure it
needs was skipped, and the table then says why.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from benchmarks.peer import SKIPPED


def figure(value: float, unit: str) -> dict:
    return {"value": float(value), "unit": unit}


def skipped(unit: str, reason: str = SKIPPED) -> dict:
    return {"skipped": reason, "unit": unit}


def value(fig: dict) -> Optional[float]:
    """The figure's value, or `None` when it was skipped."""
    return fig.get("value")


def ratio(numerator: dict, denominator: dict) -> Optional[float]:
    """`numerator / denominator`, or `None` when either was skipped."""
    a, b = value(numerator), value(denominator)
    return None if a is None or b is None else a / b


@dataclasses.dataclass(frozen=True)
class Target:
    """One line of the table.

    Attributes:
      case: the benchmark case.
      name: what is compared, e.g. "train tokens/s, sage / torch".
      relation: ">=" or "<=", or "" for a figure with no target (reported only).
      threshold: the issue's bound on `ratio`.
      ratio: the measured ratio (`None`: a figure it needs was skipped).
      measured: the underlying figures, in words.
    """

    case: str
    name: str
    relation: str
    threshold: Optional[float]
    ratio: Optional[float]
    measured: str

    def __post_init__(self):
        if self.relation not in (">=", "<=", ""):
            raise ValueError(f"Target.relation must be '>=', '<=' or '', got {self.relation!r}")

    @property
    def met(self) -> Optional[bool]:
        if self.ratio is None or not self.relation:
            return None
        return self.ratio >= self.threshold if self.relation == ">=" else self.ratio <= self.threshold

    def verdict(self) -> str:
        """"met", "missed by N%" (relative to the threshold), "skipped" or "-" (no target)."""
        if self.ratio is None:
            return "skipped"
        if not self.relation:
            return "-"
        if self.met:
            return "met"
        return f"missed by {100 * abs(self.ratio - self.threshold) / self.threshold:.0f}%"

    def to_dict(self) -> dict:
        return dict(case=self.case, name=self.name, relation=self.relation, threshold=self.threshold,
                    ratio=self.ratio, measured=self.measured, met=self.met, verdict=self.verdict())


def describe(fig: dict, scale: float = 1.0, unit: Optional[str] = None, digits: int = 3) -> str:
    """`"12.3 tokens/s"`, or `"skipped"`."""
    if value(fig) is None:
        return "skipped"
    return f"{value(fig) * scale:.{digits}g} {unit or fig['unit']}"


def markdown(targets: Sequence[Target]) -> str:
    """The results table: case, target, measured figures, ratio, verdict."""
    lines = ["| case | target | measured | ratio | met |", "|---|---|---|---|---|"]
    for t in targets:
        bound = f"{t.name} {t.relation} {t.threshold:g}" if t.relation else f"{t.name} (reported)"
        shown = "skipped" if t.ratio is None else f"{t.ratio:.3g}"
        lines.append(f"| {t.case} | {bound} | {t.measured} | {shown} | {t.verdict()} |")
    return "\n".join(lines) + "\n"
