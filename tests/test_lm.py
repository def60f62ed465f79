"""Language modelling: the WikiText-2 reader, perplexity, short simulated runs and their perplexity verdicts (bad
input: tests/test_sim.py, BAD_SIM_INPUTS)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from bench.core.data import EOS, UNK, load_dataset
from bench.core.models import build_model
from bench.records.write import time_to_target
from bench.training.loop import perplexity, score
from cli import cli

TRAIN = "the cat sat\n\n the dog sat on the mat\n"
VALID = "the cow sat\n"
TEST = "a dog sat on the cat mat\n"


def invoke(*args) -> object:
    return CliRunner().invoke(cli, [str(a) for a in args])


def write_wikitext(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train", TRAIN), ("valid", VALID), ("test", TEST)):
        (folder / f"wiki.{name}.tokens").write_text(text, encoding="utf-8")
    return folder


def test_wikitext_reader_vocabulary_from_train_unk_eos_and_windows(tmp_path):
    ds = load_dataset("wikitext2", data_dir=str(write_wikitext(tmp_path / "wikitext-2")), bptt=3)
    # Training words in order of first appearance after <eos> and <unk>; 'cow' and 'a' appear outside train only.
    assert ds.vocab == (EOS, UNK, "the", "cat", "sat", "dog", "on", "mat")
    assert ds.num_classes == 8 and ds.task == "language-model" and ds.input_shape == (3,)
    ids = {w: i for i, w in enumerate(ds.vocab)}
    # Every line ends in <eos>, the blank one too: 12 train tokens make (12 - 1) // 3 = 3 windows.
    stream = [ids[w] for w in "the cat sat <eos> <eos> the dog sat on the mat <eos>".split()]
    assert ds.x_train.tolist() == [stream[0:3], stream[3:6], stream[6:9]]
    assert ds.y_train.tolist() == [stream[1:4], stream[4:7], stream[7:10]]
    # The validation split is WikiText's own valid file, unknown words mapped to <unk>.
    assert ds.x_val.tolist() == [[ids["the"], ids[UNK], ids["sat"]]]
    assert ds.y_val.tolist() == [[ids[UNK], ids["sat"], ids[EOS]]]
    assert ds.x_test[0].tolist() == [ids[UNK], ids["dog"], ids["sat"]]
    # The folder above wikitext-2/ (where the release's zip extracts) works too.
    assert torch.equal(load_dataset("wikitext2", data_dir=str(tmp_path), bptt=3).x_train, ds.x_train)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    ds = load_dataset("embedded-text")
    model = build_model("lstm-lm", ds.input_shape, ds.num_classes, seed=0)
    with torch.no_grad():  # all-zero logits (the decoder is tied to the embedding): a uniform next-token guess
        model.out.weight.zero_()
        model.out.bias.zero_()
    loss, _, count = score(model, ds.x_test, ds.y_test)
    assert count == ds.y_test.numel()
    assert perplexity(loss / count) == pytest.approx(ds.num_classes, rel=1e-4)
    assert ds.num_classes > 1000  # real text: a vocabulary of CPython's documentation


@pytest.mark.parametrize("name", ["transformer-lm", "lstm-lm"])
def test_language_models_are_causal_and_seeded(name):
    model = build_model(name, (12,), 50, seed=3).eval()
    x = torch.randint(0, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    later = x.clone()
    later[:, 7:] = (later[:, 7:] + 1) % 50  # change only the tokens from position 7 on
    with torch.no_grad():
        out, out_later = model(x), model(later)
    assert out.shape == (2, 12, 50)
    assert torch.allclose(out[:, :7], out_later[:, :7], atol=1e-6)  # a prediction never sees a later token
    assert not torch.equal(out[:, 7:], out_later[:, 7:])
    assert model.out.weight is model.embed.weight  # tied embeddings
    same = build_model(name, (12,), 50, seed=3).state_dict()
    assert all(torch.equal(v, same[k]) for k, v in model.state_dict().items())


# (model, algorithm, lr): the largest of 0.1, 0.2, 0.5 at which 13 steps do not diverge.
RUNS = [("transformer-lm", "swarm", 0.1), ("lstm-lm", "allreduce", 0.2)]


@pytest.fixture(scope="module")
def sim_runs(tmp_path_factory) -> dict[str, Path]:
    """Each model's short simulated run on 2 nodes (1,759 train windows, 64 per node: 13 steps per node)."""
    runs = {}
    vocab = load_dataset("embedded-text").num_classes
    for model, algo, lr in RUNS:
        runs[model] = out = tmp_path_factory.mktemp("lm") / model
        r = invoke(
            "run", "--engine", "sim", "--nodes", 2, "--algo", algo, "--dataset", "embedded-text", "--model", model,
            "--epochs", 1, "--batch-size", 64, "--lr", lr, "--step-time", 0.01, "--target-ppl", vocab, "--out", out,
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    return runs


@pytest.fixture
def sim_run(sim_runs) -> Path:
    return sim_runs["transformer-lm"]


@pytest.mark.parametrize("model", [model for model, _, _ in RUNS])
def test_short_simulated_run_writes_perplexity_below_the_vocabulary_size(sim_runs, model):
    sim_run = sim_runs[model]
    vocab = load_dataset("embedded-text").num_classes
    row = pd.read_csv(sim_run / "summary.csv").iloc[0]
    assert row["status"] == "ok"
    assert 1 < row["test_ppl"] < vocab and 1 < row["val_ppl"] < vocab
    assert row["test_ppl"] == pytest.approx(row["best_test_ppl"])
    assert math.isnan(row["test_acc"]) and math.isnan(row["val_acc"])  # no accuracy for a language model
    assert row["tokens"] == row["samples"] * 35
    assert row["tokens_per_s"] == pytest.approx(row["samples_per_s"] * 35)
    # time to a perplexity target (falling to it): a uniform model's perplexity, the vocabulary size, is beaten at once
    assert row["target"] == f"val_ppl <= {vocab:g}" and row["epochs_to_target"] == 1 and row["time_to_target_s"] > 0
    records = [json.loads(line) for line in (sim_run / "records.jsonl").read_text().splitlines()]
    test_ppl = [r["value"] for r in records if r["metric"] == "test_ppl"]
    test_loss = [r["value"] for r in records if r["metric"] == "test_loss" and r["rank"] is None]
    assert test_ppl == pytest.approx([math.exp(v) for v in test_loss])
    accuracy = (sim_run / "accuracy.md").read_text()
    assert "test ppl (avg model)" in accuracy and "test acc" not in accuracy
    assert "tokens/s" in (sim_run / "throughput.md").read_text()


def _edit(folder: Path, column: str, factor: float, engine: str | None = None) -> Path:
    summary = pd.read_csv(folder / "summary.csv")
    summary[column] *= factor
    summary.to_csv(folder / "summary.csv", index=False)
    if engine:
        meta = json.loads((folder / "meta.json").read_text())
        meta["engine"] = engine
        (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_compare_flags_a_perplexity_rise(sim_run, tmp_path):
    rise = _edit(shutil.copytree(sim_run, tmp_path / "rise"), "test_ppl", 1.2)
    r = invoke("compare", sim_run, rise)
    assert r.exit_code == 1, r.output
    assert "test_ppl" in r.output and "changed" in r.output
    # On real processes perplexity is noisy: lower is better, so a rise regresses and a fall improves.
    base = _edit(shutil.copytree(sim_run, tmp_path / "base"), "test_ppl", 1.0, engine="processes")
    worse = _edit(shutil.copytree(base, tmp_path / "worse"), "test_ppl", 1.2)
    r = invoke("compare", base, worse)
    assert r.exit_code == 1 and "regressed" in r.output, r.output
    better = _edit(shutil.copytree(base, tmp_path / "better"), "test_ppl", 0.8)
    r = invoke("compare", base, better)
    assert r.exit_code == 0 and "improved" in r.output, r.output


def test_time_to_a_perplexity_target_means_falling_to_it():
    rows = [
        {"algorithm": "swarm", "rank": None, "epoch": e, "metric": "val_ppl", "value": v}
        for e, v in ((1, 900.0), (2, 400.0), (3, 250.0), (4, 300.0))
    ]
    rows += [
        {"algorithm": "swarm", "rank": 0, "epoch": e, "metric": "train_seconds", "value": 10.0 * e}
        for e in (1, 2, 3, 4)
    ]
    records = pd.DataFrame(rows)
    assert time_to_target(records, "swarm", 400.0) == (20.0, 2)
    assert time_to_target(records, "swarm", 260.0) == (30.0, 3)
    assert time_to_target(records, "swarm", 200.0) == (None, None)
    assert time_to_target(records, "swarm", None) == (None, None)


def test_report_shows_perplexity_where_accuracy_would_be(sim_run, tmp_path):
    out = tmp_path / "report"
    r = invoke("report", sim_run, "--plot", "accuracy_vs_time", "--format", "md", "--out", out)
    assert r.exit_code == 0, r.output
    text = (out / "report.md").read_text()
    assert "### Perplexity (lower is better)" in text and "test ppl (avg model)" in text and "tokens/s" in text
    assert "test acc" not in text
    assert (out / "plots" / "accuracy_vs_time.png").stat().st_size > 0


def test_report_time_to_a_perplexity_target(sim_run, tmp_path):
    out = tmp_path / "report"
    r = invoke("report", sim_run, "--plot", "time_to_target", "--target-ppl", 5000, "--format", "md", "--out", out)
    assert r.exit_code == 0, r.output
    text = (out / "report.md").read_text()
    assert (
        "s to ppl 5000" in text
        and "Training time to test perplexity 5000" in (out / "plots/time_to_target.svg").read_text()
    )
    r = invoke("report", sim_run, "--plot", "time_to_target", "--target-ppl", 2, "--out", tmp_path / "none")
    assert r.exit_code == 2 and "no algorithm reached test perplexity 2" in r.output, r.output
    r = invoke("report", sim_run, "--target-acc", 0.5, "--out", tmp_path / "acc")
    assert r.exit_code == 2 and "use --target-ppl P" in r.output, r.output
