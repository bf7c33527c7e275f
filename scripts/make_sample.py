"""Build the bundled sample (Actor_01..04, 16 kHz mono FLAC) from a full RAVDESS copy; run once by maintainers."""
import argparse
from pathlib import Path

import soundfile as sf

from shards.librosa_import import librosa


def main() -> None:
    """Resample every clip of the chosen actors to mono 16 kHz FLAC, keeping the archive layout."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("src", type=Path, help="a RAVDESS archive: Actor_XX/*.wav or *.flac")
    ap.add_argument("dest", type=Path)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--sample-rate", type=int, default=16000)
    args = ap.parse_args()
    for actor in args.actors:
        out = args.dest / f"Actor_{actor:02d}"
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted((args.src / f"Actor_{actor:02d}").glob("03-01-*.*")):
            y, sr = sf.read(f, dtype="float32", always_2d=True)
            y = librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=args.sample_rate, res_type="soxr_hq")
            sf.write(out / f"{f.stem}.flac", y, args.sample_rate, subtype="PCM_16")


if __name__ == "__main__":
    main()
