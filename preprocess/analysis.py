"""The descriptive-analysis report: counts, duration, loudness and pitch tables, and PNG plots, in one Markdown file."""
import logging
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from preprocess.clip_stats import ANALYSIS_RATE, STATS, compute_clip_stats
from shards.atomic import write_text
from shards.audio import read_mono
from shards.librosa_import import librosa
from shards.labels import EMOTIONS, INTENSITIES

matplotlib.use("Agg")  # draw into files only: no display is needed (pyplot switches even if already imported)
log = logging.getLogger(__name__)

DPI = 110
INTENSITY_COLORS = {"normal": "tab:blue", "strong": "tab:orange"}
SUMMARY = ["count", "mean", "std", "min", "median", "max"]
N_MELS, MEL_FFT, MEL_HOP = 64, 1024, 256  # 64 ms windows, 16 ms hop at ANALYSIS_RATE


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub Markdown table of DF's columns (numbers right-aligned, floats to 2 decimals, NaN left empty)."""
    def cell(value) -> str:
        """One table cell as text."""
        if isinstance(value, float):
            return "" if np.isnan(value) else f"{value:.2f}"
        return str(value)

    numeric = [pd.api.types.is_numeric_dtype(df[c]) for c in df.columns]
    lines = [list(map(str, df.columns)), ["---:" if n else ":---" for n in numeric]]
    lines += [[cell(v) for v in row] for row in df.itertuples(index=False)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def counts(data: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Clips per combination of the BY columns (rows) and intensity (columns), with totals."""
    table = pd.crosstab([data[c] for c in by], data["intensity"], margins=True, margins_name="total")
    return table.reset_index().rename_axis(columns=None)


def summary(data: pd.DataFrame, column: str, split: str | None = None) -> pd.DataFrame:
    """count/mean/std/min/median/max of COLUMN per emotion and intensity, then per intensity over all emotions;
    with SPLIT (e.g. gender), all of that once per SPLIT value."""
    keys = [split] if split else []
    per_emotion = data.groupby(keys + ["emotion", "intensity"], observed=True)[column].agg(SUMMARY)
    overall = data.groupby(keys + ["intensity"], observed=True)[column].agg(SUMMARY).assign(emotion="all")
    overall = overall.set_index("emotion", append=True).reorder_levels(keys + ["emotion", "intensity"])
    table = pd.concat([per_emotion, overall]).reset_index()
    return table.sort_values(keys, kind="stable") if keys else table


def save(fig: plt.Figure, path: Path) -> None:
    """Write FIG as a PNG at the report's resolution and free it."""
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def plot_class_distribution(data: pd.DataFrame, path: Path) -> None:
    """Grouped bars: clips per emotion, one bar per intensity, counts written on the bars."""
    table = pd.crosstab(data["emotion"], data["intensity"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x, width = np.arange(len(table)), 0.8 / len(table.columns)
    for j, intensity in enumerate(table.columns):
        bars = ax.bar(x + (j - (len(table.columns) - 1) / 2) * width, table[intensity], width,
                      color=INTENSITY_COLORS[intensity], label=intensity)
        ax.bar_label(bars, labels=[str(v) if v else "" for v in table[intensity]], fontsize=9)
    ax.set_xticks(x, table.index, rotation=20)
    ax.set(title="Clips per emotion and intensity", xlabel="emotion", ylabel="clips")
    ax.margins(y=0.12)
    ax.legend(title="intensity")
    save(fig, path)


def plot_duration_hist(data: pd.DataFrame, path: Path) -> None:
    """Overlaid histograms of clip duration, one per intensity."""
    bins = np.histogram_bin_edges(data["duration"], bins="auto")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for intensity, rows in data.groupby("intensity"):
        ax.hist(rows["duration"], bins=bins, alpha=0.6, color=INTENSITY_COLORS[intensity], label=intensity)
    ax.set(title="Clip duration by intensity", xlabel="duration (s)", ylabel="clips")
    ax.legend(title="intensity")
    save(fig, path)


def boxes_by_emotion(ax: plt.Axes, data: pd.DataFrame, column: str) -> None:
    """Side-by-side box plots of COLUMN per emotion, one box per intensity (absent combinations left out)."""
    emotions, intensities = data["emotion"].cat.categories, data["intensity"].cat.categories
    width = 0.8 / len(intensities)
    for j, intensity in enumerate(intensities):
        rows = data[data["intensity"] == intensity]
        groups = [(k, rows.loc[rows["emotion"] == e, column].dropna()) for k, e in enumerate(emotions)]
        groups = [(k, values) for k, values in groups if len(values)]
        if not groups:
            continue
        ax.boxplot([v for _, v in groups], positions=[k + (j - (len(intensities) - 1) / 2) * width for k, _ in groups],
                   widths=width * 0.9, patch_artist=True, boxprops={"facecolor": INTENSITY_COLORS[intensity]},
                   medianprops={"color": "black"}, flierprops={"markersize": 3})
    ax.set_xticks(range(len(emotions)), emotions, rotation=20)
    ax.set_xlim(-0.6, len(emotions) - 0.4)
    ax.grid(axis="y", alpha=0.3)


def plot_boxes(data: pd.DataFrame, column: str, ylabel: str, title: str, path: Path, split: str | None = None) -> None:
    """A box-plot figure of COLUMN per emotion and intensity, with one panel per value of SPLIT if given."""
    panels = list(data.groupby(split)) if split else [(None, data)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 0.5 + 4.3 * len(panels)), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], panels):
        boxes_by_emotion(ax, rows, column)
        ax.set(title=f"{title} ({name})" if split else title, ylabel=ylabel)
    axes[-1, 0].set_xlabel("emotion")
    axes[0, 0].legend(handles=[Patch(color=INTENSITY_COLORS[i], label=i) for i in data["intensity"].cat.categories],
                      title="intensity")
    fig.tight_layout()
    save(fig, path)


def pick_examples(data: pd.DataFrame) -> list[tuple[str, str, np.ndarray]]:
    """(emotion, key, audio) per emotion: the first clip that decodes in key order (normal, statement 1 first)."""
    examples = []
    for emotion in data["emotion"].cat.categories:
        for row in data[data["emotion"] == emotion].sort_values("key").itertuples():
            try:
                examples.append((emotion, row.key, read_mono(row.path, ANALYSIS_RATE)[0]))
                break
            except (OSError, RuntimeError, ValueError) as err:
                log.warning("cannot decode %s for the example plots (%s); trying the next clip", row.path, err)
    return examples


def example_grid(count: int) -> tuple[plt.Figure, np.ndarray]:
    """A figure with one small panel per example, two columns, shared axes."""
    rows = max(1, (count + 1) // 2)
    fig, axes = plt.subplots(rows, 2, figsize=(12, 2.3 * rows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, axes


def label_example_grid(fig: plt.Figure, axes: np.ndarray, ylabel: str, title: str) -> None:
    """Axis labels on the outer panels only (time on the bottom row), the figure title, a tight layout."""
    for ax in axes.flat:
        ax.set(xlabel="", ylabel=ylabel)
        ax.label_outer()
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    fig.suptitle(title)
    fig.tight_layout()


def plot_waveforms(examples: list[tuple[str, str, np.ndarray]], path: Path) -> None:
    """One waveform panel per emotion example, time in seconds."""
    fig, axes = example_grid(len(examples))
    for ax, (emotion, key, audio) in zip(axes.flat, examples):
        ax.plot(librosa.samples_to_time(np.arange(len(audio)), sr=ANALYSIS_RATE), audio, lw=0.4, color="tab:blue")
        ax.set_title(f"{emotion} ({key})")
    label_example_grid(fig, axes, "amplitude", f"Example waveform per emotion ({ANALYSIS_RATE // 1000} kHz mono)")
    save(fig, path)


def plot_logmel(examples: list[tuple[str, str, np.ndarray]], path: Path) -> None:
    """One log-mel spectrogram panel per emotion example (N_MELS bands, dB relative to each clip's maximum)."""
    import librosa.display  # here, not at the top: it imports librosa.core, which must come from shards.librosa_import

    fig, axes = example_grid(len(examples))
    for ax, (emotion, key, audio) in zip(axes.flat, examples):
        mel = librosa.feature.melspectrogram(y=audio, sr=ANALYSIS_RATE, n_fft=MEL_FFT, hop_length=MEL_HOP,
                                             n_mels=N_MELS)
        image = librosa.display.specshow(librosa.power_to_db(mel, ref=np.max), sr=ANALYSIS_RATE, hop_length=MEL_HOP,
                                         x_axis="s", y_axis="mel", ax=ax, vmin=-80, vmax=0)
        ax.set_title(f"{emotion} ({key})")
    label_example_grid(fig, axes, "frequency (Hz, mel scale)",
                       f"Example log-mel spectrogram per emotion ({N_MELS} mel bands, {ANALYSIS_RATE // 1000} kHz)")
    if examples:
        fig.colorbar(image, ax=axes.flat[:len(examples)], label="power (dB re clip max)", shrink=0.6)
    save(fig, path)


def report_text(data: pd.DataFrame, examples: list[tuple[str, str, np.ndarray]]) -> str:
    """The Markdown report: overview, count tables, statistics tables and links to the PNGs beside it."""
    failed = ", ".join(f"`{key}`" for key in data.loc[data["rms_dbfs"].isna(), "key"]) or "none"
    sections = [
        "# RAVDESS descriptive analysis",
        f"{len(data)} clips from {data['actor'].nunique()} actors, {data['emotion'].nunique()} emotions, "
        f"{data['duration'].sum() / 60:.1f} min of audio; source sample rates (Hz): "
        f"{', '.join(map(str, sorted(data['sample_rate'].unique())))}; "
        f"stereo files (downmixed): {int((data['channels'] > 1).sum())}.",
        "## Clips per emotion and intensity", markdown_table(counts(data, ["emotion"])),
        "![Clips per emotion and intensity](class_distribution.png)",
        "## Clips per gender and intensity", markdown_table(counts(data, ["gender"])),
        "## Clips per actor and intensity", markdown_table(counts(data, ["actor", "gender"])),
        "## Duration (s)", markdown_table(summary(data, "duration")),
        "![Clip duration by intensity](duration_hist.png)",
        "## Loudness: RMS level over the whole clip (dBFS)",
        f"Computed at {ANALYSIS_RATE} Hz mono; a full-scale sine is -3.01 dBFS. "
        f"Clips that could not be decoded (left out): {failed}.",
        markdown_table(summary(data, "rms_dbfs")),
        "![RMS level per emotion and intensity](loudness_by_emotion.png)",
        "## Median pitch (Hz)",
        "YIN F0 (65-500 Hz) per 64 ms frame, median over the frames whose RMS is within 30 dB of the clip's loudest "
        "frame; male and female voices apart.",
        markdown_table(summary(data, "f0_median_hz", split="gender")),
        "![Median pitch per emotion and intensity, by gender](pitch_by_emotion.png)",
        "## Example clips",
        "First clip per emotion in key order (normal intensity and statement 1 first): "
        + ", ".join(f"{emotion} `{key}`" for emotion, key, _ in examples) + ".",
        "![Example waveforms](waveforms.png)",
        "![Example log-mel spectrograms](logmel.png)",
    ]
    return "\n\n".join(sections) + "\n"


def write_analysis(data: pd.DataFrame, out_dir: Path, jobs: int = os.cpu_count() or 1) -> Path:
    """Write the descriptive-analysis report (Markdown tables + PNG plots) for the clips in `data`; return its path."""
    if data.empty:
        raise ValueError("no clips to analyse")
    out_dir.mkdir(parents=True, exist_ok=True)
    stats = compute_clip_stats(data, out_dir / "clip_stats.csv", jobs)
    present = [e for e in EMOTIONS if e in set(data["emotion"])]
    data = pd.concat([data.reset_index(drop=True), stats[STATS]], axis=1)
    data["emotion"] = pd.Categorical(data["emotion"], categories=present, ordered=True)
    intensities = [i for i in INTENSITIES if i in set(data["intensity"])]
    data["intensity"] = pd.Categorical(data["intensity"], categories=intensities)
    plot_class_distribution(data, out_dir / "class_distribution.png")
    plot_duration_hist(data, out_dir / "duration_hist.png")
    plot_boxes(data, "rms_dbfs", "RMS level (dBFS)", "Loudness per emotion and intensity",
               out_dir / "loudness_by_emotion.png")
    plot_boxes(data, "f0_median_hz", "median F0 (Hz)", "Median pitch per emotion and intensity",
               out_dir / "pitch_by_emotion.png", split="gender")
    examples = pick_examples(data)
    plot_waveforms(examples, out_dir / "waveforms.png")
    plot_logmel(examples, out_dir / "logmel.png")
    report = out_dir / "report.md"
    return write_text(report, report_text(data, examples))
