# Copyright 2017 onwards, fast.ai, Inc.
# Licensed under the Apache License, Version 2.0 (the "License"); you may not use this file except in
# compliance with the License. You may obtain a copy of the License at http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software distributed under the License is
# distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
#
# Vendored from fastai 1.0.61 (PyPI wheel fastai-1.0.61-py3-none-any.whl), the fastai v1 that arcgis.learn
# builds on, as the reference network for tests/test_arcgis_learn.py. Taken verbatim, apart from explicit
# imports instead of `from ... import *`, type annotations dropped and line wrapping:
#   fastai/core.py             ifnone, is_listy, PrePostInitMeta
#   fastai/torch_core.py       Module, children, num_children, ParameterModule, children_and_parameters,
#                              flatten_model, init_default, in_channels, one_param
#   fastai/layers.py           Lambda, NormType, batchnorm_2d, conv_layer, relu, SequentialEx, MergeLayer,
#                              res_block, sigmoid_range, SigmoidRange, icnr, PixelShuffle_ICNR, SelfAttention,
#                              conv1d
#   fastai/callbacks/hooks.py  Hook, Hooks, _hook_inner, hook_outputs, dummy_batch, dummy_eval, model_sizes
#   fastai/vision/models/unet.py  _get_sfs_idxs, UnetBlock, DynamicUnet (whole file)
#   fastai/vision/learner.py   create_body, unet_learner's DynamicUnet call (as `fastai_unet`)
# Stubbed: torchvision, which does not install here. `torchvision_resnet` builds a torchvision ResNet's
# children (conv1 .. layer4, avgpool, fc) from landcover's torchvision-named ResNetEncoder, so create_body's
# `cut=-2` keeps exactly what it keeps of torchvision's model.
"""fastai v1's DynamicUnet (the network arcgis.learn's UnetClassifier trains), for reference in tests."""

from __future__ import annotations

import functools
from enum import Enum

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm, weight_norm

from landcover.model.encoder import ResNetEncoder

# --- fastai/core.py ---------------------------------------------------------------------------------------


def ifnone(a, b):
    "`a` if `a` is not None, otherwise `b`."
    return b if a is None else a


def is_listy(x) -> bool:
    return isinstance(x, (tuple, list))


class PrePostInitMeta(type):
    "A metaclass that calls optional `__pre_init__` and `__post_init__` methods"

    def __new__(cls, name, bases, dct):
        x = super().__new__(cls, name, bases, dct)
        old_init = x.__init__

        def _pass(self):
            pass

        @functools.wraps(old_init)
        def _init(self, *args, **kwargs):
            self.__pre_init__()
            old_init(self, *args, **kwargs)
            self.__post_init__()

        x.__init__ = _init
        if not hasattr(x, '__pre_init__'):
            x.__pre_init__ = _pass
        if not hasattr(x, '__post_init__'):
            x.__post_init__ = _pass
        return x


# --- fastai/torch_core.py ---------------------------------------------------------------------------------


class Module(nn.Module, metaclass=PrePostInitMeta):
    "Same as `nn.Module`, but no need for subclasses to call `super().__init__`"

    def __pre_init__(self):
        super().__init__()

    def __init__(self):
        pass


def children(m):
    "Get children of `m`."
    return list(m.children())


def num_children(m) -> int:
    "Get number of children modules in `m`."
    return len(children(m))


class ParameterModule(Module):
    "Register a lone parameter `p` in a module."

    def __init__(self, p):
        self.val = p

    def forward(self, x):
        return x


def children_and_parameters(m):
    "Return the children of `m` and its direct parameters not registered in modules."
    children = list(m.children())
    children_p = sum([[id(p) for p in c.parameters()] for c in m.children()], [])
    for p in m.parameters():
        if id(p) not in children_p:
            children.append(ParameterModule(p))
    return children


def flatten_model(m):
    return sum(map(flatten_model, children_and_parameters(m)), []) if num_children(m) else [m]


def init_default(m, func=nn.init.kaiming_normal_):
    "Initialize `m` weights with `func` and set `bias` to 0."
    if func:
        if hasattr(m, 'weight'):
            func(m.weight)
        if hasattr(m, 'bias') and hasattr(m.bias, 'data'):
            m.bias.data.fill_(0.)
    return m


def in_channels(m):
    "Return the shape of the first weight layer in `m`."
    for l in flatten_model(m):  # noqa: E741 (fastai's name)
        if hasattr(l, 'weight'):
            return l.weight.shape[1]
    raise Exception('No weight layer')


def one_param(m):
    "Return the first parameter of `m`."
    return next(m.parameters())


# --- fastai/layers.py -------------------------------------------------------------------------------------


class Lambda(Module):
    "Create a layer that simply calls `func` with `x`"

    def __init__(self, func):
        self.func = func

    def forward(self, x):
        return self.func(x)


NormType = Enum('NormType', 'Batch BatchZero Weight Spectral')


def batchnorm_2d(nf: int, norm_type=NormType.Batch):
    "A batchnorm2d layer with `nf` features initialized depending on `norm_type`."
    bn = nn.BatchNorm2d(nf)
    with torch.no_grad():
        bn.bias.fill_(1e-3)
        bn.weight.fill_(0. if norm_type == NormType.BatchZero else 1.)
    return bn


def conv1d(ni: int, no: int, ks: int = 1, stride: int = 1, padding: int = 0, bias: bool = False):
    "Create and initialize a `nn.Conv1d` layer with spectral normalization."
    conv = nn.Conv1d(ni, no, ks, stride=stride, padding=padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight)
    if bias:
        conv.bias.data.zero_()
    return spectral_norm(conv)


class SelfAttention(Module):
    "Self attention layer for nd."

    def __init__(self, n_channels: int):
        self.query = conv1d(n_channels, n_channels // 8)
        self.key = conv1d(n_channels, n_channels // 8)
        self.value = conv1d(n_channels, n_channels)
        self.gamma = nn.Parameter(torch.tensor([0.]))

    def forward(self, x):
        size = x.size()
        x = x.view(*size[:2], -1)
        f, g, h = self.query(x), self.key(x), self.value(x)
        beta = F.softmax(torch.bmm(f.permute(0, 2, 1).contiguous(), g), dim=1)
        o = self.gamma * torch.bmm(h, beta) + x
        return o.view(*size).contiguous()


def relu(inplace: bool = False, leaky: float | None = None):
    "Return a relu activation, maybe `leaky` and `inplace`."
    return nn.LeakyReLU(inplace=inplace, negative_slope=leaky) if leaky is not None else nn.ReLU(inplace=inplace)


def conv_layer(ni: int, nf: int, ks: int = 3, stride: int = 1, padding=None, bias=None, is_1d: bool = False,
               norm_type=NormType.Batch, use_activ: bool = True, leaky=None,
               transpose: bool = False, init=nn.init.kaiming_normal_, self_attention: bool = False):
    "Create a sequence of convolutional (`ni` to `nf`), ReLU (if `use_activ`) and batchnorm (if `bn`) layers."
    if padding is None:
        padding = (ks - 1) // 2 if not transpose else 0
    bn = norm_type in (NormType.Batch, NormType.BatchZero)
    if bias is None:
        bias = not bn
    conv_func = nn.ConvTranspose2d if transpose else nn.Conv1d if is_1d else nn.Conv2d
    conv = init_default(conv_func(ni, nf, kernel_size=ks, bias=bias, stride=stride, padding=padding), init)
    if norm_type == NormType.Weight:
        conv = weight_norm(conv)
    elif norm_type == NormType.Spectral:
        conv = spectral_norm(conv)
    layers = [conv]
    if use_activ:
        layers.append(relu(True, leaky=leaky))
    if bn:
        layers.append((nn.BatchNorm1d if is_1d else nn.BatchNorm2d)(nf))
    if self_attention:
        layers.append(SelfAttention(nf))
    return nn.Sequential(*layers)


class SequentialEx(Module):
    "Like `nn.Sequential`, but with ModuleList semantics, and can access module input"

    def __init__(self, *layers):
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        res = x
        for l in self.layers:  # noqa: E741 (fastai's name)
            res.orig = x
            nres = l(res)
            # We have to remove res.orig to avoid hanging refs and therefore memory leaks
            res.orig = None
            res = nres
        return res

    def __getitem__(self, i):
        return self.layers[i]

    def append(self, l):  # noqa: E741 (fastai's name)
        return self.layers.append(l)

    def extend(self, l):  # noqa: E741 (fastai's name)
        return self.layers.extend(l)

    def insert(self, i, l):  # noqa: E741 (fastai's name)
        return self.layers.insert(i, l)


class MergeLayer(Module):
    "Merge a shortcut with the result of the module by adding them or concatenating them if `dense=True`."

    def __init__(self, dense: bool = False):
        self.dense = dense

    def forward(self, x):
        return torch.cat([x, x.orig], dim=1) if self.dense else (x + x.orig)


def res_block(nf, dense: bool = False, norm_type=NormType.Batch, bottle: bool = False, **conv_kwargs):
    "Resnet block of `nf` features. `conv_kwargs` are passed to `conv_layer`."
    norm2 = norm_type
    if not dense and (norm_type == NormType.Batch):
        norm2 = NormType.BatchZero
    nf_inner = nf // 2 if bottle else nf
    return SequentialEx(conv_layer(nf, nf_inner, norm_type=norm_type, **conv_kwargs),
                        conv_layer(nf_inner, nf, norm_type=norm2, **conv_kwargs),
                        MergeLayer(dense))


def sigmoid_range(x, low, high):
    "Sigmoid function with range `(low, high)`"
    return torch.sigmoid(x) * (high - low) + low


class SigmoidRange(Module):
    "Sigmoid module with range `(low,x_max)`"

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, x):
        return sigmoid_range(x, self.low, self.high)


def icnr(x, scale=2, init=nn.init.kaiming_normal_):
    "ICNR init of `x`, with `scale` and `init` function."
    ni, nf, h, w = x.shape
    ni2 = int(ni / (scale ** 2))
    k = init(torch.zeros([ni2, nf, h, w])).transpose(0, 1)
    k = k.contiguous().view(ni2, nf, -1)
    k = k.repeat(1, 1, scale ** 2)
    k = k.contiguous().view([nf, ni, h, w]).transpose(0, 1)
    x.data.copy_(k)


class PixelShuffle_ICNR(Module):
    "Upsample by `scale` from `ni` filters to `nf` (default `ni`), using `nn.PixelShuffle`, `icnr` init, and `weight_norm`."

    def __init__(self, ni: int, nf: int | None = None, scale: int = 2, blur: bool = False,
                 norm_type=NormType.Weight, leaky=None):
        nf = ifnone(nf, ni)
        self.conv = conv_layer(ni, nf * (scale ** 2), ks=1, norm_type=norm_type, use_activ=False)
        icnr(self.conv[0].weight)
        self.shuf = nn.PixelShuffle(scale)
        # Blurring over (h*w) kernel
        # "Super-Resolution using Convolutional Neural Networks without Any Checkerboard Artifacts"
        # - https://arxiv.org/abs/1806.02658
        self.pad = nn.ReplicationPad2d((1, 0, 1, 0))
        self.blur = nn.AvgPool2d(2, stride=1)
        self.do_blur = blur
        self.relu = relu(True, leaky=leaky)

    def forward(self, x):
        x = self.shuf(self.relu(self.conv(x)))
        return self.blur(self.pad(x)) if self.do_blur else x


# --- fastai/callbacks/hooks.py ----------------------------------------------------------------------------


class Hook:
    "Create a hook on `m` with `hook_func`."

    def __init__(self, m, hook_func, is_forward: bool = True, detach: bool = True):
        self.hook_func, self.detach, self.stored = hook_func, detach, None
        f = m.register_forward_hook if is_forward else m.register_backward_hook
        self.hook = f(self.hook_fn)
        self.removed = False

    def hook_fn(self, module, input, output):
        "Applies `hook_func` to `module`, `input`, `output`."
        if self.detach:
            input = (o.detach() for o in input) if is_listy(input) else input.detach()
            output = (o.detach() for o in output) if is_listy(output) else output.detach()
        self.stored = self.hook_func(module, input, output)

    def remove(self):
        "Remove the hook from the model."
        if not self.removed:
            self.hook.remove()
            self.removed = True

    def __enter__(self, *args):
        return self

    def __exit__(self, *args):
        self.remove()


class Hooks:
    "Create several hooks on the modules in `ms` with `hook_func`."

    def __init__(self, ms, hook_func, is_forward: bool = True, detach: bool = True):
        self.hooks = [Hook(m, hook_func, is_forward, detach) for m in ms]

    def __getitem__(self, i: int) -> Hook:
        return self.hooks[i]

    def __len__(self) -> int:
        return len(self.hooks)

    def __iter__(self):
        return iter(self.hooks)

    @property
    def stored(self):
        return [o.stored for o in self]

    def remove(self):
        "Remove the hooks from the model."
        for h in self.hooks:
            h.remove()

    def __enter__(self, *args):
        return self

    def __exit__(self, *args):
        self.remove()


def _hook_inner(m, i, o):
    return o if isinstance(o, torch.Tensor) else o if is_listy(o) else list(o)


def hook_outputs(modules, detach: bool = True, grad: bool = False) -> Hooks:
    "Return `Hooks` that store activations of all `modules` in `self.stored`"
    return Hooks(modules, _hook_inner, detach=detach, is_forward=not grad)


def dummy_batch(m, size: tuple = (64, 64)):
    "Create a dummy batch to go through `m` with `size`."
    ch_in = in_channels(m)
    return one_param(m).new(1, ch_in, *size).requires_grad_(False).uniform_(-1., 1.)


def dummy_eval(m, size: tuple = (64, 64)):
    "Pass a `dummy_batch` in evaluation mode in `m` with `size`."
    return m.eval()(dummy_batch(m, size))


def model_sizes(m, size: tuple = (64, 64)):
    "Pass a dummy input through the model `m` to get the various sizes of activations."
    with hook_outputs(m) as hooks:
        dummy_eval(m, size)
        return [o.stored.shape for o in hooks]


# --- fastai/vision/models/unet.py -------------------------------------------------------------------------


def _get_sfs_idxs(sizes):
    "Get the indexes of the layers where the size of the activation changes."
    feature_szs = [size[-1] for size in sizes]
    sfs_idxs = list(np.where(np.array(feature_szs[:-1]) != np.array(feature_szs[1:]))[0])
    if feature_szs[0] != feature_szs[1]:
        sfs_idxs = [0] + sfs_idxs
    return sfs_idxs


class UnetBlock(Module):
    "A quasi-UNet block, using `PixelShuffle_ICNR upsampling`."

    def __init__(self, up_in_c: int, x_in_c: int, hook: Hook, final_div: bool = True, blur: bool = False,
                 leaky=None, self_attention: bool = False, **kwargs):
        self.hook = hook
        self.shuf = PixelShuffle_ICNR(up_in_c, up_in_c // 2, blur=blur, leaky=leaky, **kwargs)
        self.bn = batchnorm_2d(x_in_c)
        ni = up_in_c // 2 + x_in_c
        nf = ni if final_div else ni // 2
        self.conv1 = conv_layer(ni, nf, leaky=leaky, **kwargs)
        self.conv2 = conv_layer(nf, nf, leaky=leaky, self_attention=self_attention, **kwargs)
        self.relu = relu(leaky=leaky)

    def forward(self, up_in):
        s = self.hook.stored
        up_out = self.shuf(up_in)
        ssh = s.shape[-2:]
        if ssh != up_out.shape[-2:]:
            up_out = F.interpolate(up_out, s.shape[-2:], mode='nearest')
        cat_x = self.relu(torch.cat([up_out, self.bn(s)], dim=1))
        return self.conv2(self.conv1(cat_x))


class DynamicUnet(SequentialEx):
    "Create a U-Net from a given architecture."

    def __init__(self, encoder, n_classes: int, img_size=(256, 256), blur: bool = False, blur_final=True,
                 self_attention: bool = False, y_range=None, last_cross: bool = True, bottle: bool = False,
                 **kwargs):
        imsize = img_size
        sfs_szs = model_sizes(encoder, size=imsize)
        sfs_idxs = list(reversed(_get_sfs_idxs(sfs_szs)))
        self.sfs = hook_outputs([encoder[i] for i in sfs_idxs], detach=False)
        x = dummy_eval(encoder, imsize).detach()

        ni = sfs_szs[-1][1]
        middle_conv = nn.Sequential(conv_layer(ni, ni * 2, **kwargs),
                                    conv_layer(ni * 2, ni, **kwargs)).eval()
        x = middle_conv(x)
        layers = [encoder, batchnorm_2d(ni), nn.ReLU(), middle_conv]

        for i, idx in enumerate(sfs_idxs):
            not_final = i != len(sfs_idxs) - 1
            up_in_c, x_in_c = int(x.shape[1]), int(sfs_szs[idx][1])
            do_blur = blur and (not_final or blur_final)
            sa = self_attention and (i == len(sfs_idxs) - 3)
            unet_block = UnetBlock(up_in_c, x_in_c, self.sfs[i], final_div=not_final, blur=do_blur,
                                   self_attention=sa, **kwargs).eval()
            layers.append(unet_block)
            x = unet_block(x)

        ni = x.shape[1]
        if imsize != sfs_szs[0][-2:]:
            layers.append(PixelShuffle_ICNR(ni, **kwargs))
        x = PixelShuffle_ICNR(ni)(x)
        if imsize != x.shape[-2:]:
            layers.append(Lambda(lambda x: F.interpolate(x, imsize, mode='nearest')))
        if last_cross:
            layers.append(MergeLayer(dense=True))
            ni += in_channels(encoder)
            layers.append(res_block(ni, bottle=bottle, **kwargs))
        layers += [conv_layer(ni, n_classes, ks=1, use_activ=False, **kwargs)]
        if y_range is not None:
            layers.append(SigmoidRange(*y_range))
        super().__init__(*layers)

    def __del__(self):
        if hasattr(self, "sfs"):
            self.sfs.remove()


# --- fastai/vision/learner.py, with torchvision stubbed ---------------------------------------------------


def torchvision_resnet(backbone: str, in_channels: int = 3):
    """Stands in for ``torchvision.models.resnet18/34/50(pretrained)``: the same children in the same order
    (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc), the ResNet layers from landcover's ResNetEncoder.
    ``in_channels`` != 3 is arcgis.learn's multispectral model, whose first conv takes every band."""
    enc = ResNetEncoder(backbone, in_channels)
    model = nn.Module()
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
        setattr(model, name, getattr(enc, name))
    model.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    model.fc = nn.Linear(enc.out_channels[-1], 1000)
    return model


def create_body(model, cut=-2):
    "Cut off the body of a typically pretrained `model` at `cut` (int) (fastai's `_resnet_meta` cut: -2)."
    return nn.Sequential(*list(model.children())[:cut])


def fastai_unet(backbone: str, n_classes: int, img_size=(64, 64), in_channels: int = 3):
    """The model arcgis.learn's UnetClassifier trains: fastai's ``unet_learner(data, arch, bottle=True,
    last_cross=True)`` with its defaults (blur=False, blur_final=True, self_attention=False, y_range=None,
    norm_type=None), ``n_classes = data.c`` (classes + NoData) and ``img_size`` the training chip size."""
    body = create_body(torchvision_resnet(backbone, in_channels))
    return DynamicUnet(body, n_classes=n_classes, img_size=img_size, blur=False, blur_final=True,
                       self_attention=False, y_range=None, norm_type=None, last_cross=True, bottle=True)
