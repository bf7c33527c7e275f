"""Classification metrics for speaker-independent evaluation: WA, UA (mean per-class recall), macro-F1, confusion matrix."""
import numpy as np


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """Counts[true, predicted] over all clips."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)), 1)
    return cm


def summarize(cm: np.ndarray, class_names: list[str]) -> dict:
    """WA (accuracy), UA (unweighted: mean recall over classes present), macro-F1 and per-class recall from a confusion matrix."""
    support, predicted, hits = cm.sum(axis=1), cm.sum(axis=0), np.diag(cm)
    present = support > 0
    recall = np.divide(hits, support, out=np.zeros(len(cm)), where=present)
    precision = np.divide(hits, predicted, out=np.zeros(len(cm)), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(cm)), where=precision + recall > 0)
    return {
        "clips": int(cm.sum()),
        "wa": float(hits.sum() / max(cm.sum(), 1)),
        "ua": float(recall[present].mean()) if present.any() else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "recall": {name: float(r) for name, r in zip(class_names, recall)},
    }
