"""cuda_graph's GraphedStep on the CPU (capture=False): its static buffers, warm-up and restoring give exactly the
updates of the plain step, whether the optimiser's state is fresh or resumed. The capture itself needs a GPU
(tests/test_device.py)."""
import pytest
import torch

from ravdess_dist.config import load_config
from ravdess_dist.graphed_step import GraphedStep
from ravdess_dist.models import create_model
from ravdess_dist.trainer import graph_inputs, make_optimizer, mixed_loss, mixup_draws
from tests.gpu import gpu

SHAPE = (8, 1, 32, 21)  # a batch of small log-mels


def setup(seed: int, device: str = "cpu", dropout: float = 0.3):
    """The base CNN (BatchNorm and dropout: state and random draws the warm-up must not leave behind) with
    cuda_graph's optimiser (fused AdamW, a tensor learning rate) and its schedule, from SEED, on DEVICE."""
    torch.manual_seed(seed)
    cfg = load_config(["--model", "cnn", "--intensity", "normal", "cuda_graph=true", "warmup_epochs=1", "lr=0.01",
                       "augment.mixup_alpha=0"])
    model = create_model("cnn", 8, SHAPE[2], SHAPE[3], dropout=dropout).to(device)
    optimizer, scheduler = make_optimizer(cfg, model, 4, torch.device(device))

    def update(x, y, lam=None, pair=None):  # the trainer's update without Accelerate: mixup when given its draws
        loss = mixed_loss(model, torch.nn.functional.cross_entropy, x, y, lam, pair)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.detach()

    return model, optimizer, scheduler, update


def batches(n: int, device: str = "cpu"):
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(SHAPE, generator=gen).to(device), torch.randint(8, (SHAPE[0],), generator=gen).to(device))
            for _ in range(n)]


def state_of(model, optimizer) -> list[torch.Tensor]:
    """Every tensor an update changes: parameters, buffers, AdamW's state."""
    return [*model.parameters(), *model.buffers(),
            *(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))]


@pytest.mark.parametrize("steps_before", [0, 2])  # a fresh optimiser, or one with state (a resumed run)
def test_graphed_updates_are_the_plain_updates(steps_before):
    """The same losses and, bit for bit, the same weights, BatchNorm statistics and AdamW state after each update,
    the learning rate following the schedule (a tensor the scheduler fills in place)."""
    data = batches(steps_before + 5)
    plain, graphed = setup(0), setup(0)
    for model, optimizer, scheduler, update in (plain, graphed):
        model.train()
        torch.manual_seed(1)  # dropout's draws: the same sequence for both
        for x, y in data[:steps_before]:
            update(x, y)
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
    model, optimizer, scheduler, update = graphed
    step = GraphedStep(update, data[steps_before], model, optimizer, capture=False)
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)
    for x, y in data[steps_before:]:
        rng = torch.get_rng_state()
        expected = plain[3](x, y)
        plain[1].zero_grad(set_to_none=True)
        plain[2].step()
        torch.set_rng_state(rng)
        got = step(x, y)
        scheduler.step()
        assert torch.equal(got, expected)
        assert all(torch.equal(a, b) for a, b in zip(state_of(*graphed[:2]), state_of(*plain[:2]), strict=True))
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(float(plain[2].get_last_lr()[0]))


def test_warm_up_leaves_no_trace():
    """Right after the warm-up and capture, the weights, statistics and random generator are as before."""
    model, optimizer, _, update = setup(0)
    before = [t.clone() for t in state_of(model, optimizer)]
    rng = torch.get_rng_state()
    GraphedStep(update, batches(1)[0], model, optimizer, capture=False)
    assert all(torch.equal(a, b) for a, b in zip(before, [*model.parameters(), *model.buffers()]))
    assert all(not v.any() for s in optimizer.state.values() for v in s.values())  # AdamW's initial state: zeros
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_batch_of_another_shape_is_refused():
    """The graph holds one batch shape: another is an error that names both."""
    model, optimizer, _, update = setup(0)
    step = GraphedStep(update, batches(1)[0], model, optimizer, capture=False)
    x, y = batches(1)[0]
    with pytest.raises(ValueError, match=r"shapes \(4, 1, 32, 21\) / \(4,\) where .* captured for \(8, 1, 32, 21\) / \(8,\)"):
        step(x[:4], y[:4])


def test_mixup_draws_as_graph_inputs_give_the_plain_mixup_updates():
    """With mixup the graph's inputs are its draws (the weight a float32 tensor, the pairing a permutation): bit for
    bit the updates of the plain step, which takes the weight as a float, the draws made once for both."""
    data = batches(5)
    plain, graphed = setup(0), setup(0)
    model, optimizer, scheduler, update = graphed
    torch.manual_seed(3)
    draws = [mixup_draws(0.2, y) for _, y in data]
    assert all(isinstance(lam, float) and 0 <= lam <= 1 for lam, _ in draws)
    first = graph_inputs(draws[0])
    assert first[0].dtype == torch.float32 and first[0].item() == draws[0][0]  # float32 holds the sample exactly
    step = GraphedStep(update, (*data[0], *first), model, optimizer, capture=False)
    plain[0].train(), model.train()
    for (x, y), mix in zip(data, draws):
        rng = torch.get_rng_state()
        expected = plain[3](x, y, *mix)
        plain[1].zero_grad(set_to_none=True)
        plain[2].step()
        torch.set_rng_state(rng)
        got = step(x, y, *graph_inputs(mix))
        scheduler.step()
        assert torch.equal(got, expected)
        assert all(torch.equal(a, b) for a, b in zip(state_of(*graphed[:2]), state_of(*plain[:2]), strict=True))


def test_mixup_draws_nothing_without_mixup():
    """alpha 0: no draws (the generators untouched), nothing added to the graph's inputs."""
    rng = torch.get_rng_state()
    assert mixup_draws(0.0, torch.zeros(8, dtype=torch.long)) == () and graph_inputs(()) == ()
    assert torch.equal(torch.get_rng_state(), rng)




@pytest.fixture
def deterministic_cudnn():
    """cuDNN's deterministic algorithms for a comparison of two GPU runs to float tolerance: otherwise a convolution's
    weight gradient may differ in its last bits between runs, and AdamW turns a near-zero gradient's sign into a whole
    step of the learning rate (an H100, 2026-11-28: the same losses, weights apart by more than 1e-3)."""
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@gpu
def test_captured_graph_on_the_gpu_gives_the_plain_updates(deterministic_cudnn):
    """On a GPU the replayed graph trains as the plain step does: the same losses and weights after 5 updates (to
    float tolerance: without dropout, whose draws a graph takes from the generator differently), and the learning
    rate the schedule gives."""
    data = batches(6, "cuda")
    plain, graphed = setup(0, "cuda", dropout=0.0), setup(0, "cuda", dropout=0.0)
    model, optimizer, scheduler, update = graphed
    step = GraphedStep(update, data[0], model, optimizer, capture=True)
    for x, y in data:
        expected = plain[3](x, y)
        plain[1].zero_grad(set_to_none=True)
        plain[2].step()
        got = step(x, y)
        scheduler.step()
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(model.parameters(), plain[0].parameters()))
    assert float(optimizer.param_groups[0]["lr"]) == pytest.approx(float(plain[2].get_last_lr()[0]))


@gpu
def test_graphed_updates_make_no_host_sync_on_the_gpu():
    """A replay, the batch's copies and the schedule's in-place update never wait for the GPU."""
    data = batches(4, "cuda")
    model, optimizer, scheduler, update = setup(0, "cuda")
    step = GraphedStep(update, data[0], model, optimizer, capture=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = []
        for x, y in data:
            losses.append(step(x, y).clone())
            scheduler.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(torch.isfinite(loss) for loss in losses)


@gpu
def test_captured_graph_with_mixup_on_the_gpu_gives_the_plain_updates_without_host_sync(deterministic_cudnn):
    """Mixup's draws reach the replayed graph as inputs: the same losses and weights as the plain step given the same
    draws (float tolerance), and neither the draws' copies nor the replays wait for the GPU."""
    data = batches(5, "cuda")
    plain, graphed = setup(0, "cuda", dropout=0.0), setup(0, "cuda", dropout=0.0)
    model, optimizer, scheduler, update = graphed
    draws = [mixup_draws(0.2, y) for _, y in data]
    step = GraphedStep(update, (*data[0], *graph_inputs(draws[0])), model, optimizer, capture=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = []
        for (x, y), mix in zip(data, draws):
            got.append(step(x, y, *graph_inputs(mix)).clone())
            scheduler.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for (x, y), mix, loss in zip(data, draws, got):
        expected = plain[3](x, y, *mix)
        plain[1].zero_grad(set_to_none=True)
        plain[2].step()
        assert torch.allclose(loss, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(model.parameters(), plain[0].parameters()))
