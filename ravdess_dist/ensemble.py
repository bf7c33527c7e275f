"""Evaluate an ensemble: `python -m ravdess_dist.ensemble RUN_DIR... --out DIR [--shards DIR] [--eval-crops K]
[--actors val]`.

The runs (e.g. the same fold trained with several seeds or models) must share the test actors and the class list;
each run's best.pt scores the test actors' clips with its own features and evaluation windows, and the ensemble's
prediction is the mean of the members' class probabilities. Writes metrics.json (with each member's own metrics
beside the ensemble's) and confusion_matrix.png to --out.

Evaluation settings are chosen on validation actors, never on test actors: `--actors val` scores the runs' validation
actors instead (metrics under "val", "scored": "val"), `--eval-crops K` re-scores with K evaluation windows per clip
instead of each run's own (e.g. to compare 1, 3 and 5 windows on the validation actors of every fold), and
`--eval-speeds 0.9,1.0,1.1` adds test-time speed views (every window also played at those speeds, probabilities
averaged). `--checkpoint last` scores each run's last epoch (last.pt) instead of its kept model (best.pt): how the
two selection rules compare on the CV mean, without training again.
`--intensity strong|normal` scores every member on that intensity's clips with that task's classes: a run trained for
another intensity (e.g. an 8-class normal run, trained on both intensities, as a member of a strong ensemble) has its
probabilities restricted to the task's classes and renormalised, so it cannot predict a class the task lacks
(neutral on strong); a run that lacks one of the task's classes is refused.
`--predictions` takes each member's test predictions from its predictions.json (every class's probability per clip,
written by the trainer and by this command) instead of scoring its checkpoint: ensembles of runs whose checkpoints
are gone, e.g. of the folders committed under results/. Those are the runs' own test scores, so the re-scoring
options (--actors, --eval-crops, --eval-speeds, --checkpoint, another --intensity) do not apply to them.
A single run is an ensemble of one.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ravdess_dist.checkpoint import load_checkpoint
from ravdess_dist.config import device_only_in_use, from_dict
from ravdess_dist.data.contract import LoaderSpec, reference_entries
from ravdess_dist.data.factory import make_loader
from ravdess_dist.evaluate import plot_confusion, prediction_rows, window_average
from ravdess_dist.metrics import confusion_matrix, summarize
from ravdess_dist.models import create_model
from shards.atomic import write_json
from shards.manifest import Manifest


CHECKPOINTS = ("best", "last")  # a run's kept model (best.pt) and its last epoch (last.pt)


@dataclass
class Member:
    """One run's scores: key -> class probabilities and label, the actors scored, its classes, its metrics.json, and
    the evaluation windows per clip it was scored with."""
    probs: dict[str, torch.Tensor]
    labels: dict[str, int]
    actors: list[int]
    classes: list[str]
    metrics: dict
    eval_crops: int
    epoch: int


def restrict(probs: torch.Tensor, classes: list[str], target: list[str]) -> torch.Tensor:
    """Class probabilities [..., len(CLASSES)] -> [..., len(TARGET)] (TARGET a subset of CLASSES): the other classes'
    mass dropped and the rest renormalised, which is the softmax of the TARGET classes' logits alone."""
    kept = probs[..., [classes.index(c) for c in target]]
    return kept / kept.sum(dim=-1, keepdim=True)


def autocast_as_trained(metrics: dict, device: torch.device):
    """The autocast the run's own evaluation used (metrics.json's mixed_precision: bf16 or fp16, else none), so that a
    run re-scored as it was tested gives its own probabilities back, not float32 ones that differ in the 3rd digit."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(metrics.get("mixed_precision", "no"))
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


@torch.no_grad()
def member_probabilities(run: Path, shards: Path | None, device: torch.device, eval_crops: int | None = None,
                         actors: str = "test", eval_speeds: tuple[float, ...] = (1.0,),
                         checkpoint: str = "best", intensity: str | None = None) -> Member:
    """RUN's kept model (CHECKPOINT "best": best.pt) or last epoch ("last": last.pt) on its ACTORS ("test" or "val"),
    with EVAL_CROPS windows per clip (default: the run's own), each played at every factor of EVAL_SPEEDS; the clips
    and classes of INTENSITY (default: the run's own; another one: probabilities restricted to its classes)."""
    state = load_checkpoint(run / f"{checkpoint}.pt")
    metrics = json.loads((run / "metrics.json").read_text())
    cfg = from_dict(state["config"], str(run / f"{checkpoint}.pt"))
    root = Path(shards or cfg.shards)
    scored, classes, crops = metrics["split"][actors], state["classes"], eval_crops or cfg.eval_crops
    manifest, intensity = Manifest.load(root), intensity or cfg.intensity
    target = classes if intensity == cfg.intensity else manifest.class_names(intensity)
    if set(target) - set(classes):
        raise ValueError(f"{run}: trained for {cfg.intensity} on the classes {classes}, which lack "
                         f"{sorted(set(target) - set(classes))} of the {intensity} task")
    if not scored:
        raise ValueError(f"{run}: has no {actors} actors (a run trained with --no-validation has no validation actors, "
                         f"a final model, --no-test, no test actors)")
    if cfg.speaker_norm and cfg.speaker_stats == "other_intensity" and intensity != cfg.intensity:
        raise ValueError(f"{run}: its speaker statistics come from the {intensity} clips: it scores {cfg.intensity} only")
    used = device_only_in_use(cfg, crops, eval_speeds)  # the other backends score one plain window
    if used and cfg.backend != "device":
        raise ValueError(f"{run}: {', '.join(used)} need(s) a run of the device backend, not {cfg.backend}")
    loader = make_loader(cfg.backend, LoaderSpec(root, manifest.select(intensity, scored), classes,
                                                 cfg.batch_size, False, cfg.features, None, device,
                                                 eval_crops=crops, eval_speeds=tuple(eval_speeds),
                                                 speaker_norm=cfg.speaker_norm, num_workers=cfg.num_workers,
                                                 speaker_reference=reference_entries(manifest, cfg.intensity,
                                                                                     cfg.speaker_stats, scored)))
    model = create_model(cfg.model, len(classes), cfg.features.num_bins, cfg.features.num_frames, **cfg.model_args)
    model.load_state_dict(state["model"])
    model.to(device).eval()
    probs, labels = {}, {}
    for batch in loader:
        with autocast_as_trained(metrics, device):
            out = window_average(model, batch.features).exp().cpu()
        for key, p, y, valid in zip(batch.keys, out, batch.labels.tolist(), batch.valid.tolist()):
            if valid:
                probs[key], labels[key] = restrict(p, classes, target), target.index(classes[y])
    epoch = metrics["best_epoch"] if checkpoint == "best" else state["epoch"] - 1  # last.pt: epochs completed
    return Member(probs, labels, sorted(scored), target, metrics, crops, epoch)


def predicted_member(run: Path, intensity: str | None = None) -> Member:
    """RUN's test scores as it wrote them: predictions.json (every class's probability per clip) and metrics.json, no
    checkpoint. INTENSITY, when given, must be the run's own: its predictions cover only its own task's clips."""
    files = [run / "predictions.json", run / "metrics.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"--predictions needs {' and '.join(missing)}")
    rows, metrics = (json.loads(f.read_text()) for f in files)
    if metrics.get("scored", "test") != "test":
        raise ValueError(f"{run}: its predictions are of its {metrics['scored']} actors, not its test actors")
    if intensity and intensity != metrics["intensity"]:
        raise ValueError(f"{run}: its predictions are of {metrics['intensity']} clips; scoring it on {intensity} needs "
                         "its checkpoint (drop --predictions)")
    classes = metrics["classes"]
    if not rows or any(list(r.get("probs", {})) != classes for r in rows):
        raise ValueError(f"{run / 'predictions.json'}: every row needs `probs` with every class of {classes} in "
                         "order (predictions written before they carried every class's probability)")
    probs = {r["key"]: torch.tensor([r["probs"][c] for c in classes]) for r in rows}
    labels = {r["key"]: classes.index(r["label"]) for r in rows}
    actors = metrics.get("test_actors") or metrics["split"]["test"]  # an ensemble's metrics, or a run's
    crops = metrics.get("eval_crops")
    return Member(probs, labels, sorted(actors), classes, metrics, crops, metrics["best_epoch"])


def check_predictions_scoring(actors: str, eval_crops: int | None, eval_speeds: tuple[float, ...], checkpoint: str) -> None:
    """--predictions scores what the runs wrote: the options that re-score a checkpoint are an error with it."""
    changed = [flag for flag, on in (("--actors val", actors != "test"), ("--eval-crops", eval_crops is not None),
                                     ("--eval-speeds", tuple(eval_speeds) != (1.0,)),
                                     ("--checkpoint last", checkpoint != "best")) if on]
    if changed:
        raise ValueError(f"{', '.join(changed)} re-score(s) a checkpoint; --predictions takes the runs' own test "
                         "predictions as they were written")


def evaluate_ensemble(runs: list[Path], shards: Path | None = None, eval_crops: int | None = None,
                      actors: str = "test", eval_speeds: tuple[float, ...] = (1.0,),
                      checkpoint: str = "best", intensity: str | None = None,
                      predictions: bool = False) -> tuple[dict, list, list[dict]]:
    """Mean probabilities of RUNS' CHECKPOINT ("best" or "last") over their common clips of ACTORS ("test" or "val"),
    scored with EVAL_CROPS windows (default: each run's own) at EVAL_SPEEDS, on INTENSITY's clips and classes
    (default: each run's own, which must then agree), or with PREDICTIONS the runs' own test predictions; metrics (the
    ensemble's and each member's), the ensemble's confusion matrix and its per-clip predictions."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {list(CHECKPOINTS)}, got {checkpoint!r}")
    if actors not in ("test", "val"):
        raise ValueError(f"actors must be 'test' or 'val', got {actors!r}")
    if eval_crops is not None and eval_crops < 1:
        raise ValueError(f"eval_crops must be >= 1, got {eval_crops}")
    if not eval_speeds or any(not 0.5 <= f <= 2.0 for f in eval_speeds):
        raise ValueError(f"eval_speeds must be factors between 0.5 and 2, got {list(eval_speeds)}")
    if predictions:
        check_predictions_scoring(actors, eval_crops, eval_speeds, checkpoint)
        members = [predicted_member(run, intensity) for run in runs]
    else:
        # a plain device, not an Accelerator: scoring needs no process group, and Accelerate's process-wide state
        # would pin this process's mixed precision for any training that follows in it
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        members = [member_probabilities(run, shards, device, eval_crops, actors, eval_speeds, checkpoint,
                                        intensity) for run in runs]
    first = members[0]
    for run, m in zip(runs, members):
        if m.actors != first.actors or m.classes != first.classes:
            raise ValueError(f"{run}: {actors} actors {m.actors} / classes {m.classes} differ from {runs[0]}'s "
                             f"{first.actors} / {first.classes}: an ensemble needs the same {actors} set"
                             + ("" if intensity else " (--intensity scores every member on one intensity's task)"))
    keys = sorted(first.probs)
    if any(sorted(m.probs) != keys for m in members):
        raise ValueError("the members scored different clips")
    member_probs = torch.stack([torch.stack([m.probs[k] for k in keys]) for m in members])  # [members, clips, classes]
    labels = [first.labels[k] for k in keys]
    scores = [confusion_matrix(labels, p.argmax(dim=1).numpy(), len(first.classes)) for p in member_probs]
    mean = member_probs.mean(dim=0)
    cm = confusion_matrix(labels, mean.argmax(dim=1).numpy(), len(first.classes))
    result = {"runs": [str(r) for r in runs], "classes": first.classes, "scored": actors, f"{actors}_actors": first.actors,
              actors: summarize(cm, first.classes), "members": [summarize(c, first.classes) for c in scores],
              "eval_crops": [m.eval_crops for m in members], "eval_speeds": list(eval_speeds), "checkpoint": checkpoint,
              "confusion_matrix": cm.tolist(),
              "model": "+".join(sorted({m.metrics["model"] for m in members})),
              "intensity": intensity or first.metrics["intensity"],
              "member_intensities": [m.metrics["intensity"] for m in members],
              "split": first.metrics["split"], "best_epoch": [m.epoch for m in members],
              **({"source": "predictions"} if predictions else {})}
    return result, cm, prediction_rows(keys, labels, mean, first.classes)


def write_ensemble(runs: list[Path], out: Path, shards: Path | None = None, name: str | None = None,
                   eval_crops: int | None = None, actors: str = "test", eval_speeds: tuple[float, ...] = (1.0,),
                   checkpoint: str = "best", intensity: str | None = None, predictions: bool = False) -> dict:
    """Score the ensemble of RUNS' CHECKPOINT (on ACTORS, with EVAL_CROPS windows at EVAL_SPEEDS, on INTENSITY's task),
    or of their own test PREDICTIONS; write OUT/metrics.json (run NAME, default OUT's name), OUT/predictions.json and
    OUT/confusion_matrix.png."""
    result, cm, rows = evaluate_ensemble(runs, shards, eval_crops, actors, eval_speeds, checkpoint, intensity,
                                         predictions)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"run": name or out.name, **result}
    write_json(out / "metrics.json", metrics)
    write_json(out / "predictions.json", rows)
    title = f"ensemble of {len(runs)}: {actors} UA {result[actors]['ua']:.3f}"
    plot_confusion(cm, result["classes"], title).savefig(out / "confusion_matrix.png")
    return metrics


def speed_list(text: str) -> tuple[float, ...]:
    """'0.9,1.0,1.1' -> (0.9, 1.0, 1.1), for --eval-speeds."""
    try:
        return tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated speed factors such as 0.9,1.0,1.1, got {text!r}")


def add_scoring_arguments(ap: argparse.ArgumentParser) -> None:
    """--eval-crops, --eval-speeds and --actors, shared by this command and `cv ensemble`."""
    ap.add_argument("--eval-crops", type=int, help="evaluation windows per clip (default: each run's own)")
    ap.add_argument("--eval-speeds", type=speed_list, default=(1.0,),
                    help="test-time speed views, e.g. 0.9,1.0,1.1: every window also played at these speeds "
                         "(device-backend runs; default 1.0: the windows as they are)")
    ap.add_argument("--actors", choices=("test", "val"), default="test",
                    help="score the runs' test actors (default) or their validation actors (to choose settings on)")
    ap.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                    help="score each run's kept model (best.pt, default) or its last epoch (last.pt)")
    ap.add_argument("--predictions", action="store_true",
                    help="take each run's own test predictions (predictions.json with every class's probability, "
                         "beside metrics.json) instead of scoring its checkpoint: runs whose checkpoints are gone")
    ap.add_argument("--intensity", choices=("normal", "strong"),
                    help="score every member on this intensity's clips and classes (default: each run's own); a run "
                         "of the other intensity has its probabilities restricted to this task's classes")


def main(argv: list[str] | None = None) -> int:
    """Score the ensemble of the given runs and write its metrics."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.ensemble", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", type=Path, nargs="+", help="run folders (with best.pt and metrics.json)")
    ap.add_argument("--out", type=Path, required=True, help="folder for metrics.json and confusion_matrix.png")
    ap.add_argument("--shards", type=Path, help="shard root (default: the one each run was trained on)")
    add_scoring_arguments(ap)
    args = ap.parse_args(argv)
    try:
        result = write_ensemble(args.runs, args.out, args.shards, eval_crops=args.eval_crops, actors=args.actors,
                                eval_speeds=args.eval_speeds, checkpoint=args.checkpoint, intensity=args.intensity,
                                predictions=args.predictions)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores = result[args.actors]
    members = " ".join(f"{m['ua']:.3f}" for m in result["members"])
    print(f"ensemble of {len(args.runs)} on {args.actors} actors {result[args.actors + '_actors']}: "
          f"WA {scores['wa']:.3f} UA {scores['ua']:.3f} macro-F1 {scores['macro_f1']:.3f} (members' UA: {members})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
