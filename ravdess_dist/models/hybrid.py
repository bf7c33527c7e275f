"""The original notebook's "parallel is all you want" model: two CNN branches and a Transformer encoder side by side.

At the notebook's input (40 MFCC x 282 frames, 8 classes) it has exactly 248,488 parameters; other input sizes
change only the classifier width (computed from the input shape) and the Transformer's d_model (= feature bins).
"""
import torch
from torch import Tensor, nn

from ravdess_dist.models.registry import register_model

CONV_POOLS = (2, 4, 4)  # max-pool size after each conv layer of a branch
CONV_CHANNELS = (16, 32, 64)


def conv_branch(dropout: float) -> nn.Sequential:
    """Conv3x3-BN-ReLU-MaxPool-Dropout three times (1->16->32->64 channels, pools 2, 4, 4), flattened."""
    layers, c_in = [], 1
    for c_out, pool in zip(CONV_CHANNELS, CONV_POOLS):
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(),
                   nn.MaxPool2d(pool, pool), nn.Dropout(dropout)]
        c_in = c_out
    return nn.Sequential(*layers, nn.Flatten())


def pooled(size: int) -> int:
    """Length of an axis after the branch's max-pools (each floors)."""
    for pool in CONV_POOLS:
        size //= pool
    return size


@register_model("hybrid")
class Hybrid(nn.Module):
    """Features [B, 1, F, T] -> logits [B, num_classes]: [conv branch 1, conv branch 2, Transformer] -> one linear layer."""

    def __init__(self, num_classes: int, n_bins: int, n_frames: int, nhead: int = 4, num_layers: int = 4,
                 conv_dropout: float = 0.3, transformer_dropout: float = 0.4):
        """Sizes the classifier from the input shape; the Transformer's d_model is the number of feature bins."""
        super().__init__()
        if n_bins % nhead:
            raise ValueError(f"hybrid: d_model = n_bins = {n_bins} must be divisible by nhead = {nhead}")
        if pooled(n_bins) < 1 or pooled(n_frames) < 1:
            raise ValueError(f"hybrid needs inputs of at least 32x32 (its pools shrink each axis 32-fold), "
                             f"got {n_bins}x{n_frames}")
        self.conv1 = conv_branch(conv_dropout)
        self.conv2 = conv_branch(conv_dropout)
        self.time_pool = nn.MaxPool2d(kernel_size=(1, 4), stride=(1, 4))
        layer = nn.TransformerEncoderLayer(d_model=n_bins, nhead=nhead, dim_feedforward=512,
                                           dropout=transformer_dropout, activation="relu", batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers=num_layers)
        conv_out = CONV_CHANNELS[-1] * pooled(n_bins) * pooled(n_frames)
        self.classifier = nn.Linear(2 * conv_out + n_bins, num_classes)

    @property
    def embed_dim(self) -> int:
        """Width of the utterance embedding: both conv branches' flattened maps and the Transformer's summary."""
        return self.classifier.in_features

    def embed(self, x: Tensor) -> Tensor:
        """The utterance embedding [B, embed_dim]: the branches' outputs side by side."""
        frames = self.time_pool(x).squeeze(1).transpose(1, 2)  # [B, T/4, F]: a sequence of F-dim frames
        summary = self.transformer(frames).mean(dim=1)
        return torch.cat([self.conv1(x), self.conv2(x), summary], dim=1)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits of utterance embeddings (the one linear layer)."""
        return self.classifier(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of features."""
        return self.classify(self.embed(x))
