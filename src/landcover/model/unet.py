"""U-Net = ResNet encoder + U-Net decoder + segmentation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .decoder import DECODER_CHANNELS, UNetDecoder
from .encoder import ResNetEncoder


class UNet(nn.Module):
    """Pixel classifier returning logits ``(N, num_classes, H, W)`` for input ``(N, in_channels, H, W)``.

    Inputs of any size work: they are padded (reflect) to a multiple of 32 and the logits cropped back.
    Index 0 of the classes is the NoData/background class, as in arcgis.learn.

    ``input_skip`` (default): the last decoder block also reads the input bands at full resolution (as the
    "last cross" of fastai's U-Net, arcgis.learn's). Without it every skip is at 1/2 or coarser and a class
    one or two pixels wide (a stream or road in 30 m imagery) is smeared over its neighbours. Models saved
    before it existed have none: :func:`has_input_skip` tells from their weights.
    """

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet34",
                 decoder_channels: tuple[int, ...] = DECODER_CHANNELS, input_skip: bool = True):
        super().__init__()
        self.encoder = ResNetEncoder(backbone, in_channels, return_input=input_skip)
        self.decoder = UNetDecoder(self.encoder.out_channels, decoder_channels)
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 3, padding=1)
        self.in_channels, self.num_classes, self.backbone = in_channels, num_classes, backbone
        self.input_skip = bool(input_skip)

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


#: the last decoder block's first convolution: its input channels tell whether the model has an input skip
LAST_BLOCK_KEY = "decoder.blocks.4.conv1.0.weight"


def has_input_skip(state: dict[str, torch.Tensor], decoder_channels: tuple[int, ...] = DECODER_CHANNELS) -> bool:
    """Whether the U-Net weights ``state`` were trained with :class:`UNet`'s input skip: its last decoder block
    reads more channels than the block before it gives (the input bands)."""
    weight = state.get(LAST_BLOCK_KEY)
    return weight is not None and int(weight.shape[1]) > decoder_channels[-2]
