import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from tagstack.evaluation.metrics import accuracy, bootstrap_ci, evaluate, tagging_metrics


def test_macro_scores_match_sklearn_and_skip_tags_without_positives():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 6)) < 0.3).astype(float)
    y[:, 5] = 0  # no positive: must be left out
    s = rng.random((200, 6)) + 0.5 * y
    m = tagging_metrics(y, s)
    assert m["n_tags_evaluated"] == 5
    assert np.isnan(m["per_tag"]["roc_auc"][5])
    assert np.isclose(m["roc_auc"], roc_auc_score(y[:, :5], s[:, :5], average="macro"))
    assert np.isclose(m["pr_auc"], average_precision_score(y[:, :5], s[:, :5], average="macro"))


def test_accuracy_and_multiclass_evaluate():
    labels = np.array([0, 1, 2, 1])
    scores = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
    assert accuracy(labels, scores) == 0.75
    assert evaluate(np.eye(3)[labels], scores, task="multiclass")["accuracy"] == 0.75


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(1)
    y = (rng.random((300, 4)) < 0.4).astype(float)
    s = rng.random((300, 4)) + y * 0.4
    lo, hi = bootstrap_ci(y, s, n_boot=100)
    assert lo < tagging_metrics(y, s)["roc_auc"] < hi


def test_rank_macro_roc_auc_equals_sklearn_with_ties_and_one_class_tags():
    from tagstack.evaluation.metrics import macro_roc_auc

    rng = np.random.default_rng(2)
    y = rng.random((150, 30)) < 0.15
    y[:, 0] = False  # no positive: left out, as tagging_metrics does
    s = np.round(rng.random((150, 30)) + 0.3 * y, 1)  # many ties
    assert np.isclose(macro_roc_auc(y, s), tagging_metrics(y, s)["roc_auc"], rtol=0, atol=1e-12)
    assert np.isnan(macro_roc_auc(np.zeros((5, 2), bool), s[:5, :2]))


def test_unknown_labels_are_left_out_of_each_tags_scores():
    """A NaN label (never annotated) scores as if its clip were absent for that tag only."""
    from tagstack.evaluation.metrics import binary_targets, macro_roc_auc

    rng = np.random.default_rng(3)
    y = (rng.random((120, 3)) < 0.4).astype(np.float32)
    s = rng.random((120, 3)) + 0.4 * y
    y_unknown = y.copy()
    y_unknown[:40, 1] = np.nan  # tag 1 unknown on the first 40 clips
    m = tagging_metrics(binary_targets(y_unknown), s)
    ref = [roc_auc_score(y[:, 0], s[:, 0]), roc_auc_score(y[40:, 1], s[40:, 1]), roc_auc_score(y[:, 2], s[:, 2])]
    np.testing.assert_allclose(m["per_tag"]["roc_auc"], ref)
    assert np.isclose(m["per_tag"]["pr_auc"][1], average_precision_score(y[40:, 1], s[40:, 1]))
    assert np.isclose(macro_roc_auc(y_unknown, s), np.mean(ref), rtol=0, atol=1e-12)
    lo, hi = bootstrap_ci(y_unknown, s, n_boot=50)
    assert lo < np.mean(ref) < hi
    np.testing.assert_array_equal(binary_targets(np.array([[0.2, 0.5, np.nan]])), np.array([[0, 1, np.nan]], np.float32))
