"""A plain 2-D CNN baseline: four conv blocks, global average pooling, a linear classifier."""
from torch import Tensor, nn

from ravdess_dist.models.registry import register_model


def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv3x3-BN-ReLU then a 2x2 max-pool (halves both axes)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


@register_model("cnn")
class CNN(nn.Module):
    """Features [B, 1, F, T] -> logits [B, num_classes]; global pooling makes it work for any input of 16x16 or more."""

    def __init__(self, num_classes: int, n_bins: int, n_frames: int,
                 channels: tuple[int, ...] = (16, 32, 64, 128), dropout: float = 0.3):
        """Blocks of the given widths; the input must survive one 2x2 pool per block."""
        super().__init__()
        smallest = 2 ** len(channels)
        if min(n_bins, n_frames) < smallest:
            raise ValueError(f"cnn needs inputs of at least {smallest}x{smallest}, got {n_bins}x{n_frames}")
        widths = (1, *channels)
        self.features = nn.Sequential(*(conv_block(a, b) for a, b in zip(widths, widths[1:])))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(channels[-1], num_classes))

    @property
    def embed_dim(self) -> int:
        """Width of the utterance embedding: the last block's channels."""
        return self.head[-1].in_features

    def embed(self, x: Tensor) -> Tensor:
        """The utterance embedding [B, embed_dim]: the last block's channels averaged over bands and frames."""
        return self.head[:2](self.features(x))

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits of utterance embeddings (dropout, linear)."""
        return self.head[2:](embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of features."""
        return self.classify(self.embed(x))
