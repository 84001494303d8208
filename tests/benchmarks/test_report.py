"""Targets, verdicts and the markdown table; side-by-side timing order (no timing values are asserted)."""

import pytest

from benchmarks import report, timing
from benchmarks.peer import SKIPPED


@pytest.mark.parametrize("relation, threshold, ratio, met, verdict", [
    (">=", 1.0, 1.25, True, "met"),
    (">=", 1.0, 0.5, False, "missed by 50%"),
    ("<=", 3.0, 4.5, False, "missed by 50%"),
    ("<=", 1.1, 1.1, True, "met"),
    (">=", 4.0, None, None, "skipped"),
    ("", None, 2.0, None, "-"),
    ("", None, None, None, "skipped"),
])
def test_target_verdicts(relation, threshold, ratio, met, verdict):
    target = report.Target("case", "what", relation, threshold, ratio, "figures")
    assert (target.met, target.verdict()) == (met, verdict)
    assert target.to_dict()["verdict"] == verdict


def test_target_rejects_an_unknown_relation():
    with pytest.raises(ValueError, match="relation"):
        report.Target("case", "what", ">", 1.0, 1.0, "")


def test_ratio_of_a_skipped_figure_is_none():
    assert report.ratio(report.figure(3.0, "s"), report.figure(1.5, "s")) == 2.0
    assert report.ratio(report.figure(3.0, "s"), report.skipped("s")) is None
    assert report.skipped("s") == {"skipped": SKIPPED, "unit": "s"}


def test_markdown_has_one_row_per_target():
    targets = [report.Target("train", "tokens/s", ">=", 1.0, 0.5, "a vs b"),
               report.Target("trace", "bytes", "", None, 2.0, "c vs d")]
    lines = report.markdown(targets).strip().splitlines()
    assert lines[0] == "| case | target | measured | ratio | met |"
    assert lines[2] == "| train | tokens/s >= 1 | a vs b | 0.5 | missed by 50% |"
    assert lines[3] == "| trace | bytes (reported) | c vs d | 2 | - |"


def test_side_by_side_alternates_after_one_warmup_each():
    calls = []
    timings = timing.side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3)
    assert calls == ["a", "b"] * 4
    assert all(len(t.runs_s) == 3 and t.median_s >= 0 and t.warmup_s >= 0 for t in timings.values())


def test_side_by_side_needs_a_repeat():
    with pytest.raises(ValueError, match="repeats"):
        timing.side_by_side({"a": lambda: None}, repeats=0)
