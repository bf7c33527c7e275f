"""Every registered model: output shape, finite gradients, can overfit a tiny batch; the hybrid's notebook size."""
import pytest
import torch
import torch.nn.functional as F

from ravdess_dist.models import create_model, list_models

torch.set_num_threads(2)
SIZES = [(40, 282), (64, 301), (128, 301)]  # notebook MFCC, 64 and 128 mel bands at 3 s


def test_registry_lists_the_models_and_rejects_unknown():
    """'cnn', 'crnn', 'hybrid' and 'resnet' are registered; an unknown name is an error naming the known ones."""
    assert {"cnn", "crnn", "hybrid", "resnet"} <= set(list_models())
    with pytest.raises(ValueError, match="known models: .*cnn.*crnn.*hybrid.*resnet"):
        create_model("vgg", 8, 64, 301)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("num_classes", [7, 8])
@pytest.mark.parametrize("n_bins, n_frames", SIZES)
def test_forward_shape_and_finite_gradients(name, num_classes, n_bins, n_frames):
    """[B, 1, F, T] -> [B, num_classes]; every parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = create_model(name, num_classes, n_bins, n_frames)
    logits = model(torch.randn(2, 1, n_bins, n_frames))
    assert logits.shape == (2, num_classes)
    F.cross_entropy(logits, torch.tensor([0, num_classes - 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", list_models())
def test_embed_then_classify_is_the_forward(name):
    """Every model splits into embed (an utterance embedding of embed_dim) and classify: their composition is forward
    (what the speaker classifier of models.adversary hangs between)."""
    torch.manual_seed(0)
    model = create_model(name, 8, 64, 101).eval()
    x = torch.randn(3, 1, 64, 101)
    with torch.no_grad():
        embedding = model.embed(x)
        assert embedding.shape == (3, model.embed_dim)
        assert torch.equal(model.classify(embedding), model(x))


@pytest.mark.parametrize("name", list_models())
def test_bf16_autocast_forward_is_finite(name):
    """The models run under bf16 autocast (the GPU training mode) without overflow."""
    model = create_model(name, 8, 64, 101).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        logits = model(torch.randn(2, 1, 64, 101))
    assert logits.shape == (2, 8) and torch.isfinite(logits.float()).all()


@pytest.mark.parametrize("name", list_models())
def test_overfits_a_small_fixed_batch(name):
    """16 random inputs with random labels reach 100 % accuracy (eval mode) within 150 Adam steps."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 32, 32), torch.randint(0, 8, (16,))
    model = create_model(name, 8, 32, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(150):
        model.train()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                if (model(x).argmax(1) == y).all():
                    break
    model.eval()
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean().item() == 1.0


def test_hybrid_has_the_notebook_parameter_count():
    """40 MFCC x 282 frames, 8 classes: exactly the original notebook's 248,488 parameters."""
    model = create_model("hybrid", 8, 40, 282)
    assert sum(p.numel() for p in model.parameters()) == 248_488


def test_hybrid_refuses_bins_not_divisible_by_heads_and_tiny_inputs():
    """d_model = n_bins must split over 4 heads; the conv branches need 32x32."""
    with pytest.raises(ValueError, match="divisible"):
        create_model("hybrid", 8, 42, 282)
    with pytest.raises(ValueError, match="32x32"):
        create_model("hybrid", 8, 40, 20)


def test_cnn_refuses_inputs_below_16x16():
    """Four 2x2 pools need at least 16 bins and frames."""
    with pytest.raises(ValueError, match="16x16"):
        create_model("cnn", 8, 8, 301)


def test_crnn_refuses_inputs_too_small_for_its_pools():
    """Four frequency halvings need 16 bins, two time halvings 4 frames."""
    with pytest.raises(ValueError, match="16x4"):
        create_model("crnn", 8, 8, 301)
    with pytest.raises(ValueError, match="16x4"):
        create_model("crnn", 8, 64, 3)


def test_crnn_runs_its_recurrence_in_float32_under_bf16_autocast():
    """The GRU's output stays float32 while the convolutions run in bf16 (a recurrence compounds rounding)."""
    model = create_model("crnn", 8, 64, 101).eval()
    dtypes = {}
    model.convs.register_forward_hook(lambda m, i, out: dtypes.update(convs=out.dtype))
    model.rnn.register_forward_hook(lambda m, i, out: dtypes.update(rnn=out[0].dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        model(torch.randn(2, 1, 64, 101))
    assert dtypes == {"convs": torch.bfloat16, "rnn": torch.float32}
