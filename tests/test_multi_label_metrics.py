"""Multi-label metrics (issue 22, point 3): AP, mAP, F1 and the exact match equal scikit-learn's, the fitted
thresholds maximise F1 against a brute-force grid, and ``evaluate`` metrics take multi-hot rows (the shared
metric scripts in ``../shared/evaluate-metrics/``, offline)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score

from hf_finetune.errors import ConfigError
from hf_finetune.inference.extra_metrics import extra_metric_values, load_extra_metrics, split_metric_spec
from hf_finetune.inference.multi_label_metrics import (
    average_precision,
    fit_thresholds,
    multi_label_metrics,
    multi_label_report,
    sigmoid,
)

METRICS = SHARED / "evaluate-metrics"
requires_metrics = pytest.mark.skipif(
    not (METRICS / "roc_auc" / "roc_auc.py").is_file(),
    reason=f"evaluate's metric scripts not found at {METRICS}",
)
KEYS = {"map", "map_micro", "f1_micro", "f1_macro", "exact_match"}


def _case(seed: int, num_classes: int, rows: int | None = None):
    """Seeded logits and multi-hot targets; logits rounded to 0-2 decimals (ties); with 3 classes or more the
    first class has no positive."""
    rng = np.random.default_rng(seed)
    rows = int(rng.integers(8, 150)) if rows is None else rows
    targets = (rng.random((rows, num_classes)) < rng.uniform(0.1, 0.6)).astype(np.float32)
    targets[0, :] = 1.0  # every class but the first (below) has a positive
    if num_classes >= 3:
        targets[:, 0] = 0.0
    logits = np.round(rng.normal(size=(rows, num_classes)) + 1.5 * targets, int(seed % 3))
    return logits, targets


def _sklearn_f1(targets, predicted, average):
    if targets.shape[1] == 1:  # sklearn reads one column as a binary target: the F1 of class 1
        return f1_score(targets[:, 0], predicted[:, 0], zero_division=0)
    return f1_score(targets, predicted, average=average, zero_division=0)


@pytest.mark.parametrize("num_classes", list(range(1, 13)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_sklearn(num_classes, seed):
    logits, targets = _case(seed * 100 + num_classes, num_classes)
    ap = average_precision(logits, targets)
    assert ap.shape == (num_classes,) and ap.dtype == np.float64
    present = targets.any(axis=0)
    assert np.isnan(ap[~present]).all() and present[1:].all()
    for k in np.flatnonzero(present):
        assert ap[k] == pytest.approx(average_precision_score(targets[:, k], logits[:, k]), abs=1e-12)
    rng = np.random.default_rng(seed)
    for thresholds in (None, rng.uniform(0.2, 0.8, size=num_classes)):
        values = multi_label_metrics(logits, targets, thresholds)
        assert set(values) == KEYS
        cut = 0.5 if thresholds is None else thresholds
        predicted = (sigmoid(logits) >= cut).astype(int)
        assert values["map"] == pytest.approx(np.mean(ap[present]), abs=1e-12)
        micro = average_precision_score(targets, logits, average="micro")
        assert values["map_micro"] == pytest.approx(micro, abs=1e-12)
        for average in ("micro", "macro"):
            expected = _sklearn_f1(targets, predicted, average)
            assert values[f"f1_{average}"] == pytest.approx(expected, abs=1e-12)
        assert values["exact_match"] == pytest.approx(accuracy_score(targets, predicted), abs=1e-12)


def test_ties_are_one_step_as_in_sklearn():
    targets = np.array([[1], [0], [1], [0], [1], [0]], dtype=np.float32)
    logits = np.array([[2.0], [2.0], [1.0], [1.0], [1.0], [0.0]])
    # steps: {2,2} precision 1/2 recall 1/3; {1,1,1} precision 3/5 recall 1: AP = 1/6 + 2/3 * 3/5
    assert average_precision(logits, targets)[0] == pytest.approx(1 / 6 + 0.4, abs=1e-15)
    assert average_precision(logits, targets)[0] == pytest.approx(
        average_precision_score(targets[:, 0], logits[:, 0]), abs=1e-15
    )


def test_sigmoid_is_stable_and_a_half_at_zero_is_positive():
    values = sigmoid(np.array([[-1000.0, 0.0, 1000.0]]))
    assert values.tolist() == [[0.0, 0.5, 1.0]]
    logits, targets = np.array([[0.0, -1e-9]]), np.array([[1, 1]])
    assert multi_label_metrics(logits, targets)["f1_micro"] == pytest.approx(2 / 3)  # 0.5 >= 0.5: positive


def _f1_at(probabilities, positive, threshold):
    predicted = probabilities >= threshold
    denominator = predicted.sum() + positive.sum()
    return 0.0 if denominator == 0 else 2.0 * np.sum(predicted & positive) / denominator


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_class_thresholds_beat_a_grid(seed):
    logits, targets = _case(seed, 6, rows=60)
    probabilities = sigmoid(logits)
    thresholds = fit_thresholds(probabilities, targets, "per_class")
    assert thresholds.shape == (6,) and thresholds[0] == 0.5  # class 0 has no positive
    grid = np.r_[np.linspace(0.0, 1.0, 1001), np.unique(probabilities)]
    gained = 0.0
    for k in range(1, 6):
        positive = targets[:, k] == 1
        best = _f1_at(probabilities[:, k], positive, thresholds[k])
        assert best >= max(_f1_at(probabilities[:, k], positive, t) for t in grid) - 1e-15
        assert best >= _f1_at(probabilities[:, k], positive, 0.5)
        gained += best - _f1_at(probabilities[:, k], positive, 0.5)
    assert gained > 0.01  # the fit changes something on these data
    report = multi_label_report(logits, targets, [f"c{i}" for i in range(6)], thresholds)
    for k in range(1, 6):
        row = report["per_class"][f"c{k}"]
        assert row["f1"] == pytest.approx(_f1_at(probabilities[:, k], targets[:, k] == 1, thresholds[k]))
        assert row["threshold"] == thresholds[k]


def test_threshold_ties_go_to_the_one_closest_to_a_half():
    probabilities = np.array([[0.1], [0.2], [0.8], [0.9]])
    targets = np.array([[0], [0], [1], [1]])
    # every threshold in (0.2, 0.8] gives F1 1: the candidates there are 0.5 (the midpoint) and 0.5 itself
    assert fit_thresholds(probabilities, targets).tolist() == [0.5]
    probabilities = np.array([[0.05], [0.1], [0.3], [0.35]])
    # F1 1 for thresholds in (0.1, 0.3]: the candidate midpoint 0.2 (not 0.5, which predicts nothing)
    assert fit_thresholds(probabilities, targets).tolist() == [pytest.approx(0.2)]
    everything = fit_thresholds(
        np.array([[0.3], [0.4]]), np.array([[1], [1]])
    )  # all positive: below the lowest
    assert everything[0] <= 0.3 and everything[0] == pytest.approx(0.15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_threshold_maximises_micro_f1(seed):
    logits, targets = _case(seed, 5, rows=50)
    probabilities = sigmoid(logits)
    thresholds = fit_thresholds(probabilities, targets, "global")
    assert len(set(thresholds.tolist())) == 1
    grid = np.r_[np.linspace(0.0, 1.0, 1001), np.unique(probabilities)]
    positive = targets == 1
    best = _f1_at(probabilities, positive, thresholds[0])
    assert best >= max(_f1_at(probabilities, positive, t) for t in grid) - 1e-15
    assert multi_label_metrics(logits, targets, thresholds)["f1_micro"] == pytest.approx(best, abs=1e-12)
    assert fit_thresholds(probabilities, targets, 0.3).tolist() == [0.3] * 5
    assert fit_thresholds(probabilities, np.zeros_like(targets), "global").tolist() == [0.5] * 5


def test_bad_shapes_and_values_are_clear():
    logits, targets = _case(0, 3, rows=10)
    with pytest.raises(
        ValueError, match=r"multi-hot matrix of the shape of the logits \(10, 3\), got shape \(10,\)"
    ):
        multi_label_metrics(logits, targets[:, 0])
    with pytest.raises(ValueError, match="must be 2-D"):
        average_precision(logits[:, 0], targets[:, 0])
    with pytest.raises(ValueError, match="must be 0 or 1, got 2.0"):
        multi_label_metrics(logits, targets * 2)
    with pytest.raises(ValueError, match=r"one number or 3 \(one per class\)"):
        multi_label_metrics(logits, targets, [0.5, 0.5])
    with pytest.raises(ValueError, match="probabilities must lie in"):
        fit_thresholds(logits * 10, targets)
    with pytest.raises(ValueError, match="'per_class', 'global' or a number in \\(0, 1\\), got 'best'"):
        fit_thresholds(sigmoid(logits), targets, "best")
    with pytest.raises(ValueError, match="got 1.5"):
        fit_thresholds(sigmoid(logits), targets, 1.5)
    with pytest.raises(ValueError, match="2 label names but logits have 3 columns"):
        multi_label_report(logits, targets, ["a", "b"])


def test_report_keys_and_numbers():
    logits, targets = _case(4, 4, rows=40)
    thresholds = [0.3, 0.4, 0.5, 0.6]
    report = multi_label_report(logits, targets, ["a", "b", "c", "d"], thresholds)
    assert report["multi_label"] is True and report["thresholds"] == thresholds
    assert set(report) == KEYS | {"multi_label", "per_class", "thresholds"}
    assert {key: report[key] for key in KEYS} == multi_label_metrics(logits, targets, thresholds)
    assert np.isnan(report["per_class"]["a"]["ap"]) and report["per_class"]["a"]["support"] == 0
    predicted = sigmoid(logits) >= np.array(thresholds)
    for k, name in enumerate("abcd"):
        row = report["per_class"][name]
        assert set(row) == {"ap", "precision", "recall", "f1", "support", "threshold"}
        assert row["support"] == int(targets[:, k].sum())
        tp = int(np.sum(predicted[:, k] & (targets[:, k] == 1)))
        assert row["precision"] == (tp / predicted[:, k].sum() if predicted[:, k].any() else 0.0)
        assert row["recall"] == (tp / row["support"] if row["support"] else 0.0)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("roc_auc:multilabel", ("roc_auc", "multilabel")),
        ("../shared/evaluate-metrics/f1:multilabel", ("../shared/evaluate-metrics/f1", "multilabel")),
        ("C:\\metrics\\f1", ("C:\\metrics\\f1", None)),
        ("a:b:multilabel", ("a:b", "multilabel")),
        ("f1", ("f1", None)),
        ("f1:", ("f1:", None)),
        ("f1:multi-label", ("f1:multi-label", None)),
    ],
)
def test_split_metric_spec(spec, expected):
    assert split_metric_spec(spec) == expected


def test_a_path_holding_a_colon_stays_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine:v2").mkdir()
    assert split_metric_spec("mine:v2") == ("mine:v2", None)
    assert split_metric_spec("other:v2") == ("other", "v2")


@requires_metrics
def test_roc_auc_multilabel_equals_sklearn_and_is_picked_automatically():
    logits, targets = _case(7, 5, rows=80)
    targets[1, 0] = 1.0  # roc_auc needs a positive and a negative in every class
    for spec in (f"{METRICS / 'roc_auc'}:multilabel", str(METRICS / "roc_auc")):
        modules = load_extra_metrics([spec], multi_label=True)
        assert modules[0].config_name == "multilabel"
        values = extra_metric_values(modules, logits, targets, multi_label=True)
        expected = roc_auc_score(targets, sigmoid(logits), average="macro")
        assert values == {"roc_auc": pytest.approx(expected, abs=1e-12)}
    targets[:, 0] = 0.0  # undefined with a class without positive: nan (sklearn >= 1.6) or left out, no error
    values = extra_metric_values(modules, logits, targets, multi_label=True)
    assert set(values) <= {"roc_auc"} and np.isnan(values.get("roc_auc", np.nan))


@requires_metrics
def test_prediction_metrics_get_multi_hot_rows_at_a_half():
    logits, targets = _case(8, 4, rows=60)
    names = ["f1", "precision", "recall", "accuracy", "matthews_correlation", "confusion_matrix"]
    modules = load_extra_metrics([str(METRICS / name) for name in names], multi_label=True)
    values = extra_metric_values(modules, logits, targets, multi_label=True)
    predicted = (sigmoid(logits) >= 0.5).astype(int)
    assert set(values) == {
        "evaluate_f1_macro", "precision_macro", "recall_macro", "evaluate_accuracy", "matthews_correlation_macro"
    }  # fmt: skip
    ours = multi_label_metrics(logits, targets)
    assert values["evaluate_f1_macro"] == pytest.approx(ours["f1_macro"], abs=1e-12)
    assert values["evaluate_accuracy"] == pytest.approx(ours["exact_match"], abs=1e-12)
    from sklearn.metrics import matthews_corrcoef, precision_score

    assert values["precision_macro"] == pytest.approx(
        precision_score(targets, predicted, average="macro", zero_division=0), abs=1e-12
    )
    mcc = np.mean([matthews_corrcoef(targets[:, k], predicted[:, k]) for k in range(4)])
    assert values["matthews_correlation_macro"] == pytest.approx(mcc, abs=1e-12)


@requires_metrics
def test_config_mismatch_is_one_line(tmp_path):
    script = tmp_path / "single_only" / "single_only.py"
    script.parent.mkdir()
    accuracy = (METRICS / "accuracy" / "accuracy.py").read_text()
    script.write_text(accuracy.replace('self.config_name == "multilabel"', "False"))
    with pytest.raises(ConfigError, match="cannot be computed on multi-label data") as error:
        load_extra_metrics([str(script.parent)], multi_label=True)
    assert "single_only" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="takes multi-hot rows .* but the data are single-label"):
        load_extra_metrics([f"{METRICS / 'f1'}:multilabel"], multi_label=False)
    assert load_extra_metrics([str(script.parent)], multi_label=False)[0].config_name == "default"


@requires_metrics
def test_build_compute_metrics_multi_label():
    from transformers import EvalPrediction

    from hf_finetune.inference.metrics import build_compute_metrics

    logits, targets = _case(9, 6, rows=40)
    compute = build_compute_metrics(6, [str(METRICS / "recall")], multi_label=True)
    values = compute(EvalPrediction(predictions=(logits.astype(np.float32),), label_ids=targets))
    assert set(values) == KEYS | {"recall_macro"}
    assert {key: values[key] for key in KEYS} == pytest.approx(
        multi_label_metrics(logits.astype(np.float32), targets), abs=1e-12
    )
    plain = build_compute_metrics(6, multi_label=True)(EvalPrediction(predictions=logits, label_ids=targets))
    assert set(plain) == KEYS
    with pytest.raises(ValueError, match="num_classes=5"):
        build_compute_metrics(5, multi_label=True)(EvalPrediction(predictions=logits, label_ids=targets))
