"""The one training config: a dataclass loaded from configs/*.yaml, overridden on the command line, saved with every run.

The command line is derived from the dataclasses: every top-level TrainConfig field `foo_bar` is a flag `--foo-bar`
(bool: `--foo-bar/--no-foo-bar`), and every setting, nested ones included, takes a dotted override `KEY=VALUE`
(`features.n_mels=128`, `augment.speed=[0.9,1.0,1.1]`, `model_args.dropout=0.2`). Precedence: the YAML file first,
then the flags and overrides in command-line order, a later one winning. A YAML file may start from another one with
`base: FILE` (relative to it) and set only what differs (configs/crnn.yaml is the resnet's recipe with another model).
"""
import argparse
import dataclasses
import re
import sys
import textwrap
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from ravdess_dist.augment import AugmentConfig
from ravdess_dist.data.contract import BACKENDS, OTHER_INTENSITY
from ravdess_dist.features import FeatureConfig
from ravdess_dist.models import list_models
from shards.labels import SELECTIONS

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"

# Help per top-level field (a field's metadata={"help": ...} takes precedence); fields without one still get a flag.
HELP = {
    "model": "architecture from the model registry",
    "intensity": "normal: 8 classes; strong: 7 (no neutral); all: 8 (neutral half as frequent)",
    "backend": "data path: webdataset + DataLoader workers + torchaudio (torch), NVIDIA DALI (dali), or on the device",
    "shards": "shard root with manifest.json",
    "output_dir": "checkpoints go to OUTPUT_DIR/RUN",
    "logging_dir": "TensorBoard runs go to LOGGING_DIR/RUN",
    "run_name": "run folder name; null: MODEL-INTENSITY-SPLIT-TIME",
    "resume": "checkpoint file or run folder to continue from; auto: this run name's last.pt if there is one",
    "epochs": "training epochs",
    "batch_size": "global batch over all N processes, split evenly: BATCH_SIZE / N per process (N must divide it)",
    "lr": "peak learning rate",
    "weight_decay": "optimiser weight decay",
    "optimizer": "AdamW with warm-up then cosine decay, or SGD with momentum",
    "momentum": "SGD momentum",
    "warmup_epochs": "linear learning-rate warm-up, in epochs",
    "grad_clip": "gradient-norm clipping threshold",
    "label_smoothing": "label smoothing of the cross-entropy loss, in [0, 1)",
    "ema_decay": "keep an exponential moving average of the weights (e.g. 0.995 per step), validate, test and save "
                 "it instead of the raw weights; 0 = off",
    "checkpoint_every_s": "write last.pt after an epoch only when at least this many seconds have passed since the "
                          "previous write (0: after every epoch); the final epoch and a preemption signal always write "
                          "it, so a killed run (SIGKILL, a crash) loses at most this much training",
    "class_weights": "inverse-frequency class weights in the loss",
    "mixed_precision": "auto: bf16 on a GPU and on CPUs with AVX512-BF16 or AMX, no (float32) on other CPUs",
    "patience": "early stopping: epochs without a better validation UA",
    "folds": "K gender-balanced actor folds",
    "fold": "test fold (validation is the next one)",
    "test_actors": "explicit test actors instead of folds",
    "val_actors": "explicit validation actors instead of folds",
    "validation": "hold out validation actors (the fold after the test fold, or --val-actors); --no-validation "
                  "trains on them too (20 of 24 actors instead of 16) and needs select=last: nothing is left to "
                  "choose an epoch on",
    "test": "hold out the test actors (the test fold, or --test-actors); --no-test trains on them too: the final "
            "model to use, once a cross-validation has measured the recipe on unseen speakers (it has no test "
            "figures of its own; with --no-validation every actor trains)",
    "select": "the model kept as best.pt and tested: the epoch of the best validation UA (best, with patience), or "
              "the last epoch (last: the whole schedule runs)",
    "seed": "random seed",
    "num_workers": "data-loader worker processes per rank (device backend on a CPU: > 0 computes the training batches "
                   "ahead in a thread)",
    "device": "auto: the GPU when torch can use one, an error when GPUs are there but unusable, else the CPU",
    "train_intensities": "training clips: the selected intensity only (same) or both intensities (both)",
    "eval_crops": "crops averaged per clip at evaluation",
    "speaker_norm": "per-speaker feature normalisation (uses the test actors' unlabelled audio: off by default)",
    "speaker_stats": "with speaker_norm, each actor's statistics come from the clips being trained or scored (own: "
                     "transductive for test actors) or from that actor's clips of the other intensity, never scored "
                     "in this task (other_intensity: an enrolment set of the speaker's unlabelled audio)",
    "speaker_adversarial": "weight of the reversed gradient from a speaker classifier of the training actors on the "
                           "model's utterance embedding (domain-adversarial training towards features that do not "
                           "tell the speaker: ravdess_dist/models/adversary.py; training actors' labels only); 0: off",
    "channels_last": "NHWC memory layout for the model's convolutions (faster on CPUs with oneDNN and on tensor cores)",
    "compile": "torch.compile the model (through Accelerate): no, default, reduce-overhead (CUDA graphs) or max-autotune",
    "cudnn_benchmark": "let cuDNN time its convolution algorithms for the fixed input shape (GPU only)",
    "data_stream": "device backend on a GPU: compute each training pass (16 batches) on a side CUDA stream one pass "
                   "ahead, the next epoch's first pass included, so the GPU computes features while the steps run "
                   "(unset: on for the device backend on a GPU; H100: data wait 17 -> 9 % of GPU time)",
    "cuda_graph": "capture the training step's update (forward, loss, backward, clipping, fused AdamW) once as one CUDA "
                  "graph and replay it every step: a step's host time becomes one replay (GPU only, one process, "
                  "AdamW, no ema_decay, fp16 or compile; unset: on where all of that holds, with the device backend "
                  "and no speaker_adversarial; H100: the hybrid's step 24 -> 3.3 ms)",
    "model_args": "YAML mapping passed to the model constructor (or model_args.KEY=VALUE for one entry)",
    "features": "YAML mapping merged into the feature settings (or features.KEY=VALUE)",
    "augment": "YAML mapping merged into the augmentation settings (or augment.KEY=VALUE)",
}


def choices() -> dict[str, tuple]:
    """Allowed values of the top-level settings that have a fixed set: the flags' choices and validate() both use it."""
    return {"model": tuple(list_models()), "intensity": tuple(SELECTIONS), "backend": tuple(BACKENDS),
            "train_intensities": ("same", "both"), "device": ("auto", "cuda", "cpu"),
            "optimizer": ("adamw", "sgd"), "select": ("best", "last"), "mixed_precision": ("auto", "no", "fp16", "bf16"),
            "compile": ("no", "default", "reduce-overhead", "max-autotune"), "speaker_stats": ("own", "other_intensity")}


@dataclass
class TrainConfig:
    """Everything a training run depends on; `python train.py --help` documents the flags."""

    model: str = "resnet"
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
    ema_decay: float = 0.0
    checkpoint_every_s: float = 0.0
    class_weights: bool = False
    mixed_precision: str = "auto"
    patience: int = 15
    folds: int | None = None
    fold: int = 0
    test_actors: list[int] | None = None
    val_actors: list[int] | None = None
    validation: bool = True
    test: bool = True
    select: str = "best"
    seed: int = 0
    num_workers: int = 2
    device: str = "auto"
    train_intensities: str = "same"
    eval_crops: int = 1
    speaker_norm: bool = False
    speaker_stats: str = "own"
    speaker_adversarial: float = 0.0
    channels_last: bool = False
    compile: str = "no"
    cudnn_benchmark: bool = False
    cuda_graph: bool | None = None  # None: on where it can capture and was measured (trainer.resolve_cuda_graph)
    data_stream: bool | None = None  # None: on for the device backend's training passes on a GPU
    model_args: dict = field(default_factory=dict)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def validate(self) -> "TrainConfig":
        """Refuse unknown or inconsistent settings before any work starts."""
        for name, allowed in choices().items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        for name in ("epochs", "batch_size", "num_workers", "patience", "eval_crops"):
            if getattr(self, name) < (0 if name == "num_workers" else 1):
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.label_smoothing < 1 or self.warmup_epochs < 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("lr must be > 0, label_smoothing and ema_decay in [0, 1), warmup_epochs >= 0")
        if self.speaker_adversarial < 0:
            raise ValueError(f"speaker_adversarial must be >= 0 (0: off), got {self.speaker_adversarial}")
        if self.checkpoint_every_s < 0:
            raise ValueError(f"checkpoint_every_s must be >= 0 (0: every epoch), got {self.checkpoint_every_s}")
        used = device_only_in_use(self)
        if used and self.backend != "device":
            raise ValueError(f"{', '.join(used)} need(s) --backend device (the {self.backend} backend does not "
                             f"implement it)")
        if self.features.pitch_bins and self.backend == "dali":
            raise ValueError("features.pitch_bins needs the waveform, which the DALI backend turns into a mel "
                             "spectrogram on its own: use --backend device or torch")
        if self.augment.speed is not None and self.backend == "torch":
            raise ValueError("augment.speed needs --backend device or dali (the torch backend does not implement it)")
        if self.backend == "dali" and self.train_intensities == "both" and self.intensity == "strong":
            raise ValueError("train_intensities=both for strong leaves neutral out of whole DALI shards: use --backend "
                             "device or torch")
        if self.speaker_stats != "own" and not self.speaker_norm:
            raise ValueError(f"speaker_stats={self.speaker_stats} only applies with speaker_norm=true")
        if self.speaker_stats == "other_intensity" and self.intensity not in OTHER_INTENSITY:
            raise ValueError(f"speaker_stats=other_intensity needs --intensity normal or strong, not {self.intensity} "
                             f"(it has no other intensity)")
        if (self.test_actors or self.val_actors) and self.folds is not None:
            raise ValueError("--folds/--fold and --test-actors/--val-actors exclude each other")
        if not self.validation and self.select != "last":
            raise ValueError("--no-validation leaves no validation actors to choose the best epoch on: add --select last")
        if not self.test and self.test_actors:
            raise ValueError("--no-test trains on the test actors too: drop --test-actors")
        if not self.validation and self.val_actors:
            raise ValueError("--no-validation trains on every actor but the test actors: drop --val-actors")
        clashes = graph_clashes(self) if self.cuda_graph else []
        if clashes:
            raise ValueError(f"cuda_graph=true captures AdamW's update alone: drop {', '.join(clashes)}")
        return self


def graph_clashes(cfg: TrainConfig) -> list[str]:
    """The settings in use that cuda_graph cannot capture: fp16's loss scale decides on the host, compile makes graphs
    of its own, the moving average (an update after the graph's) has not run beside a captured step yet."""
    return [name for name, clash in (
        ("optimizer=sgd", cfg.optimizer != "adamw"), ("ema_decay > 0", cfg.ema_decay > 0),
        ("mixed_precision=fp16", cfg.mixed_precision == "fp16"), (f"compile={cfg.compile}", cfg.compile != "no"))
        if clash]


def device_only_in_use(cfg: TrainConfig, eval_crops: int | None = None,
                       eval_speeds: tuple[float, ...] = (1.0,)) -> list[str]:
    """The settings in use that only the device backend implements: CFG's own (training), or CFG re-scored with
    EVAL_CROPS windows per clip and EVAL_SPEEDS views (ensembles). One list for both, so they cannot drift apart."""
    crops = eval_crops or cfg.eval_crops
    used = {"features.speech_top_db": cfg.features.speech_top_db is not None, f"eval_crops={crops}": crops > 1,
            "speaker_norm": cfg.speaker_norm, f"eval_speeds={list(eval_speeds)}": tuple(eval_speeds) != (1.0,),
            "data_stream": cfg.data_stream is True}
    return [name for name, on in used.items() if on]


def _is_section(tp) -> bool:
    """A nested settings dataclass (features, augment)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _hints(cls) -> dict:
    """Resolved type annotations of a dataclass's fields."""
    return typing.get_type_hints(cls)


def _fields(cls) -> list[dataclasses.Field]:
    """The fields a dataclass's constructor takes."""
    return [f for f in dataclasses.fields(cls) if f.init]


def _split_optional(tp) -> tuple[object, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = tuple(a for a in args if a is not type(None))
        return (rest[0] if len(rest) == 1 else typing.Union[rest]), len(rest) < len(args)
    return tp, False


def type_name(tp) -> str:
    """Readable form of an annotation: int, float | None, list[int] | None, tuple[float, ...]."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return re.sub(r"\btyping\.|\b[\w.]+\.(?=[A-Z]\w*Config\b)", "", str(tp)).replace("NoneType", "None")


class _Mismatch(Exception):
    """A value that does not fit an annotation (turned into a ValueError naming the key by the caller)."""


def _convert(value, tp, text: str | None = None):
    """VALUE (parsed YAML) checked and converted to annotation TP; TEXT, the value as typed, serves str settings."""
    if tp in (typing.Any, object):
        return value
    base, optional = _split_optional(tp)
    if value is None:
        if optional or tp is type(None):
            return None
        raise _Mismatch
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (typing.Union, types.UnionType):
        for arm in args:
            try:
                return _convert(value, arm, text)
            except _Mismatch:
                continue
        raise _Mismatch
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # 1e-3: YAML 1.1 wants a dot in a float
            try:
                return float(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, str):
            return value
        if text is not None and not isinstance(value, (list, dict)):
            return text  # run_name=007 stays "007", run_name=2024-01-01 is no date
    elif base in (list, tuple) or origin in (list, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value]  # a scalar is a one-item list
        if base is list or origin is list:
            return [_convert(v, args[0]) for v in items] if args else items
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0]) for v in items)
        if args and len(items) != len(args):
            raise _Mismatch
        return tuple(_convert(v, a) for v, a in zip(items, args)) if args else tuple(items)
    elif base is dict or origin is dict:
        if isinstance(value, dict):
            if len(args) == 2:
                return {_convert(k, args[0]): _convert(v, args[1]) for k, v in value.items()}
            return dict(value)
    elif origin is typing.Literal:
        if value in args:
            return value
    elif _is_section(base):
        if isinstance(value, base):
            return value
    else:
        return value  # an annotation this module does not know: taken as given
    raise _Mismatch


def _checked(value, tp, label: str, text: str | None = None):
    """_convert, or a one-line ValueError naming LABEL, the expected type and the value."""
    try:
        return _convert(value, tp, text)
    except _Mismatch:
        shown = text if text is not None else value
        raise ValueError(f"bad value for {label}: expected {type_name(tp)}, got {shown!r}") from None


class _Loader(yaml.SafeLoader):
    """YAML with 1e-3 read as a float (YAML 1.1 wants 1.0e-3), for config files and override values alike."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)[eE][-+]?\d+$"), list("-+0123456789."))


def _parse_value(text: str):
    """A command-line value as YAML (null, true, 3, 0.5, [0.9,1.1], {a: 1}); text YAML cannot read stays text."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def _build(cls, raw, source: str, prefix: str = ""):
    """Dataclass CLS from a mapping: unknown keys and values of the wrong type are errors naming SOURCE and the key."""
    if not isinstance(raw, dict):
        what = f"{prefix.rstrip('.')} settings" if prefix else "settings"
        raise ValueError(f"{source}: expected a mapping of {what}, got {raw!r}")
    known = [f.name for f in _fields(cls)]
    unknown = set(raw) - set(known)
    if unknown:
        what = f"unknown {prefix.rstrip('.')} setting(s)" if prefix else "unknown setting(s)"
        raise ValueError(f"{source}: {what} {sorted(map(str, unknown))}; known: {sorted(known)}")
    hints, values = _hints(cls), {}
    for name, value in raw.items():
        tp = hints[name]
        if _is_section(tp) and not isinstance(value, tp):
            values[name] = _build(tp, {} if value is None else value, source, f"{prefix}{name}.")
        else:
            values[name] = _checked(value, tp, f"{source}: {prefix}{name}")
    return cls(**values)


def read_config_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict:
    """The settings of a YAML config file as a mapping, its `base: FILE` (relative to it, read the same way) under it.

    The file's own keys win; a section (features, augment) is merged key by key, anything else (model_args included)
    is replaced whole; a file that names another model than its base does not inherit the base's model_args (they are
    the other architecture's). Each file of the chain is checked on its own, so an error names the file it is in.
    """
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist" + (f" (the base of {_chain[-1]})" if _chain else ""))
    if path.resolve() in _chain:
        raise ValueError(f"{path}: base cycle: {' -> '.join(map(str, _chain + (path.resolve(),)))}")
    raw = yaml.load(path.read_text(), Loader=_Loader)
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {raw!r}")
    base = raw.pop("base", None)
    from_dict(raw, str(path))  # unknown keys and wrong types named in this file, before any merge
    if base is None:
        return raw
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: base must be a YAML file name (relative to {path.parent}), got {base!r}")
    merged = read_config_file(path.parent / base, _chain + (path.resolve(),))
    if raw.get("model", merged.get("model")) != merged.get("model") and "model_args" not in raw:
        merged.pop("model_args", None)
    sections = {f.name for f in _fields(TrainConfig) if _is_section(_hints(TrainConfig)[f.name])}
    for key, value in raw.items():
        both = key in sections and isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = {**merged[key], **value} if both else value
    return merged


def from_dict(raw: dict, source: str) -> TrainConfig:
    """Build a config from a YAML mapping; an unknown key or a value of the wrong type is an error naming SOURCE and the key."""
    return _build(TrainConfig, raw, source)


def to_dict(cfg: TrainConfig) -> dict:
    """Plain, YAML/JSON-friendly form of a config (tuples become lists)."""
    return yaml.safe_load(yaml.safe_dump(asdict(cfg)))


def leaf_keys(cls=None, prefix: str = "") -> dict[str, object]:
    """Every settable key, nested ones dotted ({"epochs": int, "features.n_mels": int, ...}) with its annotation."""
    cls, keys = cls or TrainConfig, {}
    for name, tp in ((f.name, _hints(cls)[f.name]) for f in _fields(cls)):
        if _is_section(tp):
            keys.update(leaf_keys(tp, f"{prefix}{name}."))
        else:
            keys[f"{prefix}{name}"] = tp
    return keys


def apply_override(raw: dict, key: str, value, origin: str, text: str | None = None) -> None:
    """Set dotted KEY of the raw mapping RAW to VALUE, checked against the TrainConfig fields and converted.

    A section (features, augment) set to a mapping is merged key by key; a dict setting (model_args) set whole is
    replaced, and model_args.KEY sets one entry. ORIGIN (the token or flag) and TEXT (the value as typed) go into errors.
    """
    parts, node, cls = key.split("."), raw, TrainConfig
    for depth, part in enumerate(parts):
        dotted, last = ".".join(parts[:depth + 1]), depth == len(parts) - 1
        if cls is None:  # inside a free mapping (model_args): any key
            if last:
                node[part] = value
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
            continue
        known = [f.name for f in _fields(cls)]
        if part not in known:
            level = ".".join(parts[:depth]) or "top-level"
            raise ValueError(f"unknown key {dotted!r} in {origin!r}; known {level} keys: {', '.join(sorted(known))}")
        tp = _hints(cls)[part]
        base, _ = _split_optional(tp)
        if last and _is_section(tp):
            if isinstance(value, tp):
                value = asdict(value)
            if not isinstance(value, dict):
                raise ValueError(f"bad value for {dotted}: expected a mapping of {dotted} settings "
                                 f"(or {dotted}.KEY=VALUE), got {value!r}")
            for sub, sub_value in value.items():
                apply_override(raw, f"{dotted}.{sub}", sub_value, origin)
        elif last:
            flag = origin.split(" ")[0] if origin.startswith("-") else None
            node[part] = _checked(value, tp, f"{dotted} ({flag})" if flag else dotted, text)
        elif _is_section(tp) or base is dict or typing.get_origin(base) is dict:
            if not isinstance(node.get(part), dict):
                node[part] = asdict(node[part]) if _is_section(tp) and isinstance(node.get(part), tp) else {}
            node, cls = node[part], (tp if _is_section(tp) else None)
        else:
            raise ValueError(f"{dotted} ({type_name(tp)}) has no keys below it, in {origin!r}")


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(?:\.[\w-]+)*=")
_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # argparse's own rule: such a token is a value, not a flag
EXAMPLE = ("python train.py --intensity strong --backend device features.n_mels=128 augment.speed=[0.9,1.0,1.1] "
           "augment.noise_snr_db=null model_args.dropout=0.2 epochs=30")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are ValueErrors (train.py prints `error: ...`), not usage text and exit status 2."""

    def error(self, message):
        raise ValueError(message)


def _record(namespace, key: str, value, origin: str, text: str | None = None) -> None:
    """Keep an override in command-line order (namespace.ops), for load_config to apply after the YAML file."""
    namespace.ops = [*(getattr(namespace, "ops", None) or []), (key, value, origin, text)]


class _FieldFlag(argparse.Action):
    """--foo-bar VALUE: an override of field foo_bar (text for str settings, YAML otherwise)."""

    def __init__(self, option_strings, dest, key: str, literal: bool = False, **kwargs):
        self.key, self.literal = key, literal
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if isinstance(values, list):
            value, text = [_parse_value(v) for v in values], " ".join(values)
        else:
            value, text = (values if self.literal else _parse_value(values)), values
        _record(namespace, self.key, value, f"{option_string} {text}", text)


class _BoolFlag(argparse.BooleanOptionalAction):
    """--foo-bar / --no-foo-bar: an override of bool field foo_bar."""

    def __init__(self, option_strings, dest, key: str, **kwargs):
        self.key = key
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        _record(namespace, self.key, not option_string.startswith("--no-"), option_string)


class _DottedOverride(argparse.Action):
    """KEY=VALUE (handed over as `--set KEY=VALUE` by load_config): an override of any setting, nested ones included."""

    def __call__(self, parser, namespace, values, option_string=None):
        key, text = values.split("=", 1)
        _record(namespace, key, _parse_value(text), values, text)


def _flag(name: str) -> str:
    """The flag of a top-level field: foo_bar -> --foo-bar."""
    return "--" + name.replace("_", "-")


def _default_text(f: dataclasses.Field) -> str | None:
    """A field's dataclass default in YAML (None for a section), as help shows it."""
    value = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(value):
        return None
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _sections_text() -> str:
    """Epilog lines listing the keys (and defaults) of every nested section."""
    lines = []
    for f in _fields(TrainConfig):
        tp = _hints(TrainConfig)[f.name]
        if _is_section(tp):
            keys = ", ".join(f"{g.name}={_default_text(g)}" for g in _fields(tp))
            lines += textwrap.wrap(f"{f.name}.KEY: {keys}", 116, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """Command-line flags derived from the TrainConfig fields, plus --config FILE and dotted KEY=VALUE overrides."""
    epilog = (
        "dotted overrides:\n"
        "  KEY=VALUE sets any setting, nested ones included (features.n_mels=128, model_args.dropout=0.2). VALUE is\n"
        "  read as YAML (null, true, 0.5, [0.9,1.0,1.1], {a: 1}) and checked against the setting's type. e.g.\n"
        f"    {EXAMPLE}\n"
        "  precedence: the YAML file, then flags and KEY=VALUE overrides in command-line order (a later one wins).\n"
        "  Defaults shown are the dataclass defaults; the YAML file may set others. Nested settings:\n"
        f"{_sections_text()}")
    ap = _Parser(description="Train a speech-emotion model on RAVDESS shards (run under `accelerate launch`).",
                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--config", type=Path, metavar="FILE", help="YAML config (default: configs/MODEL.yaml); `base: FILE` in it reads FILE first")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", default=[],
                    help="dotted override of any setting, e.g. features.n_mels=128 (see below)")
    ap.add_argument("--set", dest="dotted", metavar="KEY=VALUE", action=_DottedOverride, help=argparse.SUPPRESS)
    allowed, hints = choices(), _hints(TrainConfig)
    for f in _fields(TrainConfig):
        tp = hints[f.name]
        base, _ = _split_optional(tp)
        default = _default_text(f)
        text = (f.metadata.get("help") or HELP.get(f.name, "")) + (f" (default: {default})" if default else "")
        kwargs = {"help": text.strip().replace("%", "%%"), "default": None}
        if base is bool:
            ap.add_argument(_flag(f.name), action=_BoolFlag, key=f.name, **kwargs)
            continue
        if base in (list, tuple) or typing.get_origin(base) in (list, tuple):
            kwargs["nargs"] = "+"
        elif _is_section(base) or base is dict or typing.get_origin(base) is dict:
            kwargs["metavar"] = "YAML"
        if f.name in allowed:
            kwargs["choices"] = allowed[f.name]
        ap.add_argument(_flag(f.name), action=_FieldFlag, key=f.name, literal=base is str, **kwargs)
    return ap


def _is_flag(token: str) -> bool:
    """Whether argparse reads TOKEN as an option string (a negative number is a value)."""
    return token.startswith("-") and token != "-" and not _NEGATIVE_NUMBER.match(token)


def _unknown_flag(flag: str) -> str:
    """One-line error for an unknown flag, pointing a nested setting's name at its dotted override."""
    name = flag.lstrip("-").replace("-", "_")
    nested = [key for key in leaf_keys() if key.endswith(f".{name}")]
    hint = f"nested settings have no flags: use {nested[0]}=VALUE" if nested else "see --help"
    return f"unknown flag {flag}; {hint}"


def _canonical(argv: list[str], ap: argparse.ArgumentParser) -> list[str]:
    """ARGV with every KEY=VALUE token turned into `--set KEY=VALUE`, so argparse sees them in command-line order.

    A flag's values are left alone (`--run-name a=b` names the run `a=b`); a list flag (`--test-actors 1 2`) stops at a
    KEY=VALUE token. A token that is neither a flag, a flag's value nor KEY=VALUE is an error.
    """
    out, i, only_overrides = [], 0, False
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--" and not only_overrides:
            only_overrides = True
            continue
        if _is_flag(token) and not only_overrides:
            name = token.split("=", 1)[0]
            action = ap._option_string_actions.get(name)
            if action is None:
                raise ValueError(_unknown_flag(name))
            out.append(token)
            if "=" in token or action.nargs == 0:
                continue
            many = action.nargs in ("+", "*", "?")
            count = 1 if action.nargs is None else (len(argv) if many else action.nargs)
            while count and i < len(argv) and not _is_flag(argv[i]) and argv[i] != "--" \
                    and not (many and OVERRIDE.match(argv[i])):
                out.append(argv[i])
                i, count = i + 1, count - 1
                if action.nargs == "?":
                    break
            continue
        if not OVERRIDE.match(token):
            raise ValueError(f"{token!r} is neither a flag nor a KEY=VALUE override (e.g. features.n_mels=128); "
                             "see --help")
        out += ["--set", token]
    return out


def parse_overrides(argv: list[str]) -> tuple[Path | None, list[tuple]]:
    """(--config FILE or None, the overrides [(key, value, origin, text)] in command-line order); errors are ValueErrors."""
    ap = parser()
    args = ap.parse_args(_canonical(list(argv), ap))
    return args.config, list(getattr(args, "ops", None) or [])


def load_config(argv: list[str] | None = None) -> TrainConfig:
    """YAML (--config FILE, or configs/MODEL.yaml) overridden by flags and KEY=VALUE overrides, validated.

    Precedence: the YAML file first, then every flag and dotted override in command-line order; a later one wins
    (`epochs=5 --epochs 7` trains 7 epochs, `--epochs 7 epochs=5` trains 5). Override errors come before the file is read.
    """
    config, ops = parse_overrides(sys.argv[1:] if argv is None else argv)
    probe = {}
    for key, value, origin, text in ops:  # every override checked once, and the model named for the default YAML
        apply_override(probe, key, value, origin, text)
    path = config
    if path is None:
        model = probe.get("model", TrainConfig.model)
        if model not in choices()["model"]:
            raise ValueError(f"model must be one of {list(choices()['model'])}, got {model!r}")
        path = CONFIG_DIR / f"{model}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    raw = read_config_file(path)
    for key, value, origin, text in ops:
        apply_override(raw, key, value, origin, text)
    return from_dict(raw, str(path)).validate()
