"""Predict emotions of audio files: `python -m ravdess_dist.predict CHECKPOINT [CHECKPOINT...] FILE... [--json]`.

Any sample rate, mono or stereo, any length: audio is resampled and downmixed. A model trained with a speech span
(`features.speech_top_db`) looks at the speech only; windows cover it (the model's `eval_crops` windows, or
half-overlapping ones where more are needed) and their class probabilities are averaged. Several checkpoints (run
folders or .pt files) form an ensemble: their probabilities are averaged too.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from ravdess_dist.checkpoint import load_checkpoint
from ravdess_dist.config import from_dict
from ravdess_dist.features import Frontend, span_windows, speech_span
from ravdess_dist.models import create_model
from shards.audio import read_mono


def windows(wave: torch.Tensor, length: int, span: tuple[int, int] | None = None, count: int = 1) -> torch.Tensor:
    """[W, length] windows over SPAN of WAVE (default: all of it): at least COUNT, and enough half-overlapping ones to
    cover a long span; zero-padded where the clip is short."""
    start, stop = span or (0, len(wave))
    count = max(count, 1 + max(0, -(-(stop - start - length) // (length // 2))))
    starts = span_windows(torch.tensor([len(wave)]), torch.tensor([[start, stop]]), length, count)[0]
    padded = torch.nn.functional.pad(wave, (0, max(0, length - len(wave))))
    return torch.stack([padded[s:s + length] for s in starts.tolist()])


class Predictor:
    """A checkpoint's model and front end, ready to classify waveforms."""

    def __init__(self, checkpoint: Path, device: torch.device | None = None):
        """Load the checkpoint (a run folder means its best.pt); refuse a model that needs per-speaker statistics."""
        state = load_checkpoint(checkpoint / "best.pt" if checkpoint.is_dir() else checkpoint)
        self.cfg = from_dict(state["config"], str(checkpoint))
        if self.cfg.speaker_norm:
            raise ValueError(f"{checkpoint}: trained with speaker_norm (per-speaker statistics over a speaker's other "
                             "clips), which single-file prediction cannot supply")
        self.classes = state["classes"]
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        feats = self.cfg.features
        self.frontend = Frontend(feats).to(self.device).eval()
        self.model = create_model(self.cfg.model, len(self.classes), feats.num_bins, feats.num_frames, **self.cfg.model_args)
        self.model.load_state_dict(state["model"])
        self.model.to(self.device).eval()

    @torch.no_grad()
    def probabilities(self, path: Path) -> dict[str, float]:
        """Class probabilities of one audio file."""
        feats = self.cfg.features
        audio, _ = read_mono(path, feats.sample_rate)
        span = speech_span(audio, feats.speech_top_db, feats.n_fft, feats.hop_length)
        batch = windows(torch.from_numpy(audio), feats.num_samples, span, self.cfg.eval_crops).to(self.device)
        probs = self.model(self.frontend(batch)).float().softmax(dim=1).mean(dim=0)
        return {c: float(p) for c, p in zip(self.classes, probs)}


class Ensemble:
    """Several checkpoints with the same class list: their probabilities averaged."""

    def __init__(self, checkpoints: list[Path], device: torch.device | None = None):
        """Load every member; members that disagree on the classes are an error naming both."""
        self.members = [Predictor(c, device) for c in checkpoints]
        self.classes = self.members[0].classes
        for path, member in zip(checkpoints, self.members):
            if member.classes != self.classes:
                raise ValueError(f"{path}: classes {member.classes} differ from {checkpoints[0]}'s {self.classes}")

    def probabilities(self, path: Path) -> dict[str, float]:
        """Mean class probabilities of the members, rounded for printing."""
        each = [m.probabilities(path) for m in self.members]
        return {c: round(sum(p[c] for p in each) / len(each), 4) for c in self.classes}


def is_checkpoint(path: Path) -> bool:
    """A run folder or a .pt file (everything else on the command line is audio)."""
    return path.is_dir() or path.suffix == ".pt"


def main(argv: list[str] | None = None) -> int:
    """Print each file's predicted emotion and class probabilities (or JSON lines with --json)."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", type=Path, nargs="+", metavar="CHECKPOINT... FILE...",
                    help="run folders or .pt checkpoints (several: an ensemble), then audio files (.wav, .flac, ...)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)
    models = [p for p in args.paths if is_checkpoint(p)]
    files = [p for p in args.paths if not is_checkpoint(p)]
    if not models or not files:
        print("error: give at least one checkpoint (run folder or .pt) and one audio file", file=sys.stderr)
        return 2
    try:
        predictor = Ensemble(models)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for path in files:
        try:
            probs = predictor.probabilities(path)
        except Exception as err:  # one unreadable file must not stop the others
            print(f"error: {path}: cannot read audio ({err})", file=sys.stderr)
            failed += 1
            continue
        best = max(probs, key=probs.get)
        if args.json:
            print(json.dumps({"file": str(path), "emotion": best, "probabilities": probs}))
        else:
            print(f"{path}: {best} ({probs[best]:.2f})  " + " ".join(f"{c}={p:.2f}" for c, p in probs.items()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
