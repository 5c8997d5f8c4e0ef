"""torchvision architectures (AlexNet, ResNet-18/50, a tiny ViT), built with ``weights=None``
and adapted to the dataset: any channel count, and small images.

Why the adaptations: these networks were designed for 224 px ImageNet photos. Their stems
downsample 4x at once (ResNet: 7x7 stride-2 conv + maxpool; AlexNet: 11x11 stride-4 conv),
which throws away most of a 32 px image, so inputs of at most :data:`SMALL_INPUT` px get the
usual CIFAR stem (3x3 stride-1 conv, no maxpool). Below 32 px even that is too small (AlexNet's
three stride-2 pools reach an empty map on 8x8; a ViT needs a patch grid), so a parameter-free
bilinear ``nn.Upsample`` to 32 px is put in front. It has no parameters, so the ``state_dict``
stays in depth order; the wrapped network's keys then start with ``net.``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import torch.nn as nn

from unlearning_core.models.registry import register_model

#: Images no larger than this on their short side get a CIFAR-style stem.
SMALL_INPUT = 64
#: Images smaller than this on a side are upsampled to it first.
MIN_INPUT = 32


def _with_resize(net: nn.Module, image_size: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    """``net`` preceded by a bilinear resize when ``target`` differs from ``image_size``."""
    if tuple(image_size) == tuple(target):
        return net
    resize = nn.Upsample(size=target, mode="bilinear", align_corners=False)
    return nn.Sequential(OrderedDict([("resize", resize), ("net", net)]))


def _min_size(image_size: tuple[int, int]) -> tuple[int, int]:
    return max(image_size[0], MIN_INPUT), max(image_size[1], MIN_INPUT)


def _tvm() -> Any:
    """``torchvision.models``, imported when a model is built, not when the names are
    registered: importing torchvision costs over a second, which every ``lethe`` command
    and worker start paid even for the small built-in models."""
    from torchvision import models

    return models


def _is_small(size: tuple[int, int]) -> bool:
    return min(size) <= SMALL_INPUT


@register_model("alexnet")
def alexnet(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """AlexNet; a 3x3 stride-1 first conv for small images (its pools still fit 32 px)."""
    net = _tvm().alexnet(weights=None, num_classes=num_classes)
    size = _min_size(image_size)
    if _is_small(size):
        net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
    elif in_channels != 3:
        net.features[0] = nn.Conv2d(in_channels, 64, kernel_size=11, stride=4, padding=2)
    return _with_resize(net, image_size, size)


def _resnet(
    builder, *, in_channels: int, image_size: tuple[int, int], num_classes: int
) -> nn.Module:
    net = builder(weights=None, num_classes=num_classes)
    size = _min_size(image_size)
    conv1: nn.Conv2d | None = None
    if _is_small(size):
        conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if conv1 is not None:
        # The init torchvision gives its own convs. Reassigning an attribute keeps its
        # place in the module order, so conv1 stays the first state_dict key.
        nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        net.conv1 = conv1
    return _with_resize(net, image_size, size)


@register_model("resnet18")
def resnet18(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """ResNet-18; CIFAR stem for small images."""
    return _resnet(
        _tvm().resnet18, in_channels=in_channels, image_size=image_size, num_classes=num_classes
    )


@register_model("resnet50")
def resnet50(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """ResNet-50; CIFAR stem for small images."""
    return _resnet(
        _tvm().resnet50, in_channels=in_channels, image_size=image_size, num_classes=num_classes
    )


def _vit_geometry(image_size: tuple[int, int]) -> tuple[int, int]:
    """(square input side, patch size): patch 4 at 32 px; bigger inputs aim at a grid of about
    14 patches a side (16 px patches at 224) using a divisor of the side if one is near, else
    rounding the side up to a multiple of the patch."""
    side = max(MIN_INPUT, *image_size)
    target = max(4, side // 14)
    for patch in range(target, max(1, target // 2), -1):
        if side % patch == 0:
            return side, patch
    return math.ceil(side / target) * target, target


def _vision_transformer(
    *, in_channels: int, image_size: tuple[int, int], num_classes: int, layers: int, heads: int, hidden: int,
    mlp: int,
) -> nn.Module:
    from torchvision.models.vision_transformer import VisionTransformer

    side, patch = _vit_geometry(image_size)
    net = VisionTransformer(image_size=side, patch_size=patch, num_layers=layers, num_heads=heads,
                            hidden_dim=hidden, mlp_dim=mlp, num_classes=num_classes)
    if in_channels != 3:
        net.conv_proj = nn.Conv2d(in_channels, hidden, kernel_size=patch, stride=patch)
        fan_in = in_channels * patch * patch  # torchvision's own conv_proj init
        nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(net.conv_proj.bias)
    return _with_resize(net, image_size, (side, side))


def vit_large(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """A ViT-L/16-sized VisionTransformer (24 layers, 16 heads, hidden 1024, MLP 4096: about
    300M parameters), the size of the model in the partial-amnesiac reference table; the
    patch follows the input as for ``vit`` (16 px at 224). For a GPU (bench/gpu.sh), named by
    its path, ``unlearning_core.models.torchvision_models:vit_large``: it is not a built-in
    name, so that nothing on a CPU (tests, the service's fuzzing) builds it by accident."""
    return _vision_transformer(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                               layers=24, heads=16, hidden=1024, mlp=4096)


@register_model("vit")
def vit(*, in_channels: int, image_size: tuple[int, int], num_classes: int) -> nn.Module:
    """ViT-Tiny-like VisionTransformer: hidden 192, 6 layers, 3 heads, MLP 768.

    torchvision's ViT needs a square input whose side the patch divides, so non-square or
    small images are resized to that square first. ``class_token`` is the first state_dict
    key: it belongs to the embedding (stem), together with ``conv_proj``.
    """
    return _vision_transformer(in_channels=in_channels, image_size=image_size, num_classes=num_classes,
                               layers=6, heads=3, hidden=192, mlp=768)
