"""A convolutional-recurrent network with attentive statistics pooling (`crnn`): a second strong model, unlike the resnet.

Conv blocks read the log-mel like an image but pool the frequency axis harder than time (the time axis keeps a
quarter of its frames); the bands are folded into channels and a bidirectional GRU reads the frames in order, so
the model sees how pitch and energy move through the sentence, which the resnet's pooled statistics only summarise.
The GRU's states are pooled by the resnet's attentive statistics. With the resnet's recipe unchanged it scored 0.747
on strong against the resnet's 0.720 at the same seed, and lifted the strong ensemble to 0.753 (results/crnn-strong,
results/resnet-hybrid-crnn-strong-ensemble7). The resnet's size (0.54 M parameters), 1.6x its training time on the
2-core CPU (122 clips/s per single-thread process).
"""
import torch
from torch import Tensor, nn

from ravdess_dist.models.registry import register_model
from ravdess_dist.models.resnet import AttentiveStatsPool

TIME_POOLS = 2  # the first two blocks halve the frames too; the others pool frequency only


def conv_block(c_in: int, c_out: int, pool: tuple[int, int]) -> nn.Sequential:
    """Conv3x3-BN-ReLU, then a max-pool of POOL = (frequency, time)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                         nn.MaxPool2d(pool))


@register_model("crnn")
class CRNN(nn.Module):
    """Features [B, 1, F, T] -> logits [B, num_classes]: conv blocks, band folding, BiGRU, ASP, linear."""

    def __init__(self, num_classes: int, n_bins: int, n_frames: int, channels: tuple[int, ...] = (32, 64, 128, 128),
                 embed: int = 128, hidden: int = 128, dropout: float = 0.3):
        """One conv block per entry of CHANNELS (each halves the bands), an EMBED-wide frame projection, a BiGRU of
        HIDDEN units per direction."""
        super().__init__()
        f_shrink, t_shrink = 2 ** len(channels), 2 ** min(TIME_POOLS, len(channels))
        if n_bins < f_shrink or n_frames < t_shrink:
            raise ValueError(f"crnn needs inputs of at least {f_shrink}x{t_shrink} (bins x frames), "
                             f"got {n_bins}x{n_frames}")
        widths = (1, *channels)
        self.convs = nn.Sequential(*(conv_block(a, b, (2, 2 if i < TIME_POOLS else 1))
                                     for i, (a, b) in enumerate(zip(widths, widths[1:]))))
        self.frames = nn.Sequential(nn.Conv1d(channels[-1] * (n_bins // f_shrink), embed, 1, bias=False),
                                    nn.BatchNorm1d(embed), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.rnn = nn.GRU(embed, hidden, batch_first=True, bidirectional=True)
        self.pool = AttentiveStatsPool(2 * hidden)
        self.head = nn.Sequential(nn.BatchNorm1d(4 * hidden), nn.Dropout(dropout), nn.Linear(4 * hidden, num_classes))
        self.embed_dim = 4 * hidden

    def embed(self, x: Tensor) -> Tensor:
        """The utterance embedding [B, embed_dim] of a batch of features: the GRU states' pooled statistics."""
        h = self.frames(self.convs(x).flatten(1, 2))  # bands folded into channels: [B, embed, T']
        # The GRU runs in float32 outside autocast: a recurrence compounds its rounding step by step, and bf16 buys no
        # speed for it here (40 ms per batch of 32, forward and backward, either way on the 2-core CPU).
        with torch.autocast(device_type=x.device.type, enabled=False):
            states, _ = self.rnn(h.float().transpose(1, 2).contiguous())  # [B, T', 2 * hidden]
        return self.pool(states.transpose(1, 2))

    def classify(self, embedding: Tensor) -> Tensor:
        """Logits of utterance embeddings."""
        return self.head(embedding)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of a batch of features."""
        return self.classify(self.embed(x))
