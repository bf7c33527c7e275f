"""ravdess_dist.models.adversary: gradient reversal, the speaker-adversarial wrapper and its loss."""
import pytest
import torch
import torch.nn.functional as F

from ravdess_dist.models import create_model, list_models
from ravdess_dist.models.adversary import AdversarialLoss, GradientReversal, SpeakerAdversarial, emotion_model

torch.set_num_threads(2)


def test_gradient_reversal_is_the_identity_forward_and_negates_and_scales_backward():
    """Forward leaves X alone; backward hands on -WEIGHT times the incoming gradient."""
    x = torch.randn(4, 5, requires_grad=True)
    y = GradientReversal.apply(x, 0.3)
    assert torch.equal(y, x)
    upstream = torch.randn(4, 5)
    y.backward(upstream)
    assert torch.allclose(x.grad, -0.3 * upstream)


@pytest.mark.parametrize("name", list_models())
def test_training_returns_both_heads_and_evaluation_the_plain_model(name):
    """Training mode: (emotion logits, speaker logits); eval mode: exactly the wrapped model's logits."""
    torch.manual_seed(0)
    model = create_model(name, 8, 64, 101)
    wrapped = SpeakerAdversarial(model, speakers=20, weight=0.5)
    x = torch.randn(3, 1, 64, 101)
    logits, speakers = wrapped.train()(x)
    assert logits.shape == (3, 8) and speakers.shape == (3, 20)
    with torch.no_grad():
        assert torch.equal(wrapped.eval()(x), model.eval()(x))
    assert emotion_model(wrapped) is model and emotion_model(model) is model


def test_the_encoder_gets_the_speaker_loss_reversed_and_the_speaker_head_gets_it_straight():
    """The speaker loss's gradient on the encoder's weights is -WEIGHT times what the same loss gives without the
    reversal, while the speaker classifier's own gradient is unchanged: it learns to name the speaker, the encoder
    learns to hide it."""
    torch.manual_seed(0)
    model = create_model("resnet", 8, 64, 101).eval()  # eval: BatchNorm's batch statistics would differ per call
    wrapped = SpeakerAdversarial(model, speakers=6, weight=0.25)
    x, speakers = torch.randn(4, 1, 64, 101), torch.tensor([0, 1, 2, 5])
    embedding = model.embed(x)
    F.cross_entropy(wrapped.speaker_head(embedding), speakers).backward()
    straight = {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}
    wrapped.zero_grad()
    embedding = model.embed(x)
    F.cross_entropy(wrapped.speaker_head(GradientReversal.apply(embedding, 0.25)), speakers).backward()
    for n, p in wrapped.named_parameters():
        if n not in straight:
            continue
        expected = straight[n] if n.startswith("speaker_head.") else -0.25 * straight[n]
        assert torch.allclose(p.grad, expected, atol=1e-6), n
    assert any(n.startswith("model.") for n in straight) and any(n.startswith("speaker_head.") for n in straight)


def test_loss_adds_the_speaker_cross_entropy_to_the_emotion_loss():
    """[B, 2] targets: the emotion loss (its label smoothing kept) on column 0 plus the speakers' cross-entropy."""
    emotion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    logits, speaker_logits = torch.randn(5, 8), torch.randn(5, 3)
    targets = torch.tensor([[0, 0], [1, 2], [7, 1], [3, 0], [2, 2]])
    expected = emotion(logits, targets[:, 0]) + F.cross_entropy(speaker_logits, targets[:, 1])
    assert torch.allclose(AdversarialLoss(emotion)((logits, speaker_logits), targets), expected)


def test_bad_settings_are_refused():
    """A model without embed/classify, fewer than two speakers or a weight of 0 is an error that names the problem."""
    with pytest.raises(ValueError, match="embed\\(\\) and classify\\(\\).*Linear"):
        SpeakerAdversarial(torch.nn.Linear(3, 2), speakers=4, weight=0.5)
    model = create_model("cnn", 8, 64, 101)
    with pytest.raises(ValueError, match=">= 2 training speakers"):
        SpeakerAdversarial(model, speakers=1, weight=0.5)
    with pytest.raises(ValueError, match="weight > 0"):
        SpeakerAdversarial(model, speakers=4, weight=0.0)
