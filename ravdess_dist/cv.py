"""Cross-validation over gender-balanced actor folds: train every fold, then summarise per fold and mean ± std.

    python -m ravdess_dist.cv --model hybrid --intensity normal --folds 6 [any train.py flag]
    python -m ravdess_dist.cv --jobs 2 --config configs/resnet.yaml ...   (2 concurrent fold processes; on GPUs, one GPU each)
    python -m ravdess_dist.cv summarize RUN_DIR_OR_METRICS_JSON... --out DIR   (e.g. after a SLURM array)
    python -m ravdess_dist.cv ensemble CV_DIR CV_DIR... --out DIR   (fold K = the ensemble of every CV_DIR/foldK)
    python -m ravdess_dist.cv ensemble CV_DIR... --out DIR --actors val --eval-crops 5   (re-scored on validation actors)
    python -m ravdess_dist.cv export CV_DIR --out results/NAME   (the CV without its checkpoints, to keep or share)
    python -m ravdess_dist.cv ensemble results/A results/B --predictions --out DIR   (from exported predictions)
"""
import argparse
import json
import os
import queue
import shutil
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from ravdess_dist.config import load_config, to_dict
from ravdess_dist.device import gpu_ids
from ravdess_dist.ensemble import add_scoring_arguments, write_ensemble
from ravdess_dist.evaluate import plot_confusion
from ravdess_dist.metrics import summarize as summarize_cm
from ravdess_dist.trainer import training_function
from shards.atomic import atomic_path, write_json, write_text

METRICS = ("wa", "ua", "macro_f1")
TRAIN_PY = Path(__file__).resolve().parent.parent / "train.py"


def summarize(metrics: list[dict], out: Path, config: dict | None = None) -> dict:
    """summary.json and summary.md: one row per run, then mean ± std per model and intensity; the folds' summed
    confusion matrix (confusion_matrix.png); CONFIG (the runs' settings) as config.yaml beside them."""
    scored = {m.get("scored", "test") for m in metrics}  # "val": a re-scoring of the validation actors (cv ensemble)
    if len(scored) > 1:
        raise ValueError(f"the runs score different actors ({sorted(scored)}): summarise test and validation apart")
    part = scored.pop()
    unscored = [m["run"] for m in metrics if m[part] is None]
    if unscored:
        raise ValueError(f"run(s) {unscored} have no {part} figures (a final model, --no-test, has no test actors)")
    rows = [{"run": m["run"], "model": m["model"], "intensity": m["intensity"], "test_actors": m["split"]["test"],
             **({"val_actors": m["split"]["val"]} if part == "val" else {}),
             "best_epoch": m["best_epoch"], **{k: m[part][k] for k in METRICS}} for m in metrics]
    groups = {}
    for row in rows:
        groups.setdefault((row["model"], row["intensity"]), []).append(row)
    means = [{"model": model, "intensity": intensity, "folds": len(g),
              **{f"{k}_mean": statistics.mean(r[k] for r in g) for k in METRICS},
              **{f"{k}_std": statistics.stdev(r[k] for r in g) if len(g) > 1 else 0.0 for k in METRICS}}
             for (model, intensity), g in sorted(groups.items())]
    summary = {"scored": part, "runs": rows, "summary": means}
    out.mkdir(parents=True, exist_ok=True)
    if len({tuple(m["classes"]) for m in metrics}) == 1:  # one class list: the folds' confusion matrices add up
        cm = np.sum([m["confusion_matrix"] for m in metrics], axis=0)
        summary["confusion_matrix"], summary["classes"] = cm.tolist(), metrics[0]["classes"]
        title = f"{len(metrics)} folds, every {part} clip once: UA {summarize_cm(cm, metrics[0]['classes'])['ua']:.3f}"
        plot_confusion(cm, metrics[0]["classes"], title).savefig(out / "confusion_matrix.png")
    write_json(out / "summary.json", summary)
    if config is not None:
        (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    scored = "validation" if part == "val" else "test"
    lines = [f"Scored on the folds' {scored} actors.", "",
             f"| run | model | intensity | {scored} actors | best epoch | WA | UA | macro-F1 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['run']} | {r['model']} | {r['intensity']} | {r[part + '_actors']} | {r['best_epoch']} | "
              f"{r['wa']:.3f} | {r['ua']:.3f} | {r['macro_f1']:.3f} |" for r in rows]
    lines += ["", "| model | intensity | folds | WA | UA | macro-F1 |", "|---|---|---|---|---|---|"]
    lines += [f"| {m['model']} | {m['intensity']} | {m['folds']} | "
              + " | ".join(f"{m[k + '_mean']:.3f} ± {m[k + '_std']:.3f}" for k in METRICS) + " |" for m in means]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return summary


def load_metrics(paths: list[Path]) -> list[dict]:
    """metrics.json of each run folder (or the file itself); a missing one is an error naming it."""
    files = [p / "metrics.json" if p.is_dir() else p for p in paths]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"no metrics.json for: {', '.join(missing)} (did those runs finish?)")
    return [json.loads(f.read_text()) for f in files]


def pop_jobs(argv: list[str]) -> tuple[int, list[str]]:
    """(N of `--jobs N`, or 1; ARGV without it): the one cv option that is not a training setting."""
    argv = list(argv)
    for i, token in enumerate(argv):
        if token == "--jobs" or token.startswith("--jobs="):
            value = token.split("=", 1)[1] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else "")
            del argv[i:i + (1 if "=" in token else 2)]
            if not value.isdigit() or int(value) < 1:
                sys.exit(f"error: --jobs takes a positive number of concurrent fold processes, got {value!r}")
            return int(value), argv
    return 1, argv


def slot_environment(slot: int, jobs: int, gpus: list[str], cpus: int) -> dict[str, str]:
    """The environment of a fold process in concurrent slot SLOT of JOBS: CPUS // JOBS torch threads, and on a machine
    with GPUS (CUDA_VISIBLE_DEVICES entries) one of them, slots round robin: JOBS = the GPU count is one GPU per fold,
    more jobs put as many folds on each GPU (small models leave a GPU idle between kernel launches)."""
    threads = str(max(1, cpus // jobs))
    return {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
            **({"CUDA_VISIBLE_DEVICES": gpus[slot % len(gpus)]} if gpus else {})}


def run_folds_concurrently(argv: list[str], folds: int, name: str, output_dir: Path, jobs: int,
                           gpus: list[str] | None = None) -> list[dict]:
    """Each fold as its own `train.py` process, JOBS at a time; returns their metrics in fold order, or exits naming
    the folds that failed and their logs (OUTPUT_DIR/NAME/foldK.log, whose first line names the fold's slot settings).

    For CPUs: small convolutional models scale poorly past one thread, and a multi-threaded process next to other
    work stalls in OpenMP barriers, so single-thread folds side by side finish a CV sooner than one multi-threaded
    process training them in turn (README, research loop). For GPUs (GPUS, default: those this process sees): each
    fold process sees one, by `slot_environment`; a fold takes a free slot, so no GPU runs more than its share.
    `--resume auto` per fold: a CV that was killed picks every fold up where it stopped."""
    gpus = gpu_ids() if gpus is None else gpus
    slots = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)
    (output_dir / name).mkdir(parents=True, exist_ok=True)

    def run(fold: int) -> int:
        """Train fold FOLD in a free slot; its exit status."""
        slot = slots.get()
        try:
            extra = slot_environment(slot, jobs, gpus, os.cpu_count() or 1)
            with open(output_dir / name / f"fold{fold}.log", "w") as log:
                log.write(f"cv: fold {fold} in slot {slot}: {' '.join(f'{k}={v}' for k, v in extra.items())}\n")
                log.flush()
                return subprocess.run([sys.executable, str(TRAIN_PY), *argv, "--folds", str(folds), "--fold",
                                       str(fold), "--run-name", f"{name}/fold{fold}", "--resume", "auto"],
                                      stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **extra}).returncode
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(jobs) as pool:
        codes = list(pool.map(run, range(folds)))
    failed = [f for f, code in enumerate(codes) if code]
    if failed:
        logs = ", ".join(str(output_dir / name / f"fold{f}.log") for f in failed)
        sys.exit(f"error: fold(s) {failed} failed (exit status {[codes[f] for f in failed]}): see {logs}")
    return load_metrics([output_dir / name / f"fold{f}" for f in range(folds)])


def ensemble_folds(cv_dirs: list[Path], out: Path, eval_crops: int | None = None, actors: str = "test",
                   eval_speeds: tuple[float, ...] = (1.0,), checkpoint: str = "best",
                   intensity: str | None = None, predictions: bool = False) -> list[dict]:
    """Fold by fold, the ensemble of the CV runs in CV_DIRS (e.g. one recipe trained with several seeds): OUT/foldK
    holds the ensemble of every CV_DIR/foldK's CHECKPOINT ("best" or "last"), scored on ACTORS with EVAL_CROPS windows
    at EVAL_SPEEDS, on INTENSITY's task (default: the runs' own), or of their own test PREDICTIONS (predictions.json:
    e.g. results/ folders, whose checkpoints are not kept; see ravdess_dist.ensemble).
    The runs must have the same folds (same test actors, same classes)."""
    needed = "predictions.json" if predictions else f"{checkpoint}.pt"
    folds = [sorted(p.name for p in d.glob("fold*") if (p / needed).is_file()
                    and (p / "metrics.json").is_file()) for d in cv_dirs]
    if not folds[0] or any(f != folds[0] for f in folds):
        raise ValueError(f"the cross-validation runs must hold the same finished folds ({needed} and "
                         "metrics.json): " + "; ".join(f"{d}: {f or 'none'}" for d, f in zip(cv_dirs, folds)))
    return [write_ensemble([d / fold for d in cv_dirs], out / fold, name=f"{out.name}/{fold}", eval_crops=eval_crops,
                           actors=actors, eval_speeds=eval_speeds, checkpoint=checkpoint, intensity=intensity,
                           predictions=predictions)
            for fold in folds[0]]


def summarize_main(argv: list[str]) -> None:
    """`cv summarize RUN... --out DIR`: the summary of finished runs (run folders or their metrics.json)."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.cv summarize")
    ap.add_argument("runs", type=Path, nargs="+", help="run folders or metrics.json files")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    first = args.runs[0] if args.runs[0].is_dir() else args.runs[0].parent
    config = yaml.safe_load((first / "config.yaml").read_text()) if (first / "config.yaml").is_file() else None
    try:
        summarize(load_metrics(args.runs), args.out, config)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")


def first_config(cv_dir: Path) -> dict:
    """The settings of a CV folder's runs: fold0/config.yaml (a run's), or the folder's own config.yaml (a summary's,
    e.g. a results/ folder, or an ensemble's, which lists its members)."""
    for path in (cv_dir / "fold0" / "config.yaml", cv_dir / "config.yaml"):
        if path.is_file():
            return yaml.safe_load(path.read_text())
    return {}


def ensemble_main(argv: list[str]) -> None:
    """`cv ensemble CV_DIR... --out DIR [--eval-crops K] [--actors val]`: several cross-validations of the same folds
    averaged fold by fold (one CV_DIR: that run re-scored, e.g. on its validation actors with other windows)."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.cv ensemble")
    ap.add_argument("cv_dirs", type=Path, nargs="+", help="cross-validation folders (with fold0, fold1, ...)")
    ap.add_argument("--out", type=Path, required=True)
    add_scoring_arguments(ap)
    args = ap.parse_args(argv)
    try:
        results = ensemble_folds(args.cv_dirs, args.out, args.eval_crops, args.actors, args.eval_speeds,
                                 args.checkpoint, args.intensity, args.predictions)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    config = first_config(args.cv_dirs[0])
    scoring = {"scored": args.actors, **({"checkpoint": args.checkpoint} if args.checkpoint != "best" else {}),
               **({"source": "predictions"} if args.predictions else {}),
               **({"eval_crops": args.eval_crops} if args.eval_crops else {}),
               **({"scored_intensity": args.intensity} if args.intensity else {}),
               **({"eval_speeds": list(args.eval_speeds)} if tuple(args.eval_speeds) != (1.0,) else {})}
    config.pop("ensemble_of", None)  # members that are ensembles themselves: this ensemble's list replaces theirs
    summarize(results, args.out, {"ensemble_of": [str(d) for d in args.cv_dirs], **config, **scoring})


def train_main(argv: list[str]) -> None:
    """`cv [--jobs N] [train.py flags]`: train every fold in turn in this process (or N fold processes at a time) and
    write the summary."""
    jobs, argv = pop_jobs(argv)
    try:
        cfg = load_config(argv)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    if cfg.test_actors or cfg.val_actors:
        sys.exit("error: cross-validation chooses test actors by fold; drop --test-actors/--val-actors")
    if not cfg.test:
        sys.exit("error: cross-validation tests every fold; --no-test is for the final model (train.py)")
    cfg.folds = cfg.folds or 6
    name = cfg.run_name or f"cv-{cfg.model}-{cfg.intensity}-{cfg.folds}folds"
    if jobs > 1:
        results = run_folds_concurrently(argv, cfg.folds, name, Path(cfg.output_dir), jobs)
        config = yaml.safe_load((Path(cfg.output_dir) / name / "fold0" / "config.yaml").read_text())
        summarize(results, Path(cfg.output_dir) / name, config)
        return
    results = []
    for fold in range(cfg.folds):
        fold_cfg = load_config(argv)
        fold_cfg.folds, fold_cfg.fold, fold_cfg.run_name = cfg.folds, fold, f"{name}/fold{fold}"
        results.append(training_function(fold_cfg, last=fold == cfg.folds - 1))
    summarize(results, Path(cfg.output_dir) / name, to_dict(fold_cfg))


SUMMARY_FILES = ("summary.json", "summary.md", "config.yaml", "confusion_matrix.png")
FOLD_FILES = ("metrics.json", "predictions.json", "confusion_matrix.png")


def console_lines(log: str) -> str:
    """A fold's console log without its progress bars: of each line, what follows its last carriage return (the log
    must be read as bytes: text mode turns carriage returns into newlines, and so does str.splitlines)."""
    lines = (line.rsplit("\r", 1)[-1].rstrip() for line in log.split("\n"))
    return "".join(line + "\n" for line in lines if line)


def export(cv_dir: Path, out: Path) -> list[Path]:
    """CV_DIR without its checkpoints, into OUT (e.g. results/NAME, small enough to commit): the summary files, each
    fold's metrics.json, predictions.json (every class's probability per test clip: `cv ensemble --predictions` forms
    ensembles from them) and confusion matrix, and each fold's console log (foldK.log of `--jobs`) without progress
    bars as logs/foldK.txt. Returns the files written; an unfinished CV (no summary.json) is an error."""
    if not (cv_dir / "summary.json").is_file():
        raise FileNotFoundError(f"{cv_dir}: no summary.json (did the cross-validation finish?)")
    copies = [(cv_dir / name, out / name) for name in SUMMARY_FILES]
    for fold in sorted(p for p in cv_dir.glob("fold*") if p.is_dir()):
        copies += [(fold / name, out / fold.name / name) for name in FOLD_FILES]
    written = []
    for src, dst in copies:
        if src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            written.append(dst)
    logs = sorted(cv_dir.glob("fold*.log"))
    if logs:
        (out / "logs").mkdir(parents=True, exist_ok=True)
    for log in logs:
        text = console_lines(log.read_bytes().decode(errors="replace"))
        written.append(write_text(out / "logs" / f"{log.stem}.txt", text))
    return written


def export_main(argv: list[str]) -> None:
    """`cv export CV_DIR --out DIR`: the finished CV without its checkpoints."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.cv export")
    ap.add_argument("cv_dir", type=Path, help="a finished cross-validation folder")
    ap.add_argument("--out", type=Path, required=True, help="e.g. results/NAME")
    args = ap.parse_args(argv)
    try:
        written = export(args.cv_dir, args.out)
    except FileNotFoundError as err:
        sys.exit(f"error: {err}")
    print(f"{len(written)} files in {args.out}")


SUBCOMMANDS = {"summarize": summarize_main, "ensemble": ensemble_main, "export": export_main}  # else: train the folds


def main(argv: list[str] | None = None) -> None:
    """Dispatch: `summarize` and `ensemble` work on finished runs; otherwise the arguments train the folds."""
    argv = sys.argv[1:] if argv is None else argv
    command = SUBCOMMANDS.get(argv[0]) if argv else None
    (command or train_main)(argv[1:] if command else argv)


if __name__ == "__main__":
    main()
