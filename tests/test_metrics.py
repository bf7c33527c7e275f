"""Metrics against values computed by hand on a tiny confusion matrix."""
import numpy as np
import pytest

from ravdess_dist.metrics import confusion_matrix, summarize


def test_metrics_match_hand_computed_values():
    """3 classes, 10 clips: WA, UA, macro-F1 and recalls as worked out on paper."""
    labels = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    preds = [0, 0, 0, 1, 1, 1, 2, 2, 2, 0]
    cm = confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [0, 2, 1], [1, 0, 2]])
    m = summarize(cm, ["a", "b", "c"])
    assert m["clips"] == 10 and m["wa"] == pytest.approx(0.7)
    assert m["recall"] == pytest.approx({"a": 0.75, "b": 2 / 3, "c": 2 / 3})
    assert m["ua"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    # precision a = 3/4, b = 2/3, c = 2/3 -> F1 a = 0.75, b = c = 2/3
    assert m["macro_f1"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)


def test_ua_differs_from_wa_under_imbalance_and_ignores_absent_classes():
    """UA weighs each class equally; a class with no clips does not drag it down."""
    cm = confusion_matrix([0] * 8 + [1] * 2, [0] * 8 + [0, 1], 3)
    m = summarize(cm, ["x", "y", "z"])
    assert m["wa"] == pytest.approx(0.9) and m["ua"] == pytest.approx(0.75)
    assert m["recall"]["z"] == 0.0
