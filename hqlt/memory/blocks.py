"""Building blocks shared by the transformer-style cores (DESIGN §3, Block): no biases anywhere."""

from __future__ import annotations

from torch import Tensor, nn

from hqlt import kernels

NORM_EPS = 1e-6
FEED_FORWARD_EXPANSION = 4


class RMSNorm(nn.RMSNorm):
    """RMSNorm over the last dim with a learned scale and no bias, through `hqlt.kernels.rms_norm`
    (`backend` picks its implementation); the parameters and state dict of `nn.RMSNorm`."""

    def __init__(self, dim: int, backend: str | None = None) -> None:
        super().__init__(dim, eps=NORM_EPS)
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        """x: `[..., dim]` -> `[..., dim]`."""
        return kernels.rms_norm(x, self.weight, self.eps, backend=self.backend)


class FeedForwardBlock(nn.Module):
    """Pre-norm residual SwiGLU: h + dropout(W_down(SiLU(W_gate n) * W_up n)) with n = RMSNorm(h).
    `backend` picks the implementations of its norm and gating ops (`hqlt.kernels`)."""

    def __init__(self, dim: int, dropout: float = 0.0, backend: str | None = None) -> None:
        super().__init__()
        self.backend = backend
        hidden = FEED_FORWARD_EXPANSION * dim
        self.norm = RMSNorm(dim, backend)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor) -> Tensor:
        """h: `[B, T, dim]` -> `[B, T, dim]`."""
        gated = kernels.swiglu(self.gate_up(self.norm(h)), backend=self.backend)
        return h + self.dropout(self.down(gated))
