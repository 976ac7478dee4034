"""The U-Net decoder: upsample, concatenate the encoder skip, two 3x3 conv-BN-ReLU, five times."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: channels of the decoder's five blocks, deepest first (the last one's output feeds the head)
DECODER_CHANNELS = (256, 128, 64, 32, 16)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        self.conv1 = conv_bn_relu(cin + skip, cout)
        self.conv2 = conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class UNetDecoder(nn.Module):
    """Decoder over encoder features ``[1/2, 1/4, 1/8, 1/16, 1/32]``, or ``[1/1, 1/2, ..., 1/32]`` where the
    encoder returns its input too; returns a full-resolution feature map.

    Each block reads the next finer feature map as its skip; the last block's is the input image when there is
    one, else it has none (and sees the image only through the stride-2 stem).
    """

    def __init__(self, encoder_channels: tuple[int, ...], channels: tuple[int, ...] = DECODER_CHANNELS):
        super().__init__()
        skips = list(encoder_channels[:-1][::-1])  # 1/16, 1/8, 1/4, 1/2 (then the input, when given)
        skips += [0] * (len(channels) - len(skips))
        cins = [encoder_channels[-1], *channels[:-1]]
        self.blocks = nn.ModuleList(DecoderBlock(ci, s, co) for ci, s, co in zip(cins, skips, channels, strict=True))
        self.out_channels = channels[-1]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        skips = features[:-1][::-1]
        skips += [None] * (len(self.blocks) - len(skips))
        x = features[-1]
        for block, skip in zip(self.blocks, skips, strict=True):
            x = block(x, skip)
        return x
