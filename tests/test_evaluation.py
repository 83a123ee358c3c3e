import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from tagstack.train.evaluation import accuracy, bootstrap_ci, evaluate, tagging_metrics


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
    from tagstack.train.evaluation import macro_roc_auc

    rng = np.random.default_rng(2)
    y = rng.random((150, 30)) < 0.15
    y[:, 0] = False  # no positive: left out, as tagging_metrics does
    s = np.round(rng.random((150, 30)) + 0.3 * y, 1)  # many ties
    assert np.isclose(macro_roc_auc(y, s), tagging_metrics(y, s)["roc_auc"], rtol=0, atol=1e-12)
    assert np.isnan(macro_roc_auc(np.zeros((5, 2), bool), s[:5, :2]))
