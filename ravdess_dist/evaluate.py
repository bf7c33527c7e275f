"""Evaluation on held-out actors: every clip of the selection counted exactly once across ranks (checked against the
loader's total), metrics, confusion-matrix plot."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ravdess_dist.metrics import confusion_matrix, summarize  # noqa: E402


@torch.no_grad()
def evaluate(model, loader, accelerator, class_names: list[str]) -> tuple[dict, np.ndarray, list[dict]]:
    """Metrics, confusion matrix and per-clip predictions of MODEL over LOADER, gathered from every rank.

    LOADER is a ShardLoader (or anything iterable with its `total`, the clips of the whole selection across ranks):
    a clip gathered twice or a clip missing is a RuntimeError naming the counts."""
    model.eval()
    logits, labels, keys = [], [], []
    for batch in loader:
        with accelerator.autocast():
            out = window_average(model, batch.features)
        # ranks may hold batches of different sizes: pad to a common size (valid=False), gather, drop the padding
        out, lab, valid = (accelerator.pad_across_processes(t) for t in (out, batch.labels, batch.valid))
        padded_keys = list(batch.keys) + [""] * (len(out) - len(batch.keys))
        out, lab, valid = accelerator.gather((out, lab, valid))
        logits.append(out[valid].cpu())
        labels.append(lab[valid].cpu())
        keys += [k for k, v in zip(gather_keys(accelerator, padded_keys), valid.tolist()) if v]
    if len(set(keys)) != len(keys):
        raise RuntimeError(f"evaluation counted {len(keys) - len(set(keys))} clip(s) twice: the loader's rank split is wrong")
    if len(keys) != loader.total:  # every clip of the selection, not only none twice: a lost batch or rank is an error
        raise RuntimeError(f"evaluation counted {len(keys)} of {loader.total} clips: the loader lost some")
    logits, labels = torch.cat(logits), torch.cat(labels)
    probs = logits.softmax(dim=1)
    preds = probs.argmax(dim=1)
    cm = confusion_matrix(labels.numpy(), preds.numpy(), len(class_names))
    return summarize(cm, class_names), cm, prediction_rows(keys, labels.tolist(), probs, class_names)


def prediction_rows(keys: list[str], labels: list[int], probs: torch.Tensor, class_names: list[str]) -> list[dict]:
    """predictions.json: per clip its key, true and predicted class, the predicted class's probability (`prob`) and
    every class's (`probs`, in class order), so that ensembles and error analyses need the predictions, not the
    checkpoints (`ensemble --predictions`)."""
    return [{"key": k, "label": class_names[t], "pred": class_names[int(pr.argmax())], "prob": round(float(pr.max()), 4),
             "probs": {c: round(float(x), 6) for c, x in zip(class_names, pr.tolist())}}
            for k, t, pr in zip(keys, labels, probs)]


def window_average(model, features: torch.Tensor) -> torch.Tensor:
    """Log-probabilities [B, C] of features [B, 1, F, T], or of [B, K, 1, F, T] (K windows per clip, probabilities
    averaged: the whole utterance counts, not one window)."""
    if features.dim() == 4:
        return model(features).float().log_softmax(dim=1)
    b, k = features.shape[:2]
    probs = model(features.flatten(0, 1)).float().softmax(dim=1).reshape(b, k, -1).mean(dim=1)
    return probs.clamp_min(1e-12).log()


def gather_keys(accelerator, keys: list[str]) -> list[str]:
    """Keys of a batch from every rank, in the same rank order as accelerator.gather (padding keys included)."""
    if accelerator.num_processes == 1:
        return list(keys)
    from accelerate.utils import gather_object

    return gather_object(list(keys))


def plot_confusion(cm: np.ndarray, class_names: list[str], title: str):
    """A row-normalised confusion matrix with counts, as a matplotlib figure."""
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set(xticks=range(len(class_names)), yticks=range(len(class_names)), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(class_names, rotation=45, ha="right")
    ax.set_yticklabels(class_names)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    fig.colorbar(im, ax=ax, label="fraction of true class")
    fig.tight_layout()
    return fig
