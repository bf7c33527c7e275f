"""Predict emotions of audio files with a trained checkpoint: `python -m ravdess_dist.predict CHECKPOINT FILE... [--json]`.

Any sample rate, mono or stereo, any length: audio is resampled and downmixed; clips longer than the model's window are
cut into half-overlapping windows whose class probabilities are averaged.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from ravdess_dist.checkpoint import load_checkpoint
from ravdess_dist.config import from_dict
from ravdess_dist.features import Frontend
from ravdess_dist.models import create_model
from shards.audio import read_mono


def windows(wave: torch.Tensor, length: int) -> torch.Tensor:
    """[W, length] half-overlapping windows covering WAVE (one zero-padded window if it is short)."""
    if len(wave) <= length:
        return torch.nn.functional.pad(wave, (0, length - len(wave)))[None]
    starts = list(range(0, len(wave) - length, length // 2)) + [len(wave) - length]
    return torch.stack([wave[s:s + length] for s in starts])


class Predictor:
    """A checkpoint's model and front end, ready to classify waveforms."""

    def __init__(self, checkpoint: Path, device: torch.device | None = None):
        state = load_checkpoint(checkpoint / "best.pt" if checkpoint.is_dir() else checkpoint)
        self.cfg = from_dict(state["config"], str(checkpoint))
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
        length = int(round(feats.clip_seconds * feats.sample_rate))
        batch = windows(torch.from_numpy(audio), length).to(self.device)
        probs = self.model(self.frontend(batch)).float().softmax(dim=1).mean(dim=0)
        return {c: round(float(p), 4) for c, p in zip(self.classes, probs)}


def main(argv: list[str] | None = None) -> int:
    """Print each file's predicted emotion and class probabilities (or JSON lines with --json)."""
    ap = argparse.ArgumentParser(prog="python -m ravdess_dist.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path, help="best.pt or last.pt of a run (or the run folder)")
    ap.add_argument("files", type=Path, nargs="+", help="audio files (.wav, .flac, ...)")
    ap.add_argument("--json", action="store_true", help="one JSON object per line")
    args = ap.parse_args(argv)
    try:
        predictor = Predictor(args.checkpoint)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for path in args.files:
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
