"""U-Net = ResNet encoder + U-Net decoder + segmentation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import UNetDecoder
from .encoder import ResNetEncoder


class UNet(nn.Module):
    """Pixel classifier returning logits ``(N, num_classes, H, W)`` for input ``(N, in_channels, H, W)``.

    Inputs of any size work: they are padded (reflect) to a multiple of 32 and the logits cropped back.
    Index 0 of the classes is the NoData/background class, as in arcgis.learn.
    """

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet34",
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
        super().__init__()
        self.encoder = ResNetEncoder(backbone, in_channels)
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 3, padding=1)
        self.in_channels, self.num_classes, self.backbone = in_channels, num_classes, backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 32, (-w) % 32
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        logits = self.head(self.decoder(self.encoder(x)))
        return logits[..., :h, :w] if (ph or pw) else logits

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Six parameter groups: stem, the four encoder stages, then decoder + head (for ``lr=slice(lo, hi)``)."""
        groups = [list(stage.parameters()) for stage in self.encoder.stages()]
        groups.append(list(self.decoder.parameters()) + list(self.head.parameters()))
        return groups
