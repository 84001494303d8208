"""The absl entry points on the `test` config, end to end, in real subprocesses (what they prove is flag parsing
and what they print and write): `experiments.train` trains a stage and writes `config.json`, a re-run does
nothing; `experiments.evaluate` and `experiments.explain` analyse the session's trained run (`trained_run_dir`,
trained once through the library, whose stage directories are checked here too) from its directory alone;
`experiments.explain --model` a pretrained checkpoint through its chat template; `experiments.train_inverse` trains
an Inverse Analysis Layer for one, and `explain --method=amortised --inverse_dir` uses it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np

import sage_jax as sj
from experiments.configs import test as test_config
from sage_jax.chat import ChatLayout, TextCodec
from sage_jax.data import Tokenizer
from sage_jax.interop import load_hf
from sage_jax.interpret import ExplainConfig, explain
from tests.test_chat import CHATML, chatml_tokenizer, save_random_chat_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUESTION, RATIONALE, ANSWER = "3+1+9=?", "3+1=4\n4+9=13", "13"


def _run(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_trained_run_has_every_stage_with_its_own_checkpoints_and_logs(trained_run_dir):
    config = test_config.get_config()
    for stage in (1, 2, 3):
        steps = config[f"stage{stage}"].steps
        assert str(steps) in os.listdir(trained_run_dir / f"stage{stage}" / "ckpt")
        logs = trained_run_dir / f"stage{stage}" / "logs"
        rows = [json.loads(line) for line in open(logs / "metrics.jsonl")]
        assert [r["step"] for r in rows if "loss" in r] == list(range(steps))
        assert any("eval/reasoning_loss" in r for r in rows)
        assert any(name.startswith("events.out.tfevents") for name in os.listdir(logs))
    saved = json.loads((trained_run_dir / "config.json").read_text())
    assert saved == json.loads(json.dumps({**config.to_dict(), "workdir": str(trained_run_dir)}))


def test_train_trains_writes_its_config_and_a_rerun_of_finished_stages_does_nothing(tmp_path):
    workdir = tmp_path / "run"
    # Stage 1 as in the session's run, so its compiled step comes from the session's compilation cache.
    flags = ("--config=experiments/configs/test.py", f"--config.workdir={workdir}", "--config.stage2.steps=5")
    out = _run("experiments.train", *flags, "--stages=1")
    assert f"stage 1: step 3 in {workdir}/stage1; held-out" in out
    assert "3" in os.listdir(workdir / "stage1" / "ckpt") and not (workdir / "stage2").exists()
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["workdir"] == str(workdir) and saved["stage2"]["steps"] == 5  # the config with its flags
    assert saved["stage1"] == json.loads(json.dumps(test_config.get_config().stage1.to_dict()))
    again = _run("experiments.train", *flags, "--stages=1")
    assert "stage 1: step 3" in again and "already finished" in again


def test_evaluate_reads_the_run_from_its_directory_alone(trained_run_dir, tmp_path):
    workdir = tmp_path / "moved"
    shutil.copytree(trained_run_dir, workdir)  # a moved run: config.json's own workdir is not where it is now
    out = _run("experiments.evaluate", f"--workdir={workdir}", "--metric_problems=1",
               "--truth_problems=1", "--truth_rollouts=2", "--truth_max_rollouts=4", "--truth_maps=sage",
               "--truth_maps=occlusion")
    results = json.loads((workdir / "eval_stage3.json").read_text())
    assert sorted(results["accuracy_by_steps"]) == ["1", "2"]  # the eval section saved with the run
    for row in results["accuracy_by_steps"].values():
        assert row["n"] == 4 and 0.0 <= row["accuracy"] <= 1.0 and 0.0 <= row["seen_in_training"] <= 1.0
    assert 0.0 <= results["teacher_forced"]["meta_ece"] <= 1.0
    assert results["explanations"]["amortised"]["status"] == "trained"  # the run's IAL was passed on
    assert "meta-head calibration error" in out
    truth = results["truth"]  # every map, and the trained IAL, against the model's counterfactual behaviour
    assert truth["steps"] == [1, 2] and truth["truth"]["steps"] == 1 + 2
    assert truth["max_rollouts"] == 4 and 2.0 <= truth["truth"]["rollouts_per_resampled_step"] <= 4.0
    assert set(truth["maps"]) == {"sage", "occlusion", "amortised", "substitution (default)"}
    assert all(0.0 <= row["precision_at_k"] <= 1.0 for row in truth["maps"].values())
    assert "maps against the model's counterfactual behaviour" in out


def test_quantize_measures_every_variant_of_the_run(trained_run_dir, tmp_path):
    out = _run("experiments.quantize", f"--workdir={trained_run_dir}", "--problems=2", "--map_problems=1",
               f"--out={tmp_path / 'q.json'}")
    results = json.loads((tmp_path / "q.json").read_text())
    full, int8, int4 = results["variants"].values()
    # Each weight in its largest groups up to 32: the test preset's heads are 8 wide.
    assert list(results["variants"])[1:] == [f"int{b} (groups of 32 (8: layers/attn/o))" for b in (8, 4)]
    assert full["weight_bytes"] > results["bfloat16_bytes"] > int8["weight_bytes"] > int4["weight_bytes"]
    for row in (int8, int4):
        assert 0.0 < row["reduction_vs_float32"] < 1.0 and sorted(row["accuracy_by_steps"]) == ["1", "2"]
        shift = row["explanation_shift"]
        assert shift["steps"] == 1 + 2 and set(shift["maps"]) == {"sage", "substitution (default)"}
        assert all(-1.0 <= m["rank_correlation"] <= 1.0 for m in shift["maps"].values())
    assert "below float32" in out and "explanation under quantization" in out


def test_explain_without_a_run_explains_a_fresh_model_of_the_preset(tmp_path):
    out = _run("experiments.explain", "--preset=tiny", "--seed=3", f"--question={QUESTION}",
               f"--rationale={RATIONALE}".replace("\n", "\\n"), f"--answer={ANSWER}", f"--out_dir={tmp_path}")
    assert "freshly initialised 'tiny' model (no --workdir)" in out
    cfg = sj.configs.get("tiny")
    expected = explain(sj.init_params(cfg, jax.random.split(jax.random.key(3))[0]), cfg, QUESTION, RATIONALE,
                       tokenizer=Tokenizer.load(cfg.vocab_size), answer=ANSWER)
    written = json.loads((tmp_path / "explanation.json").read_text())
    assert written["tokens"] == list(expected.tokens) and len(written["steps"]) == 2
    for got, want in zip(written["steps"], expected.steps):
        np.testing.assert_allclose(got["significance"], want.significance, rtol=1e-5, atol=1e-6)


def test_explain_explains_with_the_trained_run_and_its_inverse_layer(trained_run_dir, trained_run, tmp_path):
    out = _run("experiments.explain", f"--workdir={trained_run_dir}", "--method=amortised",
               f"--question={QUESTION}", f"--rationale={RATIONALE}".replace("\n", "\\n"), f"--answer={ANSWER}",
               "--anchors", "--anchor_rollouts=2", "--anchor_max_rollouts=4", f"--out_dir={tmp_path}")
    assert f"stage 3 of the run in {trained_run_dir}" in out
    written = json.loads((tmp_path / "explanation.json").read_text())
    assert written["anchors"]["rollouts"] in (2, 4) and "**Anchor:**" in out
    expected = json.loads(explain(trained_run.params, trained_run.cfg, QUESTION, RATIONALE,
                                  tokenizer=trained_run.tokenizer, answer=ANSWER,
                                  config=ExplainConfig(method="amortised"),
                                  inverse_params=trained_run.inverse).to_json())
    assert written["tokens"] == expected["tokens"] and written["method"] == expected["method"]
    for got, want in zip(written["steps"], expected["steps"]):
        np.testing.assert_allclose(got["significance"], want["significance"], rtol=1e-5, atol=1e-6)


def test_explain_and_evaluate_take_a_pretrained_checkpoint_with_a_chat_template(tmp_path):
    """--model with a Hugging Face directory (a random homogeneous model, a ChatML tokenizer and template): the
    reply's lines are the steps, and the significance is in-process `explain`'s with the chat layout; evaluate
    asks it spoken chained sums, and prints its report before it fails to write the JSON."""
    model_dir = save_random_chat_model(tmp_path / "model")
    question, reply = "What is 3 + 4 + 5?", "3 + 4 = 7\n7 + 5 = 12"
    out = _run("experiments.explain", f"--model={model_dir}", f"--question={question}",
               f"--rationale={reply}".replace("\n", "\\n"), "--answer=12", "--weighting=attention",
               f"--out_dir={tmp_path}")
    assert f"from {model_dir}" in out
    written = json.loads((tmp_path / "explanation.json").read_text())
    assert [step["text"] for step in written["steps"]] == reply.split("\n")
    codec = TextCodec(chatml_tokenizer())
    loaded = load_hf(model_dir)
    expected = explain(loaded.params, loaded.cfg, question, reply, tokenizer=codec, answer="12",
                       layout=ChatLayout.for_codec(codec, CHATML, instruction=""),
                       config=ExplainConfig(weighting="attention"))
    assert written["tokens"] == list(expected.tokens)
    for got, want in zip(written["steps"], expected.steps):
        np.testing.assert_allclose(got["significance"], want.significance, rtol=1e-5, atol=1e-6)

    out = _run("experiments.evaluate", f"--model={model_dir}", "--model_problems=2", "--model_steps=1",
               "--notruth", f"--out={tmp_path / 'eval.json'}")
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["model"]["source"] == str(model_dir) and results["accuracy_by_steps"]["1"]["n"] == 2
    assert "procedural/spoken_sum, asked through the chat template" in out
    # A place it cannot write (a path under a file, which fails for root too): the report is printed first.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-m", "experiments.evaluate", f"--model={model_dir}", "--model_problems=1",
                           "--model_steps=1", "--notruth", f"--out={tmp_path / 'eval.json' / 'eval.json'}"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "procedural/spoken_sum, asked through the chat template" in done.stdout
    assert f"could not write {tmp_path / 'eval.json' / 'eval.json'} (Not a directory); the results are printed " \
           "above" in done.stderr


def test_train_inverse_trains_an_ial_for_a_pretrained_model_and_explain_uses_it(tmp_path):
    """experiments.train_inverse on a random chat checkpoint: teachers, training, the held-out table with its
    baselines; explain --method=amortised --inverse_dir then analyses with that IAL."""
    model_dir = save_random_chat_model(tmp_path / "model")
    out = _run("experiments.train_inverse", f"--model={model_dir}", f"--workdir={tmp_path / 'ial'}",
               "--problems=8", "--heldout=8", "--chain_steps=2", "--train_steps=3", "--warmup=1", "--batch_size=4")
    report = json.loads((tmp_path / "ial" / "agreement.json").read_text())
    assert set(report["agreement"]) == {"trained IAL", "untrained IAL", "attention alone", "uniform over the sources"}
    assert 0 <= report["agreement"]["trained IAL"]["all"]["map_agreement"] <= 1 and "| trained IAL |" in out
    out = _run("experiments.explain", f"--model={model_dir}", "--question=What is 3 + 4?", "--rationale=3 + 4 = 7",
               "--answer=7", "--method=amortised", f"--inverse_dir={tmp_path / 'ial'}", f"--out_dir={tmp_path}")
    assert f"trained in {tmp_path / 'ial'}" in out
    attempts = json.loads((tmp_path / "explanation.json").read_text())["attempts"]
    assert attempts[0]["path"] == "amortised"  # refined onto the exact path afterwards when below consistency 0.8


def test_device_check_compares_the_backend_with_the_cpu():
    out = _run("experiments.device_check", "--preset=test")
    assert "all checks passed" in out and out.count("ok   ") == 6
    done = subprocess.run([sys.executable, "-m", "experiments.device_check", "--platform=metal"], cwd=ROOT,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "backend 'metal' is not available" in done.stderr
