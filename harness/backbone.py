"""The fixed backbone every candidate is trained in, so that two runs differ only in the mixer.

Embedding -> n_layers x pre-norm residual blocks (short conv + mixer, then a GELU MLP) -> final
norm -> LM head.

The short causal depthwise convolution before every mixer (kernel ``short_conv``, 0 = none) is part
of the backbone, identical for every candidate, as Mamba, GLA, DeltaNet and Based all carry one: it
hands the mixer the last few tokens, so on a CPU-sized budget the comparison is about what the mixer
does over long range (recall, state tracking), not about how fast a model discovers a
previous-token head. It is initialised to the identity (pass-through).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness.mixer import Mixer


class ShortConv(nn.Module):
    """Causal depthwise conv over time: ``y_t = sum_{i<k} w_i * x_{t-i}``, identity at init."""

    def __init__(self, d_model: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(d_model, d_model, kernel, groups=d_model, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, -1] = 1.0

    def forward(self, x: Tensor) -> Tensor:
        h = nn.functional.pad(x.transpose(1, 2), (self.kernel - 1, 0))
        return self.conv(h).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, mlp_ratio: int, short_conv: int = 0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.conv = ShortConv(d_model, short_conv) if short_conv > 0 else nn.Identity()
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.conv(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        mlp_ratio: int,
        make_mixer: Callable[[], Mixer],
        short_conv: int = 0,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(
            Block(make_mixer(), d_model, mlp_ratio, short_conv) for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def mixers(self) -> list[Mixer]:
        return [b.mixer for b in self.blocks]


def set_training_progress(model: SequenceModel, frac: float) -> None:
    """Tell every mixer how far along training is (``Mixer.set_training_progress``: the tropical
    temperature anneals with it)."""
    for mixer in model.mixers():
        mixer.set_training_progress(float(frac))


@torch.no_grad()
def count_correct(logits: Tensor, targets: Tensor, ignore: int) -> tuple[int, int, int, int]:
    """(correct tokens, scored tokens, correct sequences, sequences with a scored token)."""
    mask = targets != ignore
    correct = (logits.argmax(-1) == targets) & mask
    tok_c, tok_n = int(correct.sum()), int(mask.sum())
    has = mask.any(-1)
    seq_ok = (correct | ~mask).all(-1) & has
    return tok_c, tok_n, int(seq_ok.sum()), int(has.sum())
