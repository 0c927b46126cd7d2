"""The fixed backbone every candidate is trained in, so that two runs differ only in the mixer.

Embedding -> n_layers x pre-norm residual blocks (mixer, then a GELU MLP) -> final norm -> LM head.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from harness.mixer import Mixer


class Block(nn.Module):
    def __init__(self, mixer: Mixer, d_model: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.mixer = mixer
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model), nn.GELU(), nn.Linear(mlp_ratio * d_model, d_model)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.mixer(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class SequenceModel(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        mlp_ratio: int,
        make_mixer: Callable[[], Mixer],
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(make_mixer(), d_model, mlp_ratio) for _ in range(n_layers))
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


def set_training_progress(model: nn.Module, frac: float) -> None:
    """Tell modules that anneal with training (e.g. the tropical temperature) how far along we are."""
    for m in model.modules():
        hook = getattr(m, "set_training_progress", None)
        if callable(hook) and m is not model:
            hook(float(frac))


@torch.no_grad()
def count_correct(logits: Tensor, targets: Tensor, ignore: int) -> tuple[int, int, int, int]:
    """(correct tokens, scored tokens, correct sequences, sequences with a scored token)."""
    mask = targets != ignore
    correct = (logits.argmax(-1) == targets) & mask
    tok_c, tok_n = int(correct.sum()), int(mask.sum())
    has = mask.any(-1)
    seq_ok = (correct | ~mask).all(-1) & has
    return tok_c, tok_n, int(seq_ok.sum()), int(has.sum())
