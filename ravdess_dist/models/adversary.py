"""Speaker-adversarial training (`speaker_adversarial` > 0): a speaker classifier behind a gradient reversal layer.

The task is speaker-independent: a test actor's voice is never heard in training, so whatever the embedding keeps of
*who* speaks is at best useless there. Domain-adversarial training (Ganin & Lempitsky 2015, "Unsupervised domain
adaptation by backpropagation"; used for speaker-invariant emotion features by e.g. Abdelwahab & Busso 2018) adds a
classifier of the training actors on the model's utterance embedding. It learns to name the speaker as well as it
can, while the gradient that reaches the embedding is reversed and scaled by WEIGHT: the encoder is pushed towards
features from which the speaker cannot be told. Only training actors' labels are used (no test-speaker audio).

At evaluation (and in every saved checkpoint's `model`) the wrapped model is the plain emotion model: the speaker
classifier exists only while training.
"""
import torch
from torch import Tensor, nn
from torch.nn import functional as F


class GradientReversal(torch.autograd.Function):
    """Identity forward; the gradient multiplied by -WEIGHT backward."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: float) -> Tensor:
        """X unchanged (a view, so autograd records this node)."""
        ctx.weight = weight
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        """The reversed, scaled gradient for X; none for WEIGHT."""
        return -ctx.weight * grad, None


class SpeakerAdversarial(nn.Module):
    """MODEL (any registered model: `embed` -> [B, embed_dim], `classify` -> logits) plus a speaker classifier of
    SPEAKERS classes on the reversed embedding. Training mode returns (emotion logits, speaker logits); eval mode the
    emotion logits alone, as the plain model does."""

    def __init__(self, model: nn.Module, speakers: int, weight: float, hidden: int = 256):
        """A two-layer speaker classifier of HIDDEN units (a stronger adversary than a linear one) on MODEL's embedding."""
        super().__init__()
        if not hasattr(model, "embed") or not hasattr(model, "classify"):
            raise ValueError(f"speaker_adversarial needs a model with embed() and classify(): "
                             f"{type(model).__name__} has not")
        if speakers < 2 or weight <= 0:
            raise ValueError(f"speaker_adversarial needs >= 2 training speakers and a weight > 0, "
                             f"got {speakers} and {weight}")
        self.model, self.weight = model, weight
        self.speaker_head = nn.Sequential(nn.Linear(model.embed_dim, hidden), nn.ReLU(inplace=True),
                                          nn.Linear(hidden, speakers))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Emotion logits, and in training the speaker logits of the reversed embedding."""
        if not self.training:
            return self.model(x)
        embedding = self.model.embed(x)
        return self.model.classify(embedding), self.speaker_head(GradientReversal.apply(embedding, self.weight))


class AdversarialLoss(nn.Module):
    """EMOTION_LOSS of the emotion logits plus the speakers' cross-entropy; targets are [B, 2] (emotion, speaker)."""

    def __init__(self, emotion_loss: nn.Module):
        """Wraps the run's emotion loss (its class weights and label smoothing stay)."""
        super().__init__()
        self.emotion_loss = emotion_loss

    def forward(self, outputs: tuple[Tensor, Tensor], targets: Tensor) -> Tensor:
        """The summed loss: the speaker classifier minimises its part, the reversal makes the encoder fight it."""
        logits, speaker_logits = outputs
        return self.emotion_loss(logits, targets[:, 0]) + F.cross_entropy(speaker_logits.float(), targets[:, 1])


def emotion_model(model: nn.Module) -> nn.Module:
    """The emotion model inside MODEL: the wrapped one of a SpeakerAdversarial, else MODEL itself."""
    return model.model if isinstance(model, SpeakerAdversarial) else model
