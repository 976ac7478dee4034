"""fastai v1's ``DynamicUnet`` on a ResNet, in plain torch, with fastai's state-dict keys and shapes.

arcgis.learn's ``UnetClassifier`` is fastai v1's ``unet_learner(data, arch, bottle=True, last_cross=True)``
(``norm_type=None``, no blur, no self-attention): a ``SequentialEx`` whose ``layers`` are

====  ==================================================================================================
0     the ResNet body: ``nn.Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3, layer4)``
1, 2  BatchNorm and ReLU on the bottleneck
3     middle: two 3x3 conv+ReLU (channels x2, then back)
4-7   UnetBlocks reading the outputs of ``layer3``, ``layer2``, ``layer1`` and the stem's ReLU
8     PixelShuffle upsampling to the input size
(9)   only for an odd training chip size: fastai's parameter-free resize to that size (shifts what follows)
9     MergeLayer: concatenate the input image ("last cross")
10    a residual block (bottleneck of half the channels with ``bottle=True``)
11    the 1x1 classifier convolution
====  ==================================================================================================

fastai gets the skip connections with forward hooks; here the encoder returns them. The encoder is our
torchvision-named :class:`~landcover.model.encoder.ResNetEncoder`, its children re-assembled as fastai's body,
so ``layers.0.4.0.conv1.weight`` is ``layer1[0].conv1.weight`` as in torchvision. Class index 0 of the output
is NoData/background, as in arcgis.learn.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import LandcoverError
from .encoder import ResNetEncoder

#: indices in fastai's ResNet body whose outputs feed the UnetBlocks (stem ReLU, layer1, layer2, layer3)
_SKIPS = (2, 4, 5, 6)


def _conv_relu(ni: int, nf: int, ks: int = 3) -> nn.Sequential:
    # fastai's conv_layer with norm_type=None: a biased convolution and an in-place ReLU, no batch norm
    return nn.Sequential(nn.Conv2d(ni, nf, ks, padding=(ks - 1) // 2, bias=True), nn.ReLU(inplace=True))


class PixelShuffleUp(nn.Module):
    """fastai's ``PixelShuffle_ICNR`` (norm_type=None, no blur): 1x1 conv to 4x channels, ReLU, shuffle."""

    def __init__(self, ni: int, nf: int | None = None):
        super().__init__()
        nf = ni if nf is None else nf
        self.conv = nn.Sequential(nn.Conv2d(ni, nf * 4, 1, bias=True))
        self.relu = nn.ReLU(inplace=True)
        self.shuf = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuf(self.relu(self.conv(x)))


class UnetBlock(nn.Module):
    """fastai's ``UnetBlock``: upsample, batch-normed skip, concatenate, ReLU, two conv+ReLU."""

    def __init__(self, up_in_c: int, x_in_c: int, final_div: bool = True):
        super().__init__()
        self.shuf = PixelShuffleUp(up_in_c, up_in_c // 2)
        self.bn = nn.BatchNorm2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        nf = ni if final_div else ni // 2
        self.conv1 = _conv_relu(ni, nf)
        self.conv2 = _conv_relu(nf, nf)
        self.relu = nn.ReLU()
        self.out_channels = nf

    def forward(self, up_in: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.shuf(up_in)
        if up.shape[-2:] != skip.shape[-2:]:  # odd sizes: fastai resizes the upsampled map to the skip's
            up = F.interpolate(up, skip.shape[-2:], mode="nearest")
        return self.conv2(self.conv1(self.relu(torch.cat([up, self.bn(skip)], dim=1))))


class ResBlock(nn.Module):
    """fastai's ``res_block(nf, bottle=...)`` with norm_type=None: ``x + conv(conv(x))``."""

    def __init__(self, nf: int, bottle: bool = True):
        super().__init__()
        inner = nf // 2 if bottle else nf
        self.layers = nn.ModuleList([_conv_relu(nf, inner), _conv_relu(inner, nf)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers[1](self.layers[0](x))


class _Encoder(nn.Module):
    """The body, returning the input image and the features the decoder reads (input, stem .. layer4)."""

    def __init__(self, body: nn.Sequential):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = [x]
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in _SKIPS:
                features.append(x)
        features.append(x)
        return features


class _Decoder(nn.Module):
    """Everything between the body and the classifier, over the encoder's feature list."""

    def __init__(self, layers: nn.ModuleList, res_index: int):
        super().__init__()
        self.bn, self.middle = layers[1], layers[3]
        self.blocks = nn.ModuleList(layers[4:8])
        self.up, self.res = layers[8], layers[res_index]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        image, skips, x = features[0], features[1:5], features[5]
        x = self.middle(F.relu(self.bn(x)))
        for block, skip in zip(self.blocks, skips[::-1], strict=True):
            x = block(x, skip)
        x = self.up(x)
        if x.shape[-2:] != image.shape[-2:]:  # odd input size: the stem rounded up (fastai's resize layer)
            x = F.interpolate(x, image.shape[-2:], mode="nearest")
        return self.res(torch.cat([x, image], dim=1))


class DynamicUnet(nn.Module):
    """fastai v1 ``DynamicUnet`` on a ResNet: logits ``(N, num_classes, H, W)`` for ``(N, in_channels, H, W)``.

    ``bottle``: the final residual block's bottleneck (arcgis.learn: True). ``resize_slot``: the model was
    trained on an odd chip size, where fastai inserts a parameter-free resize layer at index 9.
    Any even input size works (odd sizes are resized at the end, as fastai does for its training size).
    ``encoder``/``decoder``/``head`` are views on the same layers for code that runs the parts (inference
    backends); they are not registered, so the state dict holds fastai's keys only.
    """

    def __init__(self, in_channels: int, num_classes: int, backbone: str = "resnet34", bottle: bool = True,
                 resize_slot: bool = False):
        super().__init__()
        enc = ResNetEncoder(backbone, in_channels)
        body = nn.Sequential(enc.conv1, enc.bn1, enc.relu, enc.maxpool, enc.layer1, enc.layer2, enc.layer3,
                             enc.layer4)
        chans = enc.out_channels  # stem, layer1 .. layer4
        ni = chans[-1]
        layers: list[nn.Module] = [body, nn.BatchNorm2d(ni), nn.ReLU(),
                                   nn.Sequential(_conv_relu(ni, ni * 2), _conv_relu(ni * 2, ni))]
        x = ni
        for i, skip in enumerate(chans[-2::-1]):
            block = UnetBlock(x, skip, final_div=i != 3)
            layers.append(block)
            x = block.out_channels
        layers.append(PixelShuffleUp(x))
        if resize_slot:
            layers.append(nn.Identity())  # fastai's Lambda(F.interpolate): no weights, but it takes an index
        layers.append(nn.Identity())  # fastai's MergeLayer(dense=True): the concatenation in _Decoder
        layers.append(ResBlock(x + in_channels, bottle))
        layers.append(nn.Sequential(nn.Conv2d(x + in_channels, num_classes, 1, bias=True)))
        self.layers = nn.ModuleList(layers)
        self.in_channels, self.num_classes, self.backbone = in_channels, num_classes, backbone
        self.bottle, self.resize_slot = bottle, resize_slot
        parts = (_Encoder(body), _Decoder(self.layers, len(layers) - 2), self.layers[-1])
        object.__setattr__(self, "_parts", parts)  # plain attribute: not a second path in the state dict

    @property
    def encoder(self) -> nn.Module:
        return self._parts[0]

    @property
    def decoder(self) -> nn.Module:
        return self._parts[1]

    @property
    def head(self) -> nn.Module:
        return self._parts[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """fastai's three groups for a ResNet (``_resnet_split``): body up to ``layer2``, ``layer3``+``layer4``,
        then the decoder and head (for ``lr=slice(lo, hi)``)."""
        body = self.layers[0]
        return [[p for m in body[:6] for p in m.parameters()],
                [p for m in body[6:] for p in m.parameters()],
                [p for m in self.layers[1:] for p in m.parameters()]]

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], backbone: str, where: str) -> DynamicUnet:
        """The network that ``state`` (fastai's keys) belongs to, with it loaded (strict), in eval mode."""
        try:
            in_channels = int(state["layers.0.0.weight"].shape[1])
            resize_slot = "layers.12.0.weight" in state
            res = 11 if resize_slot else 10
            num_classes = int(state[f"layers.{res + 1}.0.weight"].shape[0])
            inner = state[f"layers.{res}.layers.0.0.weight"].shape
        except (KeyError, IndexError, AttributeError):
            raise LandcoverError(f"{where}: not the weights of a fastai DynamicUnet on a ResNet (layers.0.0 .. "
                                 "layers.11 missing)") from None
        model = cls(in_channels, num_classes, backbone, bottle=inner[0] != inner[1], resize_slot=resize_slot)
        load_exactly(model, state, f"{where} ({backbone} DynamicUnet)")
        return model.eval()


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(state)`` with every key and shape checked first, failing in one line."""
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise LandcoverError(f"{where}: the weights hold a layer {key} the model does not have")
        if tuple(own[key].shape) != tuple(value.shape):
            raise LandcoverError(f"{where}: layer {key} has shape {tuple(value.shape)}, the model expects "
                                 f"{tuple(own[key].shape)}")
    missing = [k for k in own if k not in state]
    if missing:
        raise LandcoverError(f"{where}: the weights lack layer {missing[0]}")
    model.load_state_dict(state)
