"""`python -m experiments.data`: prepares a dataset and prints counts and skipped records."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(*flags: str) -> str:
    done = subprocess.run([sys.executable, "-m", "experiments.data", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_prepare_prints_counts_and_skipped_lines(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "train.jsonl").write_text("\n".join([
        json.dumps({"question": "What is 2,000 + 5?", "answer": "2,000 + 5 = <<2000+5=2005>>2,005\n#### 2,005"}),
        json.dumps({"question": "no answer"}),
        json.dumps({"question": "x", "answer": "#### 7"})]))
    out = _run("--source=sage_gsm8k", f"--manual_dir={manual}", f"--data_dir={tmp_path / 'data'}",
               "--max_bad_fraction=0.5")
    assert "train: 3 records" in out and "kept 2, skipped 1 malformed (33.3%)" in out
    assert f"{manual / 'train.jsonl'}:2: missing field 'answer'" in out
    assert "<bos><question>What is 2,000 + 5?<step>2,000 + 5 = 2,005<answer>2005<eos>" in out


def test_generated_source_counts():
    out = _run("--source=procedural/chain_sum", "--num_examples=50", "--max_length=30", "--show=0")
    kept, dropped = (int(x) for x in out.split("kept ")[1].split(" longer")[0].split(", dropped "))
    assert kept + dropped == 50 and kept > 0 and dropped > 0
