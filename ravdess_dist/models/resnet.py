"""A small ResNet with attentive statistics pooling over time (`resnet`): the stronger model of this project.

Residual 2-D blocks read the log-mel like an image (pitch and formant patterns at any position); the frequency axis
is then folded into channels and the frames are pooled by attentive statistics (ECAPA-TDNN's pooling: a learned weight
per frame and channel, then the weighted mean and standard deviation), so the utterance's loud, emotional frames count
more than its pauses. Sized to train at >= 50 clips/s on a 2-core CPU (see the README's benchmark).
"""
import torch
from torch import Tensor, nn

from ravdess_dist.models.registry import register_model


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (strided 1x1 where the shape changes) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        """A block mapping C_IN to C_OUT channels, shrinking both axes by STRIDE."""
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        """Residual output."""
        return self.relu(self.body(x) + self.shortcut(x))


class AttentiveStatsPool(nn.Module):
    """[B, C, T] -> [B, 2C]: attention-weighted mean and standard deviation over time, one weight per frame and channel."""

    def __init__(self, channels: int, hidden: int = 64):
        """A small 1x1-conv attention network over the frames."""
        super().__init__()
        self.attention = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.Tanh(), nn.Conv1d(hidden, channels, 1))

    def forward(self, h: Tensor) -> Tensor:
        """Weighted statistics; the softmax over time runs in float32 (stable under bf16 autocast)."""
        w = self.attention(h).float().softmax(dim=2)
        h = h.float()
        mean = (w * h).sum(dim=2)
        var = (w * h.square()).sum(dim=2) - mean.square()
        return torch.cat([mean, var.clamp_min(1e-6).sqrt()], dim=1)


@register_model("resnet")
class ResNetASP(nn.Module):
    """Features [B, 1, F, T] -> logits [B, num_classes]: stem, strided residual stages, band folding, ASP, linear."""

    def __init__(self, num_classes: int, n_bins: int, n_frames: int, channels: tuple[int, ...] = (16, 32, 64, 128),
                 embed: int = 192, dropout: float = 0.3):
        """Stem at CHANNELS[0], one strided residual block per further width, then an EMBED-wide frame projection."""
        super().__init__()
        shrink = 2 ** (len(channels) - 1)
        if n_bins < shrink or n_frames < shrink:
            raise ValueError(f"resnet needs inputs of at least {shrink}x{shrink}, got {n_bins}x{n_frames}")
        self.stem = nn.Sequential(nn.Conv2d(1, channels[0], 3, padding=1, bias=False), nn.BatchNorm2d(channels[0]),
                                  nn.ReLU(inplace=True))
        self.stages = nn.Sequential(*(BasicBlock(a, b, 2) for a, b in zip(channels, channels[1:])))
        bands = -(-n_bins // shrink)  # ceil: stride-2 convs with padding 1 round up
        self.frames = nn.Sequential(nn.Conv1d(channels[-1] * bands, embed, 1, bias=False), nn.BatchNorm1d(embed),
                                    nn.ReLU(inplace=True))
        self.pool = AttentiveStatsPool(embed)
        self.head = nn.Sequential(nn.BatchNorm1d(2 * embed), nn.Dropout(dropout), nn.Linear(2 * embed, num_classes))
        self.embed_dim = 2 * embed

    def embed(self, x: Tensor) -> Tensor:
        """The utterance embedding [B, embed_dim] of a batch of features: the pooled statistics."""
        h = self.stages(self.stem(x))  # [B, C, F', T']
        h = self.frames(h.flatten(1, 2))  # bands folded into channels: [B, embed, T']
        return self.pool(h)

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits of utterance embeddings."""
        return self.head(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of features."""
        return self.classify(self.embed(x))
