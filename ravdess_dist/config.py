"""The one training config: a dataclass loaded from configs/*.yaml, overridden by command-line flags, saved with every run."""
import argparse
import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ravdess_dist.augment import AugmentConfig
from ravdess_dist.features import FeatureConfig
from ravdess_dist.models import list_models
from shards.labels import SELECTIONS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class TrainConfig:
    """Everything a training run depends on; `python train.py --help` documents the flags."""

    model: str = "hybrid"
    intensity: str = "normal"
    backend: str = "torch"
    shards: str = "working_directory/shards"
    output_dir: str = "working_directory/models"
    logging_dir: str = "working_directory/runs"
    run_name: str | None = None
    resume: str | None = None
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    momentum: float = 0.9
    warmup_epochs: float = 2.0
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    class_weights: bool = False
    mixed_precision: str = "auto"
    patience: int = 15
    folds: int | None = None
    fold: int = 0
    test_actors: list[int] | None = None
    val_actors: list[int] | None = None
    seed: int = 0
    num_workers: int = 2
    model_args: dict = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> "TrainConfig":
        """Refuse unknown or inconsistent settings before any work starts."""
        choices = {"model": list_models(), "intensity": SELECTIONS, "backend": ("torch", "dali"),
                   "optimizer": ("adamw", "sgd"), "mixed_precision": ("auto", "no", "fp16", "bf16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "num_workers", "patience"):
            if getattr(self, name) < (0 if name == "num_workers" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.label_smoothing < 1 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0, label_smoothing in [0, 1), warmup_epochs >= 0")
        if (self.test_actors or self.val_actors) and self.folds is not None:
            raise ValueError("--folds/--fold and --test-actors/--val-actors exclude each other")
        return self


def from_dict(raw: dict, source: str) -> TrainConfig:
    """Build a config from a YAML mapping; an unknown key is an error naming the file and the key."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {sorted(unknown)}; known: {sorted(known)}")
    nested = {"features": FeatureConfig, "augment": AugmentConfig}
    values = dict(raw)
    for name, cls in nested.items():
        if name in values:
            fields = {f.name for f in dataclasses.fields(cls)}
            bad = set(values[name]) - fields
            if bad:
                raise ValueError(f"{source}: unknown {name} setting(s) {sorted(bad)}; known: {sorted(fields)}")
            values[name] = cls(**values[name])
    return TrainConfig(**values)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain, YAML/JSON-friendly form of a config (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(asdict(cfg)))


def parser() -> argparse.ArgumentParser:
    """Command-line flags; each overrides the YAML value when given."""
    ap = argparse.ArgumentParser(description="Train a speech-emotion model on RAVDESS shards (run under `accelerate launch`).")
    ap.add_argument("--config", type=Path, help="YAML config (default: configs/MODEL.yaml)")
    ap.add_argument("--model", choices=list_models())
    ap.add_argument("--intensity", choices=SELECTIONS)
    ap.add_argument("--backend", choices=("torch", "dali"))
    ap.add_argument("--shards", help="shard root with manifest.json")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int, help="per process")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--optimizer", choices=("adamw", "sgd"))
    ap.add_argument("--mixed-precision", choices=("auto", "no", "fp16", "bf16"), help="auto: bf16 on GPU, no on CPU")
    ap.add_argument("--label-smoothing", type=float)
    ap.add_argument("--class-weights", action=argparse.BooleanOptionalAction, default=None)
    ap.add_argument("--patience", type=int, help="early stopping: epochs without a better validation UA")
    ap.add_argument("--folds", type=int, help="K gender-balanced actor folds")
    ap.add_argument("--fold", type=int, help="test fold (validation is the next one)")
    ap.add_argument("--test-actors", type=int, nargs="+")
    ap.add_argument("--val-actors", type=int, nargs="+")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--num-workers", type=int, help="data-loader worker processes per rank")
    ap.add_argument("--output-dir", help="checkpoints go to OUTPUT_DIR/RUN")
    ap.add_argument("--logging-dir", help="TensorBoard runs go to LOGGING_DIR/RUN")
    ap.add_argument("--run-name")
    ap.add_argument("--resume", help="checkpoint file or run folder to continue from")
    return ap


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """YAML (given, or the model's default) overridden by the flags given, validated."""
    args = parser().parse_args(argv)
    path = args.config or CONFIG_DIR / f"{args.model or TrainConfig.model}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    overrides = {k: v for k, v in vars(args).items() if v is not None and k != "config"}
    return from_dict({**raw, **overrides}, str(path)).validate()
