"""Registered network builders and ``module:function`` factories.

Every builder is called as ``builder(in_channels=..., num_classes=..., spatial_dims=2, **kwargs)`` and returns
a plain ``nn.Module`` mapping normalised inputs (N, C, *spatial) to logits (N, K). The MONAI networks are
configured small so they train in minutes on a CPU at 28-64 px; pass kwargs to change that.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from medrobust.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")

#: what medrobust passes every architecture itself (from the data or the model card), never through arch_kwargs
SHAPE_ARGS = ("in_channels", "num_classes", "spatial_dims")


def check_arch_kwargs(architecture: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before anything is built or loaded, arch_kwargs that set what medrobust passes itself and (for a
    registered architecture) parameters it does not have or values of the wrong type."""
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"arch_kwargs {kwargs!r} must be a mapping of parameter names to values")
    taken = [k for k in SHAPE_ARGS if k in kwargs]
    if taken:
        raise ValueError(
            f"arch_kwargs sets {', '.join(f'{k}={kwargs[k]!r}' for k in taken)}, which medrobust passes the "
            "architecture itself (from the data and the model card's fields of that name); drop it from arch_kwargs"
        )
    if ":" not in architecture:
        MODELS.check(architecture, **kwargs)


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU-pool) and a linear head on global average pooling."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, spatial_dims: int = 2) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims={spatial_dims!r} must be 2 or 3")
        if width < 1:
            raise ValueError(f"width={width!r} must be an integer >= 1 (channels of the first conv block)")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        layers: list[nn.Module] = []
        channels = in_channels
        for mult in (1, 2, 4):
            layers += [conv(channels, width * mult, 3, padding=1), norm(width * mult), nn.ReLU(), pool(2)]
            channels = width * mult
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))


@MODELS.register("small-cnn")
def small_cnn(in_channels: int, num_classes: int, spatial_dims: int = 2, width: int = 16) -> nn.Module:
    return SmallCNN(in_channels, num_classes, width=width, spatial_dims=spatial_dims)


@MODELS.register("densenet")
def densenet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    init_features: int = 16,
    growth_rate: int = 8,
    block_config: tuple[int, ...] = (2, 4, 4),
    dropout_prob: float = 0.0,
) -> nn.Module:
    """MONAI DenseNet (Huang et al. 2017), small configuration."""
    from monai.networks.nets import DenseNet

    return DenseNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        init_features=init_features,
        growth_rate=growth_rate,
        block_config=tuple(block_config),
        dropout_prob=dropout_prob,
    )


@MODELS.register("resnet")
def resnet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    layers: tuple[int, ...] = (1, 1, 1, 1),
    block_inplanes: tuple[int, ...] = (16, 32, 64, 128),
) -> nn.Module:
    """MONAI ResNet with basic blocks (He et al. 2016), a 3x3 stem for small inputs."""
    from monai.networks.nets import ResNet

    return ResNet(
        block="basic",
        layers=list(layers),
        block_inplanes=list(block_inplanes),
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        conv1_t_size=3,
        conv1_t_stride=1,
        no_max_pool=False,
        num_classes=num_classes,
    )


@MODELS.register("efficientnet")
def efficientnet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    width_coefficient: float = 0.5,
    depth_coefficient: float = 0.5,
    image_size: int = 64,
    dropout_rate: float = 0.2,
) -> nn.Module:
    """MONAI EfficientNet (Tan & Le 2019) with the B0 block layout, scaled down by default."""
    from monai.networks.nets import EfficientNet

    blocks = [
        "r1_k3_s11_e1_i32_o16_se0.25",
        "r2_k3_s22_e6_i16_o24_se0.25",
        "r2_k5_s22_e6_i24_o40_se0.25",
        "r3_k3_s22_e6_i40_o80_se0.25",
        "r3_k5_s11_e6_i80_o112_se0.25",
        "r4_k5_s22_e6_i112_o192_se0.25",
        "r1_k3_s11_e6_i192_o320_se0.25",
    ]
    return EfficientNet(
        blocks,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        num_classes=num_classes,
        width_coefficient=width_coefficient,
        depth_coefficient=depth_coefficient,
        dropout_rate=dropout_rate,
        image_size=image_size,
        drop_connect_rate=0.0,
    )


TRUST_HINT = "pass --trust-code on the command line, set trust_code: true in the spec, or call with trust_code=True"


class UntrustedCodeError(ValueError):
    """A ``module:function`` factory named by data (a model card, a spec) without the user's opt-in."""


def resolve_factory(spec: str, *, trust_code: bool = False) -> Callable[..., nn.Module]:
    """Import ``module:function`` (e.g. ``torchvision.models:resnet18`` or ``mypkg.nets:build``).

    Importing a module and calling one of its functions runs code, so a factory resolves only with
    ``trust_code=True``: model cards and specs are data and must not run code unless the user says so."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model factory {spec!r} must look like 'package.module:function'")
    if not trust_code:
        raise UntrustedCodeError(
            f"architecture {spec!r} is a module:function factory, which imports and runs code; medrobust runs "
            f"factories only when you trust their source: {TRUST_HINT}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"model factory {spec!r}: cannot import module {module_name!r} ({err})") from None
    try:
        obj = module
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ImportError(f"model factory {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise TypeError(f"model factory {spec!r} is not callable")
    return obj


#: the most parameters (and buffers) a registered architecture may be built with, unless the environment variable
#: MEDROBUST_MAX_PARAMETERS says otherwise: a card's or spec's arch_kwargs are data, and a width of 10**6 would
#: ask for terabytes before any check could run
MAX_PARAMETERS = 1_000_000_000


def check_size(architecture: str, build: Callable[[], nn.Module], kwargs: Mapping[str, Any]) -> None:
    """Build the network once on the meta device (no memory, no random numbers drawn) and refuse it above
    MEDROBUST_MAX_PARAMETERS (default :data:`MAX_PARAMETERS`) parameters and buffers."""
    raw = os.environ.get("MEDROBUST_MAX_PARAMETERS", "")
    try:
        limit = int(raw) if raw else MAX_PARAMETERS
    except ValueError:
        raise ValueError(f"MEDROBUST_MAX_PARAMETERS={raw!r} must be an integer (a number of parameters)") from None
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the empty layers refused below
            probe = build()
    except (NotImplementedError, RuntimeError):  # an architecture that cannot be built on meta: built for real
        return
    if not isinstance(probe, nn.Module):
        return
    for key, t in probe.named_parameters():
        if t.numel() == 0:
            raise ValueError(
                f"architecture {architecture!r} with arch_kwargs {dict(kwargs)} has a layer without weights ({key} "
                f"of shape {list(t.shape)}); every size in arch_kwargs must be >= 1"
            )
    n = sum(t.numel() for t in probe.parameters()) + sum(t.numel() for t in probe.buffers())
    if n > limit:
        raise ValueError(
            f"architecture {architecture!r} with arch_kwargs {dict(kwargs)} would hold {n:,} parameters "
            f"({n * 4 / 2**30:,.1f} GiB as float32), above the limit of {limit:,}; if that size is intended, set "
            "MEDROBUST_MAX_PARAMETERS"
        )


def build_network(
    architecture: str,
    *,
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    trust_code: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a network by registered name or ``module:function`` factory.

    Registered builders receive ``in_channels``, ``num_classes``, ``spatial_dims`` and their own kwargs. A
    factory (e.g. ``torchvision.models:resnet18``) receives its kwargs plus whichever of ``in_channels``,
    ``num_classes``, ``spatial_dims`` its signature accepts and the kwargs do not already set; factories run
    only with ``trust_code=True`` (see :func:`resolve_factory`).
    """
    shape_args = {"in_channels": in_channels, "num_classes": num_classes, "spatial_dims": spatial_dims}
    if ":" in architecture:
        factory = resolve_factory(architecture, trust_code=trust_code)
        params: Mapping[str, inspect.Parameter]
        try:
            params = inspect.signature(factory).parameters
            accepts_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        except (TypeError, ValueError):
            params, accepts_all = {}, False
        extra = {k: v for k, v in shape_args.items() if k not in kwargs and (accepts_all or k in params)}
        net = factory(**extra, **kwargs)
    else:
        MODELS.check(architecture, **shape_args, **kwargs)  # names and types before anything is built
        check_size(architecture, lambda: MODELS.build(architecture, **shape_args, **kwargs), kwargs)
        try:
            net = MODELS.build(architecture, **shape_args, **kwargs)
        except RuntimeError as err:  # torch refusing a size (a negative channel count)
            raise ValueError(
                f"architecture {architecture!r} with arch_kwargs {dict(kwargs)} cannot be built: "
                f"{str(err).splitlines()[0]}"
            ) from None
    if not isinstance(net, nn.Module):
        raise TypeError(f"model {architecture!r} returned {type(net).__name__}, expected a torch.nn.Module")
    return net


# Segmentation networks (per-pixel logits (N, K, *spatial)), small by default for 2-mm MRI slices on a CPU.


@MODELS.register("unet")
def unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    strides: tuple[int, ...] = (2, 2, 2),
    num_res_units: int = 1,
) -> nn.Module:
    """MONAI UNet (residual units, Kerfoot et al. 2018), the UNet family of the paper's brain experiments."""
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=num_res_units,
    )


@MODELS.register("basic-unet")
def basic_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    features: tuple[int, ...] = (16, 16, 32, 64, 128, 16),
) -> nn.Module:
    """MONAI BasicUNet (Ronneberger et al. 2015 layout)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes, features=tuple(features)
    )


@MODELS.register("attention-unet")
def attention_unet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    channels: tuple[int, ...] = (16, 32, 64, 128),
    strides: tuple[int, ...] = (2, 2, 2),
) -> nn.Module:
    """MONAI AttentionUnet (Oktay et al. 2018)."""
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=tuple(channels),
        strides=tuple(strides),
    )


@MODELS.register("segresnet")
def segresnet(
    in_channels: int,
    num_classes: int,
    spatial_dims: int = 2,
    init_filters: int = 8,
    blocks_down: tuple[int, ...] = (1, 2, 2),
    blocks_up: tuple[int, ...] = (1, 1),
) -> nn.Module:
    """MONAI SegResNet (Myronenko 2018)."""
    from monai.networks.nets import SegResNet

    return SegResNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        init_filters=init_filters,
        blocks_down=tuple(blocks_down),
        blocks_up=tuple(blocks_up),
    )
