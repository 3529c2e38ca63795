"""``robustkit.evaluate`` on in-memory models: tensors, DataLoaders and dataset names give the same numbers."""
from __future__ import annotations

import sqlite3

import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import robustkit
from robustkit.data import load_dataset
from robustkit.errors import ConfigError, DataError

N = 60
ATTACKS = ["fgsm", {"name": "pgd", "steps": 8}]
EPS = [0.05, "1/10"]


@pytest.fixture(scope="module")
def digits_test():
    return load_dataset("digits", n_examples=N)


@pytest.fixture(scope="module")
def linear_model():
    """A softmax regression fitted by scikit-learn on the digits train split (about 95% test accuracy)."""
    from sklearn.linear_model import LogisticRegression

    train = load_dataset("digits", split="train")
    fit = LogisticRegression(max_iter=300).fit(train.x.reshape(len(train), -1).numpy(), train.y.numpy())
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(fit.coef_, dtype=torch.float32))
        model[1].bias.copy_(torch.as_tensor(fit.intercept_, dtype=torch.float32))
    return model.eval()


def test_evaluate_tensors(linear_model, digits_test, tmp_path):
    res = robustkit.evaluate(linear_model, dataset=(digits_test.x, digits_test.y), attacks=ATTACKS, eps=EPS,
                             name="softmax")
    board = res.leaderboard
    assert list(board.columns) == ["rank", "model", "defense", "evaluation", "dataset", "norm", "eps", "n_examples",
                                   "clean_acc", "robust_acc", "acc_fgsm", "acc_pgd", "clean_acc_ci_low",
                                   "clean_acc_ci_high", "robust_acc_ci_low", "robust_acc_ci_high", "p_vs_next",
                                   "tied_with_next", "seconds", "passes", "flags", "attacks", "run_id"]
    assert board["eps"].tolist() == [0.05, 0.1] and board["model"].tolist() == ["softmax"] * 2
    assert board["dataset"].tolist() == ["custom"] * 2
    assert 80 <= board.loc[0, "clean_acc"] <= 100
    assert (board["robust_acc"] < board["clean_acc"]).all() and (board["robust_acc"] <= board["acc_fgsm"]).all()
    assert len(res.per_sample) == 2 * N
    assert res.out is None
    path = res.to_csv(tmp_path / "board.csv")
    # empty text cells ("" flags, "" defense of a plain model) read back from CSV as NaN
    pd.testing.assert_frame_equal(pd.read_csv(path).drop(columns=["flags", "defense"]),
                                  board.drop(columns=["flags", "defense"]), check_dtype=False)
    assert "| rank | model |" in repr(res)


def _numbers(res) -> pd.DataFrame:
    return res.leaderboard.drop(columns=["seconds", "dataset", "run_id"])


def test_dataloader_and_dataset_name_give_the_same_numbers(linear_model, digits_test):
    from_tensors = robustkit.evaluate(linear_model, dataset=(digits_test.x, digits_test.y), attacks=ATTACKS, eps=EPS)
    loader = DataLoader(TensorDataset(digits_test.x, digits_test.y), batch_size=16, shuffle=False)
    from_loader = robustkit.evaluate(linear_model, dataset=loader, attacks=ATTACKS, eps=EPS)
    from_name = robustkit.evaluate(linear_model, dataset="digits", n_examples=N, attacks=ATTACKS, eps=EPS)
    pd.testing.assert_frame_equal(_numbers(from_tensors), _numbers(from_loader))
    pd.testing.assert_frame_equal(_numbers(from_tensors), _numbers(from_name))
    assert from_name.leaderboard["dataset"].tolist() == ["digits", "digits"]
    cols = [c for c in from_tensors.per_sample.columns if c != "dataset"]
    pd.testing.assert_frame_equal(from_tensors.per_sample[cols], from_name.per_sample[cols])


def test_several_models_resumable_output_and_model_state_restored(linear_model, digits_test, tmp_path):
    other = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with torch.no_grad():
        other[1].weight.copy_(linear_model[1].weight * 0.5)
        other[1].bias.copy_(linear_model[1].bias)
    other.train()  # the engine evaluates in eval mode and gives the model back as it was
    models = {"full": linear_model, "half": other}
    res = robustkit.evaluate(models, dataset=(digits_test.x, digits_test.y), attacks=["fgsm"], eps=[0.1],
                             out=tmp_path / "run")
    assert other.training and not linear_model.training
    assert sorted(res.leaderboard["model"]) == ["full", "half"]
    assert {"leaderboard.csv", "leaderboard.md", "per_sample.csv", "results.sqlite"} <= {
        p.name for p in (tmp_path / "run").iterdir()}
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as c:
        n_batches = c.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    again = robustkit.evaluate(models, dataset=(digits_test.x, digits_test.y), attacks=["fgsm"], eps=[0.1],
                               out=tmp_path / "run")
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as c:
        assert c.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == n_batches  # reused, not recomputed
    pd.testing.assert_frame_equal(again.leaderboard.drop(columns="seconds"), res.leaderboard.drop(columns="seconds"))
    listed = robustkit.evaluate([linear_model], dataset=(digits_test.x, digits_test.y), attacks=["fgsm"], eps=[0.1])
    assert listed.leaderboard["model"].tolist() == ["Sequential"]


def test_bad_api_input_is_a_clear_error(linear_model, digits_test):
    x, y = digits_test.x, digits_test.y
    with pytest.raises(DataError, match="floating point images"):
        robustkit.evaluate(linear_model, dataset=((x * 255).to(torch.uint8), y), eps=[0.1])
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        robustkit.evaluate(linear_model, dataset=(x * 2, y), eps=[0.1])
    with pytest.raises(ConfigError, match="eps: required"):
        robustkit.evaluate(linear_model, dataset=(x, y))
    with pytest.raises(ConfigError, match="unknown attack 'fgm'"):
        robustkit.evaluate(linear_model, dataset=(x, y), attacks=["fgm"], eps=[0.1])
    with pytest.raises(ConfigError, match="two models are named"):
        robustkit.evaluate([linear_model, linear_model], dataset=(x, y), eps=[0.1])
    with pytest.raises(ConfigError, match="CUDA is not available|auto, cpu, cuda"):
        robustkit.evaluate(linear_model, dataset=(x, y), eps=[0.1], device="cuda" if not torch.cuda.is_available()
                           else "tpu")
