"""Predict emotions of audio files: `python -m ravdess_dist.predict CHECKPOINT [CHECKPOINT...] FILE... [--json]`.

Any sample rate, mono or stereo, any length: audio is resampled and downmixed. A model trained with a speech span
(`features.speech_top_db`) looks at the speech only; windows cover it (the model's `eval_crops` windows, or
half-overlapping ones where more are needed) and their class probabilities are averaged. Several checkpoints (run
folders or .pt files) form an ensemble: their probabilities are averaged too. A model trained with speaker_norm needs
the speaker's statistics: `--speaker-audio FILE...`, other recordings of the same speaker (unlabelled; the files to
classify may be among them), whose centre windows give them as in training.
"""
import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from ravdess_dist.checkpoint import load_checkpoint
from ravdess_dist.config import from_dict
from ravdess_dist.features import FeatureConfig, Frontend, span_windows, speech_span
from ravdess_dist.models import create_model
from shards.audio import read_mono


def windows(wave: torch.Tensor, length: int, span: tuple[int, int] | None = None, count: int = 1,
            cover: bool = True) -> torch.Tensor:
    """[W, length] windows over SPAN of WAVE (default: all of it): at least COUNT, and (COVER) enough half-overlapping
    ones to cover a long span, or exactly COUNT (count 1: the centre one); zero-padded where the clip is short."""
    start, stop = span or (0, len(wave))
    if cover:
        count = max(count, 1 + max(0, -(-(stop - start - length) // (length // 2))))
    starts = span_windows(torch.tensor([len(wave)]), torch.tensor([[start, stop]]), length, count)[0]
    padded = torch.nn.functional.pad(wave, (0, max(0, length - len(wave))))
    return torch.stack([padded[s:s + length] for s in starts.tolist()])


@torch.no_grad()
def speaker_statistics(paths: list[Path], feats: FeatureConfig, device: torch.device | str = "cpu"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation per feature bin [1, F, 1] of a speaker's recordings PATHS: the features (without
    per-clip normalisation) of each one's centre window over its speech, as the device path computes an actor's
    statistics for speaker_norm. A file that cannot be read is an error naming it."""
    frontend = Frontend(replace(feats, normalize=False)).to(device).eval()
    rows = []
    for path in paths:
        try:
            audio, _ = read_mono(path, feats.sample_rate)
        except Exception as err:
            raise ValueError(f"{path}: cannot read the speaker's audio ({err})") from err
        span = speech_span(audio, feats.speech_top_db, feats.n_fft, feats.hop_length)
        rows.append(frontend(windows(torch.from_numpy(audio), feats.num_samples, span, 1, cover=False).to(device)))
    x = torch.cat(rows)  # [N, 1, F, T]
    return x.mean(dim=(0, 3), keepdim=True)[0], x.std(dim=(0, 3), keepdim=True)[0].clamp_min(1e-5)


class Predictor:
    """A checkpoint's model and front end, ready to classify waveforms."""

    def __init__(self, checkpoint: Path, device: torch.device | None = None, speaker_audio: list[Path] | None = None):
        """Load the checkpoint (a run folder means its best.pt); a speaker_norm model takes its statistics from
        SPEAKER_AUDIO (the speaker's recordings), and without them is refused."""
        state = load_checkpoint(checkpoint / "best.pt" if checkpoint.is_dir() else checkpoint)
        self.cfg = from_dict(state["config"], str(checkpoint))
        if self.cfg.speaker_norm and not speaker_audio:
            raise ValueError(f"{checkpoint}: trained with speaker_norm (per-speaker statistics): give recordings of "
                             "the speaker with --speaker-audio FILE...")
        self.classes = state["classes"]
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        feats = self.cfg.features
        self.speaker_stats = speaker_statistics(speaker_audio, feats, self.device) if self.cfg.speaker_norm else None
        self.frontend = Frontend(replace(feats, normalize=False) if self.cfg.speaker_norm else feats).to(self.device).eval()
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
        x = self.frontend(batch)
        if self.speaker_stats is not None:
            x = (x - self.speaker_stats[0]) / self.speaker_stats[1]
        probs = self.model(x).float().softmax(dim=1).mean(dim=0)
        return {c: float(p) for c, p in zip(self.classes, probs)}


class Ensemble:
    """Several checkpoints with the same class list: their probabilities averaged."""

    def __init__(self, checkpoints: list[Path], device: torch.device | None = None,
                 speaker_audio: list[Path] | None = None):
        """Load every member; members that disagree on the classes are an error naming both, and SPEAKER_AUDIO that
        no member uses (none was trained with speaker_norm) is an error too."""
        self.members = [Predictor(c, device, speaker_audio) for c in checkpoints]
        if speaker_audio and not any(m.cfg.speaker_norm for m in self.members):
            raise ValueError("--speaker-audio is only used by models trained with speaker_norm, and none of these was")
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
    ap.add_argument("--speaker-audio", type=Path, nargs="+", metavar="FILE",
                    help="other recordings of the same speaker (unlabelled), for models trained with speaker_norm")
    args = ap.parse_args(argv)
    models = [p for p in args.paths if is_checkpoint(p)]
    files = [p for p in args.paths if not is_checkpoint(p)]
    if not models or not files:
        print("error: give at least one checkpoint (run folder or .pt) and one audio file", file=sys.stderr)
        return 2
    try:
        predictor = Ensemble(models, speaker_audio=args.speaker_audio)
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
