"""evaluate() counts every clip of the selection exactly once: a lost batch (or rank) is an error, not a smaller test set."""
import contextlib

import pytest
import torch
from torch import nn

from ravdess_dist.data.factory import make_loader
from ravdess_dist.evaluate import evaluate
from ravdess_dist.features import FeatureConfig
from shards.manifest import Manifest
from tests.trainer_fixtures import tiny_shards

FEATURES = FeatureConfig(kind="logmel", n_mels=32, clip_seconds=0.5, normalize=False)


class OneProcess:
    """What evaluate() uses of an Accelerator, as a single process has it (gather and padding are identities)."""

    num_processes = 1

    def autocast(self):
        """No mixed precision."""
        return contextlib.nullcontext()

    def pad_across_processes(self, tensor):
        """Nothing to pad against."""
        return tensor

    def gather(self, tensors):
        """This process's tensors are all there is."""
        return tensors


class MeanLinear(nn.Module):
    """A tiny model: [B, 1, F, T] -> mean over time -> linear -> [B, C] logits."""

    def __init__(self, bins: int, classes: int):
        """One linear layer over the time-averaged bins."""
        super().__init__()
        self.linear = nn.Linear(bins, classes)

    def forward(self, x):
        """Logits of a batch."""
        return self.linear(x.mean(dim=-1).flatten(1))


class DropOneBatch:
    """A loader that loses batch INDEX on the way (as a buggy backend or a broken rank split would); same total."""

    def __init__(self, loader, index: int):
        """Wrap LOADER."""
        self.loader, self.index, self.total = loader, index, loader.total

    def __iter__(self):
        """Every batch of the loader but one."""
        for i, batch in enumerate(self.loader):
            if i != self.index:
                yield batch


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Shards of two generated actors: 32 normal clips each."""
    return tiny_shards(tmp_path_factory.mktemp("evaluate"), actors=(1, 2))


def eval_loader(shards, rank: int = 0, world_size: int = 1):
    """The device backend's evaluation loader over the normal clips of both actors, batches of 8."""
    manifest = Manifest.load(shards)
    return make_loader("device", root=shards, entries=manifest.select("normal"), class_names=manifest.class_names("normal"),
                       batch_size=8, train=False, features=FEATURES, device="cpu", rank=rank, world_size=world_size)


@pytest.fixture(scope="module")
def model():
    """An untrained tiny model (the counts do not depend on the weights)."""
    torch.manual_seed(0)
    return MeanLinear(FEATURES.num_bins, 8)


def test_complete_loader_counts_every_clip(shards, model):
    """The whole selection: 64 clips, each once, metrics over all of them."""
    loader = eval_loader(shards)
    assert loader.total == 64 and len(loader) == 8
    metrics, cm, rows = evaluate(model, loader, OneProcess(), loader.class_names)
    assert metrics["clips"] == cm.sum() == len(rows) == 64
    assert len({r["key"] for r in rows}) == 64


def test_a_dropped_batch_is_an_error_naming_the_counts(shards, model):
    """One batch of 8 lost: 56 of 64 clips counted is a RuntimeError, not metrics over a smaller test set."""
    loader = eval_loader(shards)
    with pytest.raises(RuntimeError, match="evaluation counted 56 of 64 clips"):
        evaluate(model, DropOneBatch(loader, 3), OneProcess(), loader.class_names)


def test_a_missing_rank_is_an_error(shards, model):
    """Rank 0's part of a two-rank split evaluated as if it were everything (the other rank's clips never gathered):
    32 of 64 clips is an error."""
    loader = eval_loader(shards, rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="evaluation counted 32 of 64 clips"):
        evaluate(model, loader, OneProcess(), loader.class_names)
