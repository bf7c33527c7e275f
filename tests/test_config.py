"""The sweepable config: flags derived from the TrainConfig fields, dotted KEY=VALUE overrides, precedence, errors."""
import dataclasses
import json
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml

from ravdess_dist import config
from ravdess_dist.config import CONFIG_DIR, TrainConfig, choices, from_dict, load_config, parser, to_dict
from ravdess_dist.features import FeatureConfig
from ravdess_dist.models import create_model

ROOT = Path(__file__).resolve().parent.parent
BASE = {"backend": "device", "select": "last"}  # accept every setting (validate() ties some to the device backend,
# --no-validation to select=last)
SAMPLES = {"features.kind": "mfcc", "features.normalize": "clip"}  # settings whose valid values a type alone does not give
NEEDS = {"speaker_stats": ["speaker_norm=true"]}  # settings that validate() accepts only beside another one


def split_optional(tp):
    """(annotation without None, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        assert len(rest) == 1, f"no sample rule for {tp}"
        return rest[0], True
    return tp, False


def walk(cls=TrainConfig, prefix=""):
    """(dotted key, annotation, default) of every leaf setting, nested sections included."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):
            yield from walk(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hints[f.name], default


def sample(key, tp, default):
    """A valid value of the setting's type that differs from its default (a new kind of annotation fails here)."""
    if key in SAMPLES:
        return SAMPLES[key]
    if key in choices():
        return next(v for v in choices()[key] if v != default)
    base, _ = split_optional(tp)
    origin, args = typing.get_origin(base), typing.get_args(base)
    if base is bool:
        return not default
    if base is int:
        return 3 if default is None else default + 1
    if base is float:
        return 30.5 if default is None else default + 0.25
    if base is str:
        return "sample-text"
    if origin is list and args == (int,):
        return [1, 2]
    if origin is tuple and args == (float, float):
        return (10.0, 20.0)
    if origin is tuple and args == (float, Ellipsis):
        return (0.9, 1.1)
    if base is dict or origin is dict:
        return {"dropout": 0.2}
    raise AssertionError(f"add a sample value for {key} ({tp}) to tests/test_config.py")


LEAVES = list(walk())
TOP = [f for f in dataclasses.fields(TrainConfig)]


def lookup(cfg, key):
    """The value of dotted KEY in a config."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def same(a, b) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, a list is not a tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def as_text(value) -> str:
    """A value as typed on a command line (JSON is YAML)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


@pytest.fixture
def yaml_file(tmp_path):
    """Write a config file and return its path."""
    def write(data=None, name="base.yaml"):
        path = tmp_path / name
        path.write_text(yaml.safe_dump({**BASE, **(data or {})}))
        return path
    return write


def load(yaml_file, *argv, data=None):
    """load_config on a small YAML file and ARGV."""
    return load_config(["--config", str(yaml_file(data)), *argv])


@pytest.mark.parametrize("key, tp, default", LEAVES, ids=[leaf[0] for leaf in LEAVES])
def test_every_setting_takes_a_dotted_override(yaml_file, key, tp, default):
    """KEY=VALUE sets every leaf setting, nested ones included, with the type its annotation names."""
    value = sample(key, tp, default)
    cfg = load(yaml_file, *NEEDS.get(key, []), f"{key}={as_text(value)}")
    got = lookup(cfg, key)
    expected = value
    base, _ = split_optional(tp)
    if typing.get_origin(base) is tuple:
        expected = tuple(value)
    assert same(got, expected), f"{key}: got {got!r}, expected {expected!r}"
    assert not same(got, default)


@pytest.mark.parametrize("key, tp, default", [leaf for leaf in LEAVES if split_optional(leaf[1])[1]],
                         ids=[leaf[0] for leaf in LEAVES if split_optional(leaf[1])[1]])
def test_optional_settings_take_null(yaml_file, key, tp, default):
    """`KEY=null` turns an optional setting off, also after an earlier override set it."""
    value = sample(key, tp, default)
    cfg = load(yaml_file, f"{key}={as_text(value)}", f"{key}=null")
    assert lookup(cfg, key) is None


def test_the_documented_example_and_numbers(yaml_file):
    """The --help example works; 1e-3 is a float, an int is accepted for a float, run_name=007 stays text."""
    cfg = load(yaml_file, *config.EXAMPLE.split()[2:])
    assert (cfg.intensity, cfg.features.n_mels, cfg.augment.speed) == ("strong", 128, (0.9, 1.0, 1.1))
    assert cfg.augment.noise_snr_db is None and cfg.model_args == {"dropout": 0.2} and cfg.epochs == 30
    cfg = load(yaml_file, "lr=1e-3", "features.f_min=0", "run_name=007", "--weight-decay", "2e-2")
    assert same(cfg.lr, 0.001) and same(cfg.features.f_min, 0.0) and cfg.run_name == "007"
    assert same(cfg.weight_decay, 0.02)
    cfg = load(yaml_file, "run_name=2024-01-01", "resume=-e5", "model_args.eps=1.5E-8", "model_args.tag=+.e5")
    assert (cfg.run_name, cfg.resume, cfg.model_args) == ("2024-01-01", "-e5", {"eps": 1.5e-8, "tag": "+.e5"})


@pytest.mark.parametrize("f", TOP, ids=[f.name for f in TOP])
def test_every_top_level_field_has_a_flag(yaml_file, f):
    """--foo-bar exists for every field foo_bar (bools with --no-foo-bar) and sets it."""
    flag = "--" + f.name.replace("_", "-")
    options = parser()._option_string_actions
    assert flag in options
    hints = typing.get_type_hints(TrainConfig)
    tp, default = hints[f.name], f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(tp):  # a section flag takes a YAML mapping merged into it
        key, leaf_tp, leaf_default = next(walk(tp))
        value = sample(f"{f.name}.{key}", leaf_tp, leaf_default)
        cfg = load(yaml_file, flag, json.dumps({key: value}))
        assert same(getattr(getattr(cfg, f.name), key), value)
        return
    value = sample(f.name, tp, default)
    base, _ = split_optional(tp)
    if base is bool:
        assert f"--no-{flag[2:]}" in options
        assert getattr(load(yaml_file, flag), f.name) is True
        assert getattr(load(yaml_file, f"--no-{flag[2:]}", data={f.name: True}), f.name) is False
        return
    if isinstance(value, (list, tuple)):
        argv = [flag, *map(str, value)]
    elif isinstance(value, dict):
        argv = [flag, json.dumps(value)]
    else:
        argv = [flag, str(value)]
    assert same(getattr(load(yaml_file, *NEEDS.get(f.name, []), *argv), f.name), value)


@pytest.mark.parametrize("argv, key, expected", [
    (["--epochs", "5"], "epochs", 5),
    (["--batch-size", "8"], "batch_size", 8),
    (["--lr", "0.01"], "lr", 0.01),
    (["--resume", "auto"], "resume", "auto"),
    (["--test-actors", "1", "2"], "test_actors", [1, 2]),
    (["--val-actors", "3", "4"], "val_actors", [3, 4]),
    (["--folds", "3"], "folds", 3),
    (["--fold", "2"], "fold", 2),
    (["--class-weights"], "class_weights", True),
    (["--no-class-weights"], "class_weights", False),
    (["--run-name", "my-run"], "run_name", "my-run"),
    (["--output-dir", "out/models"], "output_dir", "out/models"),
    (["--logging-dir", "out/runs"], "logging_dir", "out/runs"),
    (["--shards", "some/shards"], "shards", "some/shards"),
    (["--mixed-precision", "bf16"], "mixed_precision", "bf16"),
    (["--backend", "dali"], "backend", "dali"),
    (["--num-workers", "0"], "num_workers", 0),
    (["--seed", "7"], "seed", 7),
    (["--model", "cnn"], "model", "cnn"),
    (["--intensity", "strong"], "intensity", "strong"),
    (["--optimizer", "sgd"], "optimizer", "sgd"),
    (["--label-smoothing", "0.2"], "label_smoothing", 0.2),
    (["--patience", "3"], "patience", 3),
    (["--run-name", "a=b"], "run_name", "a=b"),  # a flag's value is never a dotted override
])
def test_existing_flags_keep_their_meaning(yaml_file, argv, key, expected):
    """The flags tests, README and SLURM scripts use still parse to the same settings."""
    assert same(getattr(load(yaml_file, *argv), key), expected)


def test_default_config_comes_from_the_model(tmp_path):
    """Without --config the model's YAML is read; a model set by flag or override picks the file."""
    assert load_config([]).model == "resnet" and load_config([]).backend == "device"  # configs/resnet.yaml
    assert load_config(["--model", "cnn"]).model == "cnn"
    assert load_config(["model=cnn", "epochs=3"]).epochs == 3


@pytest.mark.parametrize("argv, expected", [
    ([], 5),                                       # the YAML file beats the dataclass default
    (["epochs=7"], 7),
    (["--epochs", "9"], 9),
    (["epochs=7", "--epochs", "9"], 9),            # later wins, whichever the form
    (["--epochs", "9", "epochs=7"], 7),
    (["epochs=7", "epochs=8"], 8),
    (["--epochs=9", "--", "epochs=4"], 4),
])
def test_precedence_yaml_then_command_line_order(yaml_file, argv, expected):
    """Precedence: YAML file < flags and KEY=VALUE overrides, in command-line order."""
    assert load(yaml_file, *argv, data={"epochs": 5}).epochs == expected


def test_precedence_for_sections_and_model_args(yaml_file):
    """Overrides change one key of a section or of model_args; the rest of the YAML stays."""
    data = {"features": {"n_mels": 32, "n_fft": 256, "win_length": 256}, "model_args": {"a": 1, "b": 2}}
    cfg = load(yaml_file, "features.n_mels=40", "model_args.b=3", data=data)
    assert (cfg.features.n_mels, cfg.features.n_fft, cfg.model_args) == (40, 256, {"a": 1, "b": 3})
    cfg = load(yaml_file, "--features", "{n_mels: 50}", "--model-args", "{c: 4}", data=data)
    assert (cfg.features.n_mels, cfg.features.n_fft, cfg.model_args) == (50, 256, {"c": 4})
    assert load(yaml_file, "features.n_mels=60", "--features", "{n_mels: 50}", data=data).features.n_mels == 50
    assert load(yaml_file, "--features", "{n_mels: 50}", "features.n_mels=60", data=data).features.n_mels == 60
    assert load(yaml_file, "model_args.x.y=1", data=data).model_args == {"a": 1, "b": 2, "x": {"y": 1}}


@pytest.mark.parametrize("argv, needles", [
    (["features.n_mel=3"], ["'features.n_mel'", "n_mels", "known features keys"]),
    (["n_mels=3"], ["'n_mels'", "top-level", "features"]),
    (["augment.bogus.deep=1"], ["'augment.bogus'", "noise_snr_db"]),
    (["features.n_mels=abc"], ["features.n_mels", "expected int", "'abc'"]),
    (["epochs=true"], ["epochs", "expected int", "'true'"]),
    (["lr=fast"], ["lr", "expected float", "'fast'"]),
    (["class_weights=maybe"], ["class_weights", "expected bool", "'maybe'"]),
    (["augment.noise_snr_db=[1,2,3]"], ["augment.noise_snr_db", "tuple[float, float] | None", "[1,2,3]"]),
    (["augment.speed=[fast]"], ["augment.speed", "tuple[float, ...] | None"]),
    (["test_actors=[1,x]"], ["test_actors", "list[int] | None"]),
    (["model_args=3"], ["model_args", "dict", "'3'"]),
    (["features=3"], ["features", "mapping"]),
    (["epochs.x=1"], ["epochs", "no keys"]),
    (["--epochs", "abc"], ["epochs", "--epochs", "expected int", "'abc'"]),
    (["--test-actors", "1", "x"], ["test_actors", "list[int]"]),
    (["bogus"], ["'bogus'", "KEY=VALUE"]),
    (["--", "--epochs"], ["'--epochs'", "KEY=VALUE"]),
    (["--bogus-flag"], ["--bogus-flag"]),
    (["--n-mels", "64"], ["--n-mels", "features.n_mels=VALUE"]),
    (["--model", "nope"], ["--model", "nope"]),
    (["--epochs"], ["--epochs"]),
    (["model=nope"], ["model", "nope"]),
    (["ema_decay=1.0"], ["ema_decay", "[0, 1)"]),
    (["--checkpoint-every-s", "-1"], ["checkpoint_every_s", ">= 0", "-1"]),
    (["config=x.yaml"], ["'config'", "top-level"]),
    (["backend=torch", "eval_crops=3"], ["eval_crops=3", "--backend device", "torch backend"]),
    (["backend=dali", "speaker_norm=true", "features.speech_top_db=40"], ["features.speech_top_db, speaker_norm",
                                                                          "dali backend"]),
    (["backend=dali", "features.pitch_bins=16"], ["features.pitch_bins", "waveform", "--backend device or torch"]),
    (["select=best", "--no-validation"], ["--no-validation", "--select last"]),
    (["speaker_stats=other_intensity"], ["speaker_stats=other_intensity", "speaker_norm=true"]),
    (["speaker_stats=mine"], ["speaker_stats", "other_intensity", "'mine'"]),
    (["backend=device", "speaker_norm=true", "speaker_stats=other_intensity", "--intensity", "all"],
     ["other_intensity", "normal or strong", "all"]),
])
def test_errors_are_one_line_value_errors_naming_the_key(yaml_file, argv, needles):
    """Unknown keys, bad values and stray tokens: one-line ValueErrors naming what is wrong."""
    with pytest.raises(ValueError) as err:
        load(yaml_file, *argv)
    message = str(err.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


@pytest.mark.parametrize("crops, speeds, expected", [
    (None, (1.0,), []), (1, (1.0,), []), (3, (1.0,), ["eval_crops=3"]), (None, (0.9, 1.1), ["eval_speeds=[0.9, 1.1]"])])
def test_device_only_settings_are_one_list_for_training_and_rescoring(crops, speeds, expected):
    """device_only_in_use names what only the device backend implements: a run's own settings (what validate()
    refuses elsewhere) and the windows and speed views a re-scoring asks for (what ensembles refuse elsewhere)."""
    plain = TrainConfig(backend="torch")
    assert config.device_only_in_use(plain, crops, speeds) == expected
    lever = TrainConfig(backend="device", speaker_norm=True, features=FeatureConfig(speech_top_db=40.0))
    assert config.device_only_in_use(lever)[:2] == ["features.speech_top_db", "speaker_norm"]


def test_override_errors_come_before_the_config_file_is_read():
    """A bad override is reported even when the config file is missing."""
    with pytest.raises(ValueError, match="features.n_mel"):
        load_config(["--config", "/nonexistent.yaml", "features.n_mel=3"])
    with pytest.raises(FileNotFoundError, match="nonexistent"):
        load_config(["--config", "/nonexistent.yaml", "features.n_mels=3"])


@pytest.mark.parametrize("data, needles", [
    ({"learning_rate": 0.1}, ["typo.yaml", "learning_rate"]),
    ({"features": {"n_mel": 3}}, ["typo.yaml", "n_mel", "features"]),
    ({"features": {"n_mels": "abc"}}, ["typo.yaml", "features.n_mels", "expected int"]),
    ({"epochs": [1]}, ["typo.yaml", "epochs", "expected int"]),
])
def test_yaml_file_errors_name_the_file_and_key(yaml_file, data, needles):
    """The YAML file is checked like the overrides; its errors name the file."""
    path = yaml_file(data, name="typo.yaml")
    with pytest.raises(ValueError) as err:
        load_config(["--config", str(path)])
    assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles)


def sampled_config() -> TrainConfig:
    """A config with every leaf setting changed from its default."""
    cfg = TrainConfig()
    for key, tp, default in LEAVES:
        *parents, name = key.split(".")
        target = cfg
        for part in parents:
            target = getattr(target, part)
        setattr(target, name, sample(key, tp, default))
    return cfg


@pytest.mark.parametrize("make", [TrainConfig, sampled_config, lambda: load_config([])], ids=["default", "sampled", "resnet.yaml"])
def test_saved_config_round_trips(make):
    """to_dict (what a run saves as config.yaml and in checkpoints) reads back through from_dict to the same config."""
    cfg = make()
    saved = to_dict(cfg)
    assert from_dict(saved, "saved") == cfg
    assert from_dict(yaml.safe_load(yaml.safe_dump(saved, sort_keys=False)), "config.yaml") == cfg
    again = from_dict(saved, "saved")
    for key, _, _ in LEAVES:
        assert same(lookup(again, key), lookup(cfg, key)), key


def test_help_lists_every_flag_and_explains_overrides():
    """--help names every derived flag and shows a dotted-override example."""
    text = parser().format_help()
    for f in TOP:
        assert "--" + f.name.replace("_", "-") in text
    assert "--no-class-weights" in text and "--config FILE" in text and "per process" in text
    assert "KEY=VALUE" in text and "features.n_mels=128" in text and "precedence" in text


def test_new_fields_get_flags_and_overrides_automatically(monkeypatch, yaml_file):
    """A field added to TrainConfig or to a section is a flag / a dotted key without touching the parser."""
    @dataclass
    class MoreFeatures(FeatureConfig):
        new_bins: int = 7

    @dataclass
    class Extended(TrainConfig):
        features: MoreFeatures = field(default_factory=MoreFeatures)
        extra_knob: float = 0.5
        extra_switch: bool = False

    monkeypatch.setattr(config, "TrainConfig", Extended)
    cfg = load(yaml_file, "--extra-knob", "2", "--extra-switch", "features.new_bins=9")
    assert same(cfg.extra_knob, 2.0) and cfg.extra_switch is True and cfg.features.new_bins == 9
    with pytest.raises(ValueError, match="new_bins"):
        load(yaml_file, "features.new_bin=9")


def test_train_py_reports_a_bad_override_in_one_line():
    """`python train.py features.n_mel=3 --shards /nonexistent`: exit status != 0, one line naming the key."""
    proc = subprocess.run([sys.executable, "train.py", "features.n_mel=3", "--shards", "/nonexistent"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "features.n_mel" in errors[0] and "n_mels" in errors[0], proc.stderr


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_shipped_config_loads_and_builds_its_model(path):
    """Each YAML under configs/ is a valid TrainConfig whose model builds at its feature shape."""
    cfg = load_config(["--config", str(path)])
    model = create_model(cfg.model, 8, cfg.features.num_bins, cfg.features.num_frames, **cfg.model_args)
    assert model(torch.zeros(2, 1, cfg.features.num_bins, cfg.features.num_frames)).shape == (2, 8)


def test_notebook_baseline_is_the_notebooks_model_and_input():
    """configs/baseline/notebook.yaml: the hybrid on 40 MFCCs x ~282 frames, exactly the notebook's 248,488 weights."""
    cfg = load_config(["--config", str(CONFIG_DIR / "baseline/notebook.yaml")])
    assert (cfg.model, cfg.optimizer, cfg.features.kind, cfg.features.num_bins) == ("hybrid", "sgd", "mfcc", 40)
    assert abs(cfg.features.num_frames - 282) <= 1
    model = create_model("hybrid", 8, cfg.features.num_bins, cfg.features.num_frames)
    assert sum(p.numel() for p in model.parameters()) == 248_488


def write_yaml(path: Path, data: dict) -> Path:
    """Write DATA as YAML to PATH and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_base_file_is_read_first_and_the_file_wins(tmp_path):
    """`base:` (relative to the file): its settings under the file's own; sections merge key by key; flags still win."""
    write_yaml(tmp_path / "parent.yaml", {"model": "resnet", "epochs": 60, "lr": 0.002,
                                          "features": {"n_mels": 64, "clip_seconds": 2.0},
                                          "augment": {"mixup_alpha": 0.2, "freq_masks": 2}})
    child = write_yaml(tmp_path / "sub/child.yaml", {"base": "../parent.yaml", "model": "crnn", "epochs": 30,
                                                     "features": {"n_mels": 128}})
    cfg = load_config(["--config", str(child), "--lr", "0.01"])
    assert (cfg.model, cfg.epochs, cfg.lr) == ("crnn", 30, 0.01)
    assert (cfg.features.n_mels, cfg.features.clip_seconds) == (128, 2.0)
    assert (cfg.augment.mixup_alpha, cfg.augment.freq_masks) == (0.2, 2)


def test_base_model_args_stay_with_their_model(tmp_path):
    """model_args belong to one architecture: kept when the file keeps the model, dropped when it names another."""
    write_yaml(tmp_path / "parent.yaml", {"model": "resnet", "model_args": {"dropout": 0.3}})
    same = write_yaml(tmp_path / "same.yaml", {"base": "parent.yaml", "epochs": 5})
    other = write_yaml(tmp_path / "other.yaml", {"base": "parent.yaml", "model": "cnn"})
    whole = write_yaml(tmp_path / "whole.yaml", {"base": "parent.yaml", "model_args": {"embed": 64}})
    assert load_config(["--config", str(same)]).model_args == {"dropout": 0.3}
    assert load_config(["--config", str(other)]).model_args == {}
    assert load_config(["--config", str(whole)]).model_args == {"embed": 64}


def test_base_chain_errors_name_the_file(tmp_path):
    """A missing base, a cycle, a bad base value and a bad key inside the base: one error naming the right file."""
    missing = write_yaml(tmp_path / "missing.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(FileNotFoundError, match=r"nowhere\.yaml does not exist \(the base of .*missing\.yaml\)"):
        load_config(["--config", str(missing)])
    write_yaml(tmp_path / "a.yaml", {"base": "b.yaml"})
    write_yaml(tmp_path / "b.yaml", {"base": "a.yaml"})
    with pytest.raises(ValueError, match=r"base cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(["--config", str(tmp_path / "a.yaml")])
    number = write_yaml(tmp_path / "number.yaml", {"base": 3})
    with pytest.raises(ValueError, match=r"number\.yaml: base must be a YAML file name"):
        load_config(["--config", str(number)])
    write_yaml(tmp_path / "typo_parent.yaml", {"learning_rate": 0.1})
    child = write_yaml(tmp_path / "fine_child.yaml", {"base": "typo_parent.yaml", "epochs": 3})
    with pytest.raises(ValueError, match=r"typo_parent\.yaml: unknown setting.*learning_rate"):
        load_config(["--config", str(child)])


def test_shipped_recipes_share_their_base():
    """configs/crnn.yaml is the resnet's recipe with another model: every other setting equals configs/resnet.yaml's
    (the per-clip normalisation included, measured with both models)."""
    resnet, crnn = (to_dict(load_config(["--config", str(CONFIG_DIR / f"{m}.yaml")])) for m in ("resnet", "crnn"))
    assert crnn.pop("model") == "crnn" and resnet.pop("model") == "resnet"
    assert crnn["features"]["normalize"] == "clip"
    assert crnn == resnet


@pytest.mark.parametrize("clash, named", [
    (["--optimizer", "sgd"], "optimizer=sgd"), (["ema_decay=0.99"], "ema_decay > 0"), (["--mixed-precision", "fp16"], "mixed_precision=fp16"),
    (["compile=reduce-overhead"], "compile=reduce-overhead"),
])
def test_cuda_graph_refuses_what_it_cannot_capture(clash, named):
    """cuda_graph=true with a setting that decides on the host every step (or compiles graphs of its own) is an error
    that names the setting; without it the config is accepted, mixup included (its draws are the graph's inputs)."""
    base = ["--model", "hybrid", "--intensity", "normal", "cuda_graph=true", "augment.mixup_alpha=0.2"]
    assert load_config(base).cuda_graph is True
    with pytest.raises(ValueError, match=f"cuda_graph=true .*drop {named}"):
        load_config(base + clash)


@pytest.mark.parametrize("model, normalize", [("resnet", "clip"), ("crnn", "clip"), ("hybrid", "clip"),
                                              ("cnn", "bands")])
def test_shipped_recipes_normalise_as_their_measurements_decided(model, normalize):
    """Per clip where the declared rule (+0.02 on both intensities' CV means) was met, per band where it was not
    (the base CNN: +0.065 on strong, -0.017 on normal; results/session-2026-11-27f-plan)."""
    cfg = load_config(["--config", str(CONFIG_DIR / f"{model}.yaml")])
    assert (cfg.model, cfg.features.normalize) == (model, normalize)
