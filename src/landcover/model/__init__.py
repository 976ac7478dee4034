"""The segmentation model: a ResNet encoder, a U-Net decoder and a 1x1-conv head, in plain torch.

Split as in segmentation_models_pytorch: :mod:`.encoder` (ResNet-18/34/50 with torchvision's state-dict keys),
:mod:`.decoder` (U-Net), :mod:`.unet` (the assembled model), :mod:`.pretrained` (loading ImageNet weights).
"""

from .encoder import BACKBONES, ResNetEncoder
from .pretrained import load_pretrained_encoder
from .unet import UNet, has_input_skip

__all__ = ["BACKBONES", "ResNetEncoder", "UNet", "has_input_skip", "load_pretrained_encoder"]
