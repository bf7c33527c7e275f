"""The Accelerate trainer: DDP + mixed precision, TensorBoard, atomic checkpoints, exact resume, preemption-safe."""
import contextlib
import math
import os
import pickle
import socket
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import AutocastKwargs, broadcast_object_list, gather_object, set_seed
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ravdess_dist import preemption
from ravdess_dist.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from ravdess_dist.config import TrainConfig, from_dict, graph_clashes, to_dict
from ravdess_dist.data_wait import DataWaitClock
from ravdess_dist.device import provenance, resolve_device
from ravdess_dist.evaluate import evaluate, plot_confusion
from ravdess_dist.graphed_step import GraphedStep
from ravdess_dist.data.contract import LoaderSpec, reference_entries
from ravdess_dist.data.factory import make_loader
from ravdess_dist.models import create_model
from ravdess_dist.models.adversary import AdversarialLoss, SpeakerAdversarial, emotion_model
from shards.atomic import write_json
from shards.manifest import Manifest
from shards.splits import make_split


RESUME_KEYS = ("model", "intensity", "train_intensities", "seed", "model_args", "features", "ema_decay",
               "select", "cuda_graph")  # + actors; cuda_graph: its optimiser keeps the learning rate as a tensor


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX tiles, as torch sees it)."""
    probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return any(probe is not None and probe() for probe in probes)


def resolve_precision(cfg: TrainConfig, device: str) -> str:
    """`auto` means bf16 on a GPU and on a CPU with native bf16 (AVX512-BF16 or AMX), full precision on other CPUs;
    fp16 needs a GPU.

    On an AVX512-BF16 EPYC bf16 autocast trains the resnet 1.7x faster than float32 with the same CV accuracy
    (README, Results); without those units (e.g. an AVX2-only EPYC) it trains 2-4x slower, so those CPUs keep float32.
    """
    cuda = device == "cuda"
    if cfg.mixed_precision == "auto":
        return "bf16" if cuda or cpu_has_bf16() else "no"
    if cfg.mixed_precision == "fp16" and not cuda:
        raise ValueError("--mixed-precision fp16 needs a GPU (loss scaling is CUDA-only); use bf16 or no on a CPU")
    return cfg.mixed_precision


def check_cuda_graph(device: torch.device, processes: int) -> None:
    """cuda_graph captures one process's update on a GPU: a ValueError elsewhere (DDP's collectives and a CPU have
    nothing to capture)."""
    if device.type != "cuda" or processes > 1:
        raise ValueError(f"cuda_graph=true needs one process on a GPU; this run has {processes} on {device.type}")


def resolve_cuda_graph(cfg: TrainConfig, device: torch.device, processes: int) -> bool:
    """Whether the update runs as one CUDA graph: cuda_graph as set (true checked by `check_cuda_graph`); unset, on
    where it can capture and was measured: one process on a GPU, the device backend, nothing `graph_clashes` names and
    no speaker_adversarial (an H100, 2026-11-28: the hybrid's step 24 ms eager -> 3.3 ms, every model's recipe trained
    with it; README "On a GPU")."""
    if cfg.cuda_graph:
        check_cuda_graph(device, processes)
    if cfg.cuda_graph is not None:
        return cfg.cuda_graph
    return (device.type == "cuda" and processes == 1 and cfg.backend == "device" and not graph_clashes(cfg)
            and not cfg.speaker_adversarial)


def default_run_name(cfg: TrainConfig) -> str:
    """MODEL-INTENSITY-SPLIT-TIMESTAMP, e.g. hybrid-normal-fold0of6-20261124-101500."""
    split = f"test{'-'.join(map(str, cfg.test_actors))}" if cfg.test_actors else f"fold{cfg.fold}of{cfg.folds or 'auto'}"
    if not cfg.test:
        split = "final"
    return f"{cfg.model}-{cfg.intensity}-{split}-{time.strftime('%Y%m%d-%H%M%S')}"


def per_process_batch(batch_size: int, num_processes: int) -> int:
    """--batch-size is the global batch, split evenly across the processes: each process's share, or a ValueError
    when it does not divide (so any number of processes takes the same steps per epoch, the same LR schedule)."""
    if batch_size % num_processes:
        lower, upper = batch_size - batch_size % num_processes, batch_size + num_processes - batch_size % num_processes
        hint = f"{lower} or {upper}" if lower else str(upper)
        raise ValueError(f"--batch-size {batch_size} is the global batch and must divide by the {num_processes} "
                         f"processes (try {hint})")
    return batch_size // num_processes


def from_main(accelerator, read):
    """READ() on the main process alone, its result broadcast to every rank: ranks never decide from their own view of
    the file system. An error on the main process is raised on every rank (no rank waits forever for the others)."""
    result, error = None, None
    if accelerator.is_main_process:
        try:
            result = read()
        except Exception as err:  # raised below, on every rank
            error = err
    if accelerator.num_processes > 1:
        if error is not None:
            try:
                pickle.dumps(error)
            except Exception:  # an exception that does not pickle still reaches the other ranks, as its text
                error = RuntimeError(f"{type(error).__name__}: {error}")
        result, error = broadcast_object_list([result, error])
    if error is not None:
        raise error
    return result


def describe_split(split) -> str:
    """A split in one line: test [..], val [..], train [..]."""
    return f"test {list(split.test)}, val {list(split.val)}, train {list(split.train)}"


def check_resumable(path, saved: dict, cfg: TrainConfig, actors) -> None:
    """Refuse to continue a checkpoint of another set-up: a ValueError naming the first setting that differs (the
    RESUME_KEYS, or the split's actors as make_split computes them for both configs over these shards' actors)."""
    try:  # the saved config with every default filled in, as this version reads it
        saved = to_dict(from_dict(saved, str(path)))
    except ValueError:  # an older config with keys this version no longer knows: compare what is there
        pass
    asked, defaults = to_dict(cfg), to_dict(TrainConfig())
    if saved.get("cuda_graph") is None:  # a checkpoint from before the option (or with it unset) trained without one
        saved = {**saved, "cuda_graph": False}
    for key in RESUME_KEYS:
        if saved.get(key, defaults[key]) != asked[key]:
            raise ValueError(f"{path}: checkpoint has {key}={saved.get(key, defaults[key])!r}, this run asks {asked[key]!r}")
    splits = []
    for c in (saved, asked):
        splits.append(make_split(actors, c.get("folds"), c.get("fold") or 0, c.get("test_actors"), c.get("val_actors"),
                                 c.get("validation", True), c.get("test", True)))
    if splits[0] != splits[1]:
        raise ValueError(f"{path}: checkpoint has split=({describe_split(splits[0])}), this run asks "
                         f"split=({describe_split(splits[1])})")


def resume_state(cfg: TrainConfig, accelerator, actors) -> dict | None:
    """The checkpoint to continue from: --resume PATH, or `auto` = this run's last.pt if it exists.

    The main process alone decides whether there is one and reads it; every rank receives the same state by
    broadcast. A checkpoint of another split, seed, intensity, model or features is refused (check_resumable)."""
    if not cfg.resume:
        return None

    def read():
        """(path, state) of the checkpoint, or None for `auto` without one (main process only)."""
        path = Path(cfg.output_dir) / str(cfg.run_name) / "last.pt" if cfg.resume == "auto" else Path(cfg.resume)
        if cfg.resume == "auto" and not path.is_file():
            return None
        return path, load_checkpoint(path)

    found = from_main(accelerator, read)
    if found is None:
        return None
    path, state = found
    check_resumable(path, state["config"], cfg, actors)
    return state


def weights_checksum(state_dict: dict) -> float:
    """The float64 sum of every floating-point tensor of a state dict: the same weights give the same number."""
    return float(sum(t.detach().double().sum() for t in state_dict.values() if t.is_floating_point()))


def training_entries(manifest: Manifest, cfg: TrainConfig, actors, classes: list[str]):
    """The training shards: the requested intensity, or both (`train_intensities: both`) restricted to the classes
    of the requested one -- strong has no neutral, so a model for strong never sees, and never predicts, neutral."""
    if cfg.train_intensities == "same":
        return manifest.select(cfg.intensity, actors)
    return [entry.only(classes) for entry in manifest.select("all", actors)]


def class_weights(entries, classes: list[str]) -> torch.Tensor:
    """Inverse-frequency weights over the training clips (neutral is half as frequent in `all`)."""
    counts = torch.tensor([sum(e.emotions.get(c, 0) for e in entries) for c in classes], dtype=torch.float)
    return counts.sum() / (len(classes) * counts.clamp(min=1))


def make_optimizer(cfg: TrainConfig, model, steps_per_epoch: int, device: torch.device):
    """AdamW (default) or SGD as in the notebook, with linear warm-up then cosine decay per step.

    On a GPU AdamW is the fused kernel: the default (foreach) spends ~3 ms of host time a step on these models' 74
    parameter tensors (a CPU step counter read per tensor), the fused one ~1.2 ms less a step and half the GPU time
    (hybrid, H100, reduce-overhead: 13.4 -> 12.2 ms a step; README, "On a GPU"). On the CPU the default stays: the
    CPU recipes were measured with it. With cuda_graph the learning rate is a tensor on DEVICE, which the scheduler
    fills in place (a float would be frozen into the captured graph), and AdamW is capturable on a GPU."""
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    elif cfg.cuda_graph:
        opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(cfg.lr, device=device),
                                weight_decay=cfg.weight_decay, fused=True, capturable=device.type == "cuda")
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=True if device.type == "cuda" else None)
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(cfg.warmup_epochs * steps_per_epoch), total - 1)

    def factor(step: int) -> float:
        """LR multiplier: ramps to 1 over the warm-up, then half a cosine down to 0."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def mixup_draws(alpha: float, y: torch.Tensor) -> tuple:
    """Mixup's draws for a batch of labels Y: its weight from Beta(ALPHA, ALPHA) (a float, from torch's global generator
    on the CPU) and each clip's partner (a permutation, from the device's generator); () when ALPHA is 0."""
    if alpha <= 0:
        return ()
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    return lam, torch.randperm(len(y), device=y.device)


def graph_inputs(mix: tuple) -> tuple:
    """MIX (mixup_draws) as a CUDA graph's inputs: the weight a float32 tensor on the device (a float would be frozen
    into the captured graph), copied from pinned memory without blocking (the allocator keeps that buffer until the
    copy ran); a CPU tensor on a CPU (the graph's eager stand-in). The same value: float32 holds Beta's sample exactly."""
    if not mix:
        return ()
    lam, pair = mix
    weight = torch.tensor(lam, dtype=torch.float32)
    if pair.device.type == "cuda":
        weight = weight.pin_memory().to(pair.device, non_blocking=True)
    return weight, pair


def mixed_loss(model, loss_fn, x: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor | None = None,
               pair: torch.Tensor | None = None) -> torch.Tensor:
    """LOSS_FN of MODEL on features X, labels Y; with mixup's draws (LAM, PAIR) the inputs are the convex pairs
    LAM * x + (1 - LAM) * x[PAIR] and the loss mixes both labels with the same weight."""
    if pair is None:
        return loss_fn(model(x), y)
    logits = model(lam * x + (1 - lam) * x[pair])
    return lam * loss_fn(logits, y) + (1 - lam) * loss_fn(logits, y[pair])


def average_of(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of MODEL's weights and buffers (BatchNorm statistics too), updated after every
    optimiser step; None when DECAY is 0. Its step counter stays on the CPU, so an update never waits for the GPU."""
    if not decay:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True).eval()


class Run:
    """One training run's state and outputs; `fit()` trains, `test()` evaluates the best model on the test actors."""

    def __init__(self, cfg: TrainConfig):
        self.started, self.seconds = time.perf_counter(), {}  # one clock for every figure of `timing`
        device = resolve_device(cfg.device)  # an error, not a silent CPU run, when GPUs are there but unusable
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
        self.accelerator = Accelerator(cpu=device == "cpu", mixed_precision=resolve_precision(cfg, device),
                                       log_with="tensorboard", project_dir=cfg.logging_dir,
                                       # compile is the run's own choice (below): Accelerate's dynamo setting is
                                       # process-wide and outlived its Run (the next Run in a process was compiled too)
                                       dynamo_backend="no",
                                       # capture needs autocast's weight cache off, also in the model's own wrapper
                                       # (unset, on a GPU: whether the graph is used is decided below)
                                       kwargs_handlers=[AutocastKwargs(cache_enabled=False)]
                                       if cfg.cuda_graph or (cfg.cuda_graph is None and device == "cuda") else None)
        acc = self.accelerator
        self.seconds["setup_device"] = time.perf_counter() - self.started  # the device's choice and Accelerate
        cfg.cuda_graph = resolve_cuda_graph(cfg, acc.device, acc.num_processes)  # config.yaml and resumes: the choice
        self.batch_size = per_process_batch(cfg.batch_size, acc.num_processes)  # cfg.batch_size is the global batch
        manifest = Manifest.load(Path(cfg.shards))
        self.state = resume_state(cfg, acc, manifest.actors)
        name = [cfg.run_name or (self.state["config"]["run_name"] if self.state else default_run_name(cfg))]
        broadcast_object_list(name)  # every rank must agree on one name (timestamps differ)
        cfg.run_name, self.cfg = name[0], cfg
        self.run_dir = Path(cfg.output_dir) / cfg.run_name
        self.split = make_split(manifest.actors, cfg.folds, cfg.fold, cfg.test_actors, cfg.val_actors, cfg.validation,
                                cfg.test)
        self.classes = manifest.class_names(cfg.intensity)
        set_seed(cfg.seed)

        def loader(entries, train, actors):
            """A loader over these shards (of these actors) for this rank."""
            return make_loader(cfg.backend, LoaderSpec(
                Path(cfg.shards), entries, self.classes, self.batch_size, train, cfg.features,
                augment=cfg.augment if train else None, device=acc.device, rank=acc.process_index,
                world_size=acc.num_processes, seed=cfg.seed, num_workers=cfg.num_workers, eval_crops=cfg.eval_crops,
                speaker_norm=cfg.speaker_norm, data_stream=cfg.data_stream,
                speaker_reference=reference_entries(manifest, cfg.intensity, cfg.speaker_stats, actors)))

        with self.timed("setup_loaders"):  # the device backend decodes its clips here (once per process and shard)
            self.train_entries = training_entries(manifest, cfg, self.split.train, self.classes)
            self.train_loader = loader(self.train_entries, True, self.split.train)
            self.val_loader = (loader(manifest.select(cfg.intensity, self.split.val), False, self.split.val)
                               if self.split.val else None)
            self.test_loader = (loader(manifest.select(cfg.intensity, self.split.test), False, self.split.test)
                                if self.split.test else None)  # --no-test: a final model, every actor trained on
        with self.timed("setup_model"):
            model = create_model(cfg.model, len(self.classes), cfg.features.num_bins, cfg.features.num_frames,
                                 **cfg.model_args)
            if cfg.speaker_adversarial:  # each training clip's speaker: a class of the speaker classifier
                speakers = {actor: i for i, actor in enumerate(sorted({e.actor for e in self.train_entries}))}
                self.speaker_of = {key: speakers[e.actor] for e in self.train_entries for key in e.keys}
                model = SpeakerAdversarial(model, len(speakers), cfg.speaker_adversarial)
            if cfg.channels_last:  # the [B, 1, F, T] inputs are NHWC already (one channel): only the weights change
                model = model.to(memory_format=torch.channels_last)
            optimizer, self.scheduler = make_optimizer(cfg, model, len(self.train_loader), acc.device)
            weights = class_weights(self.train_entries, self.classes) if cfg.class_weights else None
            self.loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=cfg.label_smoothing).to(acc.device)
            if cfg.speaker_adversarial:  # targets become [B, 2]: emotion, speaker (train_step's `targets`)
                self.loss_fn = AdversarialLoss(self.loss_fn)
            # the loaders already split by rank: only the model and optimizer go through prepare() (DDP), then compile
            self.model, self.optimizer = acc.prepare(model, optimizer)
            if cfg.compile != "no":  # reduce-overhead adds CUDA graphs; checkpoints keep the plain names (bare_model)
                self.model = torch.compile(self.model, backend="inductor", mode=cfg.compile)
        self.bare = acc.unwrap_model(self.model, keep_torch_compile=False)  # once: a call costs ~1.5 ms (every step)
        self.ema = average_of(self.bare, cfg.ema_decay)
        self.stop_poll = preemption.StopPoll(acc)
        self.graphed: GraphedStep | None = None  # cuda_graph: captured at the first training step (it needs a batch)
        self.epoch, self.step_in_epoch, self.best, self.history = 0, 0, {"ua": -1.0, "epoch": -1}, []
        self.epoch_loss_sum = 0.0  # summed step losses of the epoch so far: a resumed epoch reports all its steps
        self.weight_checksums: list[float] = []
        self.test_weight_checksums: list[float] = []
        if self.state:
            self.restore(self.state)
        acc.init_trackers(cfg.run_name)
        self.writer = acc.get_tracker("tensorboard", unwrap=True) if acc.is_main_process else None
        first_epoch = self.train_loader.plan(0)
        ranks = gather_object([{"rank": acc.process_index, "node_rank": int(os.environ.get("GROUP_RANK", 0)),
                                "host": socket.gethostname(), "slurm_node": os.environ.get("SLURMD_NODENAME"),
                                "train_keys_epoch0": [k for _, keys in first_epoch for k in keys],
                                "provenance": provenance(str(acc.device))}])
        if acc.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
            write_json(self.run_dir / "ranks.json", ranks)  # who ran where and read what: provenance
        acc.print(f"run {cfg.run_name}: {cfg.model} on {cfg.intensity} ({len(self.classes)} classes), {acc.num_processes} "
                  f"process(es) on {acc.device}, precision {acc.mixed_precision}; actors train {list(self.split.train)} "
                  f"val {list(self.split.val)} test {list(self.split.test)}; {len(self.train_loader)} steps/epoch of "
                  f"{cfg.batch_size} clips ({self.batch_size} per process)"
                  f"{'; the update replayed as one CUDA graph' if cfg.cuda_graph else ''}")
        self.seconds["setup"] = time.perf_counter() - self.started

    @contextlib.contextmanager
    def timed(self, part: str):
        """Add the wall time of the block to self.seconds[PART] (metrics.json's `timing`: where a run's time goes)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] = self.seconds.get(part, 0.0) + time.perf_counter() - start

    def timing(self) -> dict:
        """Seconds of this process's run by part: setup, train_steps (the epochs' step loops, data included),
        validation, checkpoints, test, and everything outside the training steps. setup_device, setup_loaders and
        setup_model are parts of setup (the rest of it: the manifest, the split, resuming, trackers, provenance)."""
        wall = time.perf_counter() - self.started
        parts = {k: round(v, 2) for k, v in self.seconds.items()}
        return {**parts, "outside_train_steps": round(wall - self.seconds.get("train_steps", 0.0), 2), "wall": round(wall, 2)}

    def bare_model(self) -> torch.nn.Module:
        """The model without its DDP and torch.compile wrappers: its state dict has the plain parameter names. With
        speaker_adversarial it holds the speaker classifier too (what the optimiser trains)."""
        return self.bare

    def saved_model(self) -> torch.nn.Module:
        """The weights that are validated, tested and saved as `model` (what predict and ensembles load): the moving
        average when ema_decay > 0, else the trained model itself; the emotion model alone (no speaker classifier)."""
        return emotion_model(self.ema.module if self.ema is not None else self.bare_model())

    def evaluated_model(self) -> torch.nn.Module:
        """What validation and test run: saved_model(), without DDP and torch.compile. A forward without gradients
        needs no DDP, and compiling evaluation's other shapes (K windows a clip, a short last batch) costs 10-16 s a
        run on an H100 (reduce-overhead, 2026-11-27), where an eager pass over a fold's test clips takes under 1 s."""
        return self.saved_model()

    def restore(self, state: dict) -> None:
        """Load model, optimizer, scheduler, scaler, the weights' average and progress from a checkpoint."""
        if self.ema is not None:  # `model` holds the average, `train_model` the weights the optimiser works on
            emotion_model(self.ema.module).load_state_dict(state["model"])
            self.ema.n_averaged.fill_(state["ema_updates"])
        self.bare_model().load_state_dict(state["train_model"] if "train_model" in state else state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.cfg.cuda_graph:  # checkpoints load on the CPU; the graph's fused AdamW reads its rate on the device
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"].to(self.accelerator.device)
        if self.accelerator.scaler is not None and state.get("scaler"):
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step_in_epoch, self.epoch_loss_sum = state["epoch"], state["step"], state.get("epoch_loss_sum", 0.0)
        self.best, self.history = state["best"], state["history"]
        self.accelerator.print(f"resumed from epoch {self.epoch} step {self.step_in_epoch}")

    def checkpoint(self, name: str) -> None:
        """Write NAME.pt in the run folder (main process), atomically, with every rank's random state (all ranks call)."""
        rng = gather_object([rng_state()])  # rank order: a resumed multi-process epoch replays exactly on every rank
        if name == "last":
            self.last_written = time.perf_counter()
        if not self.accelerator.is_main_process:
            return
        scaler = self.accelerator.scaler
        # `train_model`: the weights the optimiser works on, where `model` is something else (the moving average, or
        # the emotion model without speaker_adversarial's classifier)
        trained = {} if self.saved_model() is self.bare_model() else {"train_model": self.bare_model().state_dict()}
        average = {} if self.ema is None else {"ema_updates": int(self.ema.n_averaged)}
        save_checkpoint(self.run_dir / f"{name}.pt", {
            "model": self.saved_model().state_dict(), **trained, **average,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else {}, "rng": rng,
            "epoch": self.epoch, "step": self.step_in_epoch, "epoch_loss_sum": self.epoch_loss_sum,
            "best": self.best, "history": self.history, "config": to_dict(self.cfg), "classes": self.classes})

    def resumed_rng(self) -> dict | None:
        """This rank's random state from the checkpoint; None (the epoch's seed stays) if it has another world size."""
        states, acc = self.state["rng"], self.accelerator
        if len(states) != acc.num_processes:
            acc.print(f"warning: the checkpoint holds the random states of {len(states)} process(es), this run has "
                      f"{acc.num_processes}: the resumed epoch continues from its seed, not bit-exactly")
            return None
        return states[acc.process_index]

    def should_stop(self, last: bool) -> bool:
        """True on every rank, at the same step, once any rank got a preemption signal (preemption.StopPoll: no host
        sync with one process, none on the steps' behalf with several); LAST: the epoch's last step."""
        return self.stop_poll(last)

    def train_epoch(self) -> dict:
        """One pass over this rank's training batches; returns loss, clips (all processes'), seconds, clips/s and the
        fraction of time spent waiting for data: `data_wait` on the host's clock, `data_wait_device` on a GPU's (the
        measure there; None on a CPU: ravdess_dist/data_wait.py says why they differ).

        No host sync per step: the loss sum stays on the device and is read once, at the end (or at a preemption); the
        preemption flag is looked at every STOP_CHECK_EVERY steps and at the last step (preemption.check_due)."""
        acc, model = self.accelerator, self.model
        model.train()
        set_seed(self.cfg.seed + 1000 * self.epoch, device_specific=True)  # the epoch replays identically on resume
        self.train_loader.set_epoch(self.epoch)
        steps = len(self.train_loader)
        skip, resumed_rng = self.step_in_epoch, self.resumed_rng() if self.step_in_epoch else None
        # float64 from the resumed epoch's sum: the same additions in the same order as an uninterrupted epoch
        loss_sum = torch.tensor(self.epoch_loss_sum, dtype=torch.float64, device=acc.device)
        clock, start = DataWaitClock(acc.device), time.perf_counter()
        batches = iter(self.train_loader)
        bar = tqdm(range(steps), desc=f"epoch {self.epoch}", disable=not acc.is_local_main_process, leave=False)
        for step in bar:
            if step == skip and resumed_rng is not None:  # continue the interrupted epoch with the random state it had,
                set_rng_state(resumed_rng)  # before this step's batch: SpecAugment draws from it as the batch is made
            with clock.fetching():
                batch = next(batches)
            if step < skip:
                continue
            if self.epoch == 0 and step == 0:
                self.log_spectrograms(batch.features)
            loss_sum += self.train_step(batch)  # stays on the device: no sync
            self.step_in_epoch = step + 1
            if preemption.check_due(step, steps) and self.should_stop(last=step + 1 == steps):
                self.epoch_loss_sum = loss_sum.item()
                self.checkpoint("last")
                signum = preemption.STOP["signal"]
                acc.print(f"signal {signum}: checkpoint saved at epoch {self.epoch} step {self.step_in_epoch}")
                acc.end_training()
                raise preemption.Preempted(128 + max(signum, 1))
        clock.stop()
        self.epoch_loss_sum = loss_sum.item()  # the epoch's one host sync (it waits for the device's last step)
        elapsed = time.perf_counter() - start
        clips = (self.step_in_epoch - skip) * self.cfg.batch_size  # the global batch: every process's clips
        return {"loss": self.epoch_loss_sum / max(self.step_in_epoch, 1), "clips": clips, "seconds": elapsed,
                "clips_per_s": clips / elapsed, "data_wait": clock.host / elapsed,
                "data_wait_device": clock.device_share()}

    def train_step(self, batch) -> torch.Tensor:
        """One optimiser step on BATCH: `update` (or, with cuda_graph, the replay of its CUDA graph), then the LR
        schedule and the weights' moving average; returns the loss, on the device."""
        targets = self.targets(batch)
        mix = mixup_draws(self.cfg.augment.mixup_alpha, targets)
        if self.cfg.cuda_graph:
            inputs = (batch.features, targets, *graph_inputs(mix))
            if self.graphed is None:
                self.graphed = GraphedStep(self.update, inputs, self.bare_model(), self.optimizer)
            loss = self.graphed(*inputs)  # writes the gradients afresh: no zero_grad
        else:
            loss = self.update(batch.features, targets, *mix)
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.bare_model())
        return loss

    def targets(self, batch) -> torch.Tensor:
        """The loss's targets of BATCH: its emotion labels [B]; with speaker_adversarial [B, 2], each clip's speaker
        (looked up by key on the host, copied without blocking) beside its emotion."""
        if not self.cfg.speaker_adversarial:
            return batch.labels
        speakers = torch.tensor([self.speaker_of[key] for key in batch.keys], dtype=torch.int64)
        if batch.labels.device.type == "cuda":
            speakers = speakers.pin_memory()
        return torch.stack([batch.labels, speakers.to(batch.labels.device, non_blocking=True)], dim=1)

    def update(self, x: torch.Tensor, y: torch.Tensor, lam: float | torch.Tensor | None = None,
               pair: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and loss (mixed_loss: mixup when given its draws LAM, PAIR), backward, gradient clipping and the
        optimiser step on features X, labels Y; returns the loss. What cuda_graph captures."""
        acc = self.accelerator
        with acc.autocast():
            loss = mixed_loss(self.model, self.loss_fn, x, y, lam, pair)
        acc.backward(loss)
        acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def log_epoch(self, train: dict, val: dict | None) -> None:
        """Scalars to TensorBoard and a line on the console (VAL: None in a run without validation actors)."""
        lr = float(self.scheduler.get_last_lr()[0])  # a tensor with cuda_graph: read once an epoch
        scores = {} if val is None else {"val/wa": val["wa"], "val/ua": val["ua"], "val/macro_f1": val["macro_f1"]}
        device_wait = train["data_wait_device"]
        waits = {"train/data_wait_fraction": train["data_wait"],
                 **({} if device_wait is None else {"train/data_wait_device_fraction": device_wait})}
        self.accelerator.log({"train/loss": train["loss"], "train/lr": lr, "train/clips_per_s": train["clips_per_s"],
                              **waits, **scores}, step=self.epoch)
        shown = "" if val is None else f" val WA {val['wa']:.3f} UA {val['ua']:.3f} F1 {val['macro_f1']:.3f}"
        wait = f"{100 * train['data_wait']:.0f} %" if device_wait is None else \
            f"{100 * device_wait:.0f} % of GPU time ({100 * train['data_wait']:.0f} % of host time)"
        self.accelerator.print(f"epoch {self.epoch}: loss {train['loss']:.4f}{shown} ({train['clips_per_s']:.0f} "
                               f"clips/s, data wait {wait})")

    def log_spectrograms(self, features: torch.Tensor) -> None:
        """A few training inputs as images, once, to see what the model sees."""
        if self.writer is None:
            return
        images = features[:4].float()
        lo, hi = images.amin(dim=(2, 3), keepdim=True), images.amax(dim=(2, 3), keepdim=True)
        self.writer.add_images("inputs/features", ((images - lo) / (hi - lo + 1e-6)).flip(2).cpu(), 0)

    def validate(self) -> dict | None:
        """Validation metrics of this epoch's model, or None without validation actors."""
        if self.val_loader is None:
            return None
        with self.timed("validation"):
            return evaluate(self.evaluated_model(), self.val_loader, self.accelerator, self.classes)[0]

    def running(self) -> bool:
        """Whether another epoch trains: the budget is not spent and early stopping has not ended the run."""
        return self.epoch < self.cfg.epochs and self.epoch - self.best["epoch"] <= self.cfg.patience

    def last_due(self) -> bool:
        """Whether this epoch writes last.pt: always at the end of the run and with checkpoint_every_s 0, else once
        that many seconds have passed since the previous write, by the main process's clock (every rank must agree:
        writing is a collective). On a GPU an epoch of these models takes well under a second, a write tens of ms."""
        every = self.cfg.checkpoint_every_s
        if every <= 0 or not self.running():
            return True
        due = [time.perf_counter() - self.last_written >= every]
        broadcast_object_list(due)
        return due[0]

    def fit(self) -> None:
        """Train until the epoch budget or early stopping; keep as best.pt the epoch of the best validation UA (never
        test), or with select=last the last epoch (the whole schedule runs: every epoch is the newest "best")."""
        preemption.listen()
        self.last_written = time.perf_counter()
        while self.running():
            train = self.train_epoch()
            self.seconds["train_steps"] = self.seconds.get("train_steps", 0.0) + train["seconds"]
            val = self.validate()
            self.log_epoch(train, val)
            self.history.append({"epoch": self.epoch, **train,
                                 **{f"val_{k}": v for k, v in (val or {}).items() if k != "recall"}})
            improved = self.cfg.select == "last" or val["ua"] > self.best["ua"]
            if improved:
                self.best = {"ua": val["ua"] if val else None, "epoch": self.epoch, "val": val}
            self.epoch, self.step_in_epoch, self.epoch_loss_sum = self.epoch + 1, 0, 0.0
            with self.timed("checkpoints"):
                if improved and (self.cfg.select == "best" or self.epoch == self.cfg.epochs):
                    self.checkpoint("best")  # select=last: only the final epoch's is kept, so write it once
                if self.last_due():
                    self.checkpoint("last")
        self.check_replicas_agree()

    def check_replicas_agree(self) -> None:
        """DDP keeps one model: every rank's weights must be identical after training, else stop loudly."""
        params = self.bare_model().parameters()
        checksum = float(sum(p.detach().double().sum() for p in params))
        sums = gather_object([checksum])
        if len(set(sums)) != 1:
            raise RuntimeError(f"model replicas diverged across ranks: weight checksums {sums}")
        self.weight_checksums = sums

    def test(self) -> dict:
        """Evaluate the best epoch's weights on the test actors; write metrics.json, the confusion matrix, hparams.
        A final model (--no-test) has no test actors: its metrics.json has `"test": null` and the rest."""
        acc = self.accelerator
        best = self.run_dir / "best.pt"
        test, cm, rows = None, None, None
        # the main process reads best.pt, every rank gets its weights: no rank tests other weights, or fails, because
        # its own view of the file system differs
        with self.timed("test"):
            if self.test_loader is not None:
                weights = from_main(acc, lambda: load_checkpoint(best)["model"] if best.is_file() else None)
                if weights is not None:
                    self.saved_model().load_state_dict(weights)
                self.test_weight_checksums = gather_object([weights_checksum(self.saved_model().state_dict())])
                test, cm, rows = evaluate(self.evaluated_model(), self.test_loader, acc, self.classes)
        timing = self.timing()
        metrics = {"run": self.cfg.run_name, "model": self.cfg.model, "intensity": self.cfg.intensity,
                   "classes": self.classes, "split": vars(self.split), "select": self.cfg.select,
                   "best_epoch": self.best["epoch"],
                   "epochs_run": self.epoch, "val": self.best.get("val"), "test": test,
                   "confusion_matrix": None if cm is None else cm.tolist(),
                   "world_size": acc.num_processes, "mixed_precision": acc.mixed_precision,
                   "batch_size": self.cfg.batch_size, "batch_size_per_process": self.batch_size,
                   "steps_per_epoch": len(self.train_loader),
                   # speaker_norm normalises with statistics of the test actors' unlabelled audio: their scored
                   # clips (transductive) or their other-intensity clips (speaker_stats=other_intensity)
                   "transductive": self.cfg.speaker_norm and self.cfg.speaker_stats == "own" and test is not None,
                   "test_speaker_audio": self.cfg.speaker_norm and test is not None,
                   "weight_checksums": self.weight_checksums, "test_weight_checksums": self.test_weight_checksums,
                   "wall_seconds": round(timing["wall"], 1), "timing": timing, "history": self.history}
        if acc.is_main_process:
            scores = {} if test is None else {"hparam/test_wa": test["wa"], "hparam/test_ua": test["ua"],
                                              "hparam/test_macro_f1": test["macro_f1"]}
            self.writer.add_hparams({k: v for k, v in to_dict(self.cfg).items() if isinstance(v, (int, float, str, bool))},
                                    {**scores, **({} if self.best["ua"] is None else {"hparam/best_val_ua": self.best["ua"]})},
                                    run_name=".")
            if test is not None:
                fig = plot_confusion(cm, self.classes, f"{self.cfg.run_name}: test UA {test['ua']:.3f}")
                fig.savefig(self.run_dir / "confusion_matrix.png")
                self.writer.add_figure("test/confusion_matrix", fig, self.epoch)
                write_json(self.run_dir / "predictions.json", rows)
            write_json(self.run_dir / "metrics.json", metrics)
        if test is None:
            acc.print(f"final model: no test actors (every actor of {list(self.split.train)} trained); "
                      f"outputs in {self.run_dir}")
        else:
            acc.log({"test/wa": test["wa"], "test/ua": test["ua"], "test/macro_f1": test["macro_f1"]}, step=self.epoch)
            acc.print(f"test actors {list(self.split.test)}: WA {test['wa']:.3f} UA {test['ua']:.3f} "
                      f"macro-F1 {test['macro_f1']:.3f}; outputs in {self.run_dir}")
        for tracker in acc.trackers:  # close this run's event files; the process group stays for a next run (CV)
            tracker.finish()
        return metrics

    def close(self) -> None:
        """End the process's last run: trackers and the process group (a later collective would fail)."""
        self.accelerator.end_training()


def training_function(cfg: TrainConfig, last: bool = True) -> dict:
    """Train, keep the best model by validation UA (or the last epoch's: select=last), evaluate it on the test actors;
    returns metrics.json's content.

    LAST: this is the process's last run, so the process group ends with it (cross-validation passes False until
    its last fold: `end_training` destroys the group, and the next fold's first collective would fail)."""
    run = Run(cfg)
    run.fit()
    metrics = run.test()
    if last:
        run.close()
    return metrics
