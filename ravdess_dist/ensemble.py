"""Evaluate an ensemble: `python -m ravdess_dist.ensemble RUN_DIR... --out DIR [--shards DIR]`.

The runs (e.g. the same fold trained with several seeds or models) must share the test actors and the class list;
each run's best.pt scores the test actors' clips with its own features and evaluation windows, and the ensemble's
prediction is the mean of the members' class probabilities. Writes metrics.json (with each member's own test metrics
beside the ensemble's) and confusion_matrix.png to --out.
"""
import argparse
import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from ravdess_dist.checkpoint import load_checkpoint
from ravdess_dist.config import from_dict
from ravdess_dist.data.contract import LoaderSpec
from ravdess_dist.data.factory import make_loader
from ravdess_dist.evaluate import plot_confusion, window_average
from ravdess_dist.metrics import confusion_matrix, summarize
from ravdess_dist.models import create_model
from shards.atomic import write_json
from shards.manifest import Manifest


@torch.no_grad()
def member_probabilities(run: Path, shards: Path | None, accelerator) -> tuple[dict, list[int], list[str], dict]:
    """One run's best model on its test actors: key -> probabilities, the test actors, the classes, its metrics."""
    state = load_checkpoint(run / "best.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = from_dict(state["config"], str(run / "best.pt"))
    root = Path(shards or cfg.shards)
    test = metrics["split"]["test"]
    classes = state["classes"]
    loader = make_loader(cfg.backend, LoaderSpec(root, Manifest.load(root).select(cfg.intensity, test), classes,
                                                 cfg.batch_size, False, cfg.features, None, accelerator.device,
                                                 eval_crops=cfg.eval_crops, speaker_norm=cfg.speaker_norm,
                                                 num_workers=cfg.num_workers))
    model = create_model(cfg.model, len(classes), cfg.features.num_bins, cfg.features.num_frames, **cfg.model_args)
    model.load_state_dict(state["model"])
    model.to(accelerator.device).eval()
    probs, labels = {}, {}
    for batch in loader:
        out = window_average(model, batch.features).exp().cpu()
        for key, p, y, valid in zip(batch.keys, out, batch.labels.tolist(), batch.valid.tolist()):
            if valid:
                probs[key], labels[key] = p, y
    return {"probs": probs, "labels": labels}, sorted(test), classes, metrics


def evaluate_ensemble(runs: list[Path], shards: Path | None = None) -> tuple[dict, list]:
    """Mean probabilities of RUNS over their common test clips; metrics and the confusion matrix."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    members = [member_probabilities(run, shards, accelerator) for run in runs]
    _, test, classes, _ = members[0]
    for run, (scores, other_test, other_classes, _) in zip(runs, members):
        if other_test != test or other_classes != classes:
            raise ValueError(f"{run}: test actors {other_test} / classes {other_classes} differ from {runs[0]}'s "
                             f"{test} / {classes}: an ensemble needs the same test set")
    keys = sorted(members[0][0]["probs"])
    if any(sorted(m[0]["probs"]) != keys for m in members):
        raise ValueError("the members scored different clips")
    mean = torch.stack([torch.stack([m[0]["probs"][k] for k in keys]) for m in members]).mean(dim=0)
    labels = [members[0][0]["labels"][k] for k in keys]
    cm = confusion_matrix(labels, mean.argmax(dim=1).numpy(), len(classes))
    result = {"runs": [str(r) for r in runs], "classes": classes, "test_actors": test, "test": summarize(cm, classes),
              "members": [m[3]["test"] for m in members], "confusion_matrix": cm.tolist(),
              "model": "+".join(sorted({m[3]["model"] for m in members})), "intensity": members[0][3]["intensity"],
              "split": members[0][3]["split"], "best_epoch": [m[3]["best_epoch"] for m in members]}
    return result, cm


def write_ensemble(runs: list[Path], out: Path, shards: Path | None = None, name: str | None = None) -> dict:
    """Score the ensemble of RUNS; write OUT/metrics.json (run NAME, default OUT's name) and OUT/confusion_matrix.png."""
    result, cm = evaluate_ensemble(runs, shards)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"run": name or out.name, **result}
    write_json(out / "metrics.json", metrics)
    plot_confusion(cm, result["classes"], f"ensemble of {len(runs)}: test UA {result['test']['ua']:.3f}").savefig(
        out / "confusion_matrix.png")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Score the ensemble of the given runs and write its metrics."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.ensemble", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders (with best.pt and metrics.json)")
    ap.add_argument("--out", type=Path, required=True, help="folder for metrics.json and confusion_matrix.png")
    ap.add_argument("--shards", type=Path, help="shard root (default: the one each run was trained on)")
    args = ap.parse_args(argv)
    try:
        result = write_ensemble(args.runs, args.out, args.shards)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    test = result["test"]
    members = " ".join(f"{m['ua']:.3f}" for m in result["members"])
    print(f"ensemble of {len(args.runs)} on actors {result['test_actors']}: WA {test['wa']:.3f} UA {test['ua']:.3f} "
          f"macro-F1 {test['macro_f1']:.3f} (members' UA: {members})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
