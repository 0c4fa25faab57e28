"""Batch normalization while fine-tuning a network whose BatchNorm was folded into its convolutions.

A trimmed network has no BatchNorm left (trim folds it into the convolutions before trimming), and a deep
convolutional network without it trains poorly, the more so on little data. `renormalized(model)` puts a
normalization after every nn.Conv2d for the length of a `with` block and folds it back into the convolution on
leaving (also on errors and Ctrl-C), so the model keeps its modules, its parameter objects and its zeros.
Channel c of a convolution's output z becomes (Ioffe and Szegedy 2015)

    gamma_c (z_c - m_c) / sqrt(v_c + EPS) + beta_c     where the channel's bias b_c is a free parameter,
    gamma_c z_c / sqrt(v_c + EPS)                      where b_c is a kept zero (or the layer has no bias),

with m_c the channel's mean (0 in the second form) and v_c its mean square about m_c: over the batch in training
mode (the running averages follow them with MOMENTUM), the running averages in eval mode. Folded with the running
averages and s_c = gamma_c / sqrt(v_c + EPS): W_c <- s_c W_c, b_c <- s_c (b_c - m_c) + beta_c, so every zero weight
stays zero, and so does every zero bias (the second form). gamma and beta start at the first training batch's
spread and mean, so the first step trains the function the model computes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

#: Added to the spread before its square root, as nn.BatchNorm2d's eps.
EPS = 1e-5
#: The running averages' step toward each batch's statistics, as nn.BatchNorm2d's momentum.
MOMENTUM = 0.1


class ChannelNorm(nn.Module):
    """The normalization of one convolution's output channels (module docstring); `centered` marks the channels
    whose bias is free."""

    def __init__(self, centered: torch.Tensor):
        super().__init__()
        channels = len(centered)
        self.register_buffer("centered", centered.float())
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("spread", torch.ones(channels))
        self.gamma = nn.Parameter(torch.full((channels,), (1 + EPS) ** 0.5))  # the identity until it starts
        self.beta = nn.Parameter(torch.zeros(channels))
        self.started = False

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = z.mean((0, 2, 3)) * self.centered
            spread = (z - mean[:, None, None]).square().mean((0, 2, 3))
            with torch.no_grad():
                if not self.started:
                    self.gamma.copy_(spread.add(EPS).sqrt())
                    self.beta.copy_(mean)
                    self.mean.copy_(mean)
                    self.spread.copy_(spread)
                    self.started = True
                self.mean.lerp_(mean, MOMENTUM)
                self.spread.lerp_(spread, MOMENTUM)
        else:
            mean, spread = self.mean, self.spread
        scale = self.gamma / spread.add(EPS).sqrt()
        shift = self.beta * self.centered - mean * scale
        return z * scale[:, None, None] + shift[:, None, None]

    @torch.no_grad()
    def fold_into(self, conv: nn.Conv2d) -> None:
        """conv's weights and bias replaced by those of conv followed by this normalization in eval mode."""
        scale = self.gamma / self.spread.add(EPS).sqrt()
        conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, *[1] * (conv.weight.dim() - 1)))
        if conv.bias is not None:
            conv.bias.copy_(scale * (conv.bias - self.mean) + self.beta * self.centered)


@contextlib.contextmanager
def renormalized(model: nn.Module):
    """Within the block, every nn.Conv2d of `model` is followed by a ChannelNorm (module docstring); yields them as
    an nn.ModuleList (their parameters for the optimizer, their state to keep). On leaving, each is folded into its
    convolution and removed."""
    norms, hooks = {}, []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            weight = module.weight
            centered = (module.bias != 0 if module.bias is not None
                        else torch.zeros(module.out_channels, dtype=torch.bool, device=weight.device))
            norm = ChannelNorm(centered.detach()).to(device=weight.device, dtype=weight.dtype)
            norms[module] = norm
            hooks.append(module.register_forward_hook(
                lambda conv, inputs, output: norms[conv].train(conv.training)(output)))
    try:
        yield nn.ModuleList(norms.values())
    finally:
        for hook in hooks:
            hook.remove()
        for conv, norm in norms.items():
            if norm.started:
                norm.fold_into(conv)

