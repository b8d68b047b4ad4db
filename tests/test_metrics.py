"""Tests of hf_finetune.inference.metrics against scikit-learn on random, imbalanced data with missing classes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)
from transformers import EvalPrediction

from hf_finetune.inference.metrics import build_compute_metrics, classification_metrics, per_class_report


def _random_case(seed: int, num_classes: int, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Imbalanced labels that never use the last class, and logits biased towards the true class."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.full(num_classes - 1, 0.5))
    labels = rng.choice(num_classes - 1, size=samples, p=weights)
    logits = rng.normal(size=(samples, num_classes))
    logits[np.arange(samples), labels] += rng.uniform(0, 2.5)
    if num_classes > 3:
        logits[:, 0] -= 10.0  # class 0 is (almost) never predicted
    return logits.astype(np.float32), labels


CASES = [
    (seed, num_classes, samples) for seed in range(5) for num_classes, samples in ((3, 40), (7, 90), (12, 25))
]


@pytest.mark.parametrize(("seed", "num_classes", "samples"), CASES)
def test_summary_metrics_match_sklearn(seed, num_classes, samples):
    logits, labels = _random_case(seed, num_classes, samples)
    predicted = logits.argmax(axis=1)
    classes = list(range(num_classes))
    metrics = classification_metrics(logits, labels, num_classes)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    expected_f1 = f1_score(labels, predicted, average="macro", labels=classes, zero_division=0)
    assert metrics["macro_f1"] == pytest.approx(expected_f1, abs=1e-12)
    if num_classes > 5:
        expected_top5 = top_k_accuracy_score(labels, logits, k=5, labels=classes)
        assert metrics["top5_accuracy"] == pytest.approx(expected_top5, abs=1e-12)
    else:
        assert "top5_accuracy" not in metrics
    assert all(type(value) is float for value in metrics.values())


@pytest.mark.parametrize(("seed", "num_classes", "samples"), CASES)
def test_per_class_report_matches_sklearn(seed, num_classes, samples):
    logits, labels = _random_case(seed, num_classes, samples)
    predicted = logits.argmax(axis=1)
    classes = list(range(num_classes))
    names = [f"class {i}" for i in classes]
    report = per_class_report(logits, labels, names)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0
    )
    for index, name in enumerate(names):
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision[index], abs=1e-12)
        assert row["recall"] == pytest.approx(recall[index], abs=1e-12)
        assert row["f1"] == pytest.approx(f1[index], abs=1e-12)
        assert row["support"] == support[index] and type(row["support"]) is int
    assert report["confusion_matrix"] == confusion_matrix(labels, predicted, labels=classes).tolist()
    assert report["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert report["macro_f1"] == pytest.approx(float(np.mean(f1)), abs=1e-12)
    # the missing last class has support 0 and scores 0.0 (zero_division=0)
    last = report["per_class"][names[-1]]
    assert last["support"] == 0 and last["recall"] == 0.0 and last["f1"] == 0.0


def test_confusion_matrix_rows_are_true_columns_predicted():
    logits = np.eye(3)[[0, 0, 2, 1]]  # predictions 0, 0, 2, 1
    labels = np.array([0, 1, 2, 2])
    report = per_class_report(logits, labels, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    assert report["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert report["per_class"]["a"]["precision"] == pytest.approx(0.5)


def test_top5_on_a_hand_made_case():
    # 7 classes; the scores rank the classes 6 > 5 > 4 > 3 > 2 > 1 > 0 in every row.
    logits = np.tile(np.arange(7, dtype=np.float64), (4, 1))
    labels = np.array([6, 2, 1, 0])  # ranks 1, 5, 6, 7 -> top-5 hits: 2 of 4
    metrics = classification_metrics(logits, labels)
    assert metrics["top5_accuracy"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.25)


def test_top5_ties_break_towards_the_lower_class_index():
    logits = np.zeros((2, 7))  # all tied: the top 5 are classes 0..4
    metrics = classification_metrics(logits, np.array([4, 5]))
    assert metrics["top5_accuracy"] == pytest.approx(0.5)
    assert metrics["accuracy"] == pytest.approx(0.0)  # argmax of a tie is class 0


def test_top5_absent_with_five_classes():
    logits, labels = _random_case(0, 5, 30)
    assert set(classification_metrics(logits, labels)) == {"accuracy", "macro_f1"}
    assert "top5_accuracy" not in per_class_report(logits, labels, list("abcde"))


def test_build_compute_metrics_takes_the_first_array_of_tuples():
    logits, labels = _random_case(3, 7, 50)
    hidden = np.zeros((50, 4))
    compute = build_compute_metrics(7)
    from_tuple = compute(EvalPrediction(predictions=(logits, hidden), label_ids=(labels,)))
    plain = compute(EvalPrediction(predictions=logits, label_ids=labels))
    assert from_tuple == plain == classification_metrics(logits, labels, 7)
    assert set(plain) == {"accuracy", "macro_f1", "top5_accuracy"}


@pytest.mark.parametrize(
    ("logits", "labels", "num_classes", "message"),
    [
        (np.zeros((3, 4)), np.array([0, 1]), None, "3 rows"),
        (np.zeros((2, 4)), np.array([0, 4]), None, "label 4"),
        (np.zeros((2, 4)), np.array([0, 1]), 5, "num_classes=5"),
        (np.zeros(4), np.array([0]), None, "2-D"),
        (np.zeros((0, 4)), np.array([], dtype=int), None, "zero samples"),
    ],
)
def test_bad_inputs_are_rejected(logits, labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(logits, labels, num_classes)


def test_per_class_report_rejects_duplicate_names():
    with pytest.raises(ValueError, match="repeated"):
        per_class_report(np.zeros((2, 2)), np.array([0, 1]), ["x", "x"])
