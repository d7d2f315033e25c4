"""Multi-task U-Net: one encoder, a segmentation decoder and a diagnosis head.

``MultiTaskUNet(x) -> {"seg": (B, S, *spatial) logits, "cls": (B, K) logits, "pred": <the seg tensor>}``
for 2D and 3D inputs
``(B, C, H, W[, D])``. The encoder is either the plain BatchNorm U-Net encoder of the earlier
multi-task projects (``"unet"``) or a ResNet trained from scratch (``"resnet18" | "resnet34" |
"resnet50"``). The diagnosis head either pools the deepest encoder features (``"global"``, the
earlier projects' head) or also reads the lesion (``"lesion"``): it pools encoder and decoder
features weighted by the predicted lesion probability and sees how much lesion the segmentation
head found, so the two answers are drawn from the same evidence. Scriptable with
``torch.jit.script``.
"""

from __future__ import annotations

from collections.abc import Sequence

from typing import Optional

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.networks.nets.resnet import ResNet, get_inplanes
from torch import nn
from torch.nn import functional as F

from scripts.core.tasks import Task

RESNET_ENCODERS = ("resnet18", "resnet34", "resnet50")
CLS_POOLINGS = ("global", "lesion")
ENCODERS = ("unet",) + RESNET_ENCODERS
#: MONAI bundle tooling's name for a network's primary output; an alias of the ``seg`` output
PRED_KEY = "pred"


class ConvBlock(nn.Sequential):
    """Two ``Conv(bias off) - BatchNorm - ReLU`` layers, the block of the earlier U-Nets; ``stride`` 2
    makes the first convolution halve the size (the strided stem)."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int = 1) -> None:
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        super().__init__(
            conv(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            norm(out_channels),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Plain U-Net encoder: ``ConvBlock`` then ``(MaxPool, ConvBlock)`` per further level.

    ``forward(x)`` returns the feature maps of every level, the finest first; level ``i`` has
    ``channels[i]`` channels at ``1 / (stem_stride * 2**i)`` of the input size. With ``stem_stride``
    2 the first convolution is strided (as in MONAI's ``UNet``), so no convolution runs at the input's
    full resolution: in 3D those two convolutions at 16 channels were most of a training step.
    """

    def __init__(self, spatial_dims: int, in_channels: int, channels: Sequence[int], stem_stride: int = 1) -> None:
        super().__init__()
        pool = Pool[Pool.MAX, spatial_dims]
        blocks = [ConvBlock(spatial_dims, in_channels, channels[0], stride=stem_stride)]
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            blocks.append(nn.Sequential(pool(kernel_size=2), ConvBlock(spatial_dims, c_in, c_out)))
        self.blocks = nn.ModuleList(blocks)
        self.out_channels = list(channels)
        self.input_stride = stem_stride  # 1: level 0 is at full resolution

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


# name -> (block, blocks per stage); all use projection shortcuts ("B"), which TorchScript can compile
_RESNETS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet34": ("basic", [3, 4, 6, 3]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


class ResNetEncoder(nn.Module):
    """ResNet feature pyramid built on MONAI's ``ResNet`` (random init: no weights are downloaded).

    Returns 5 maps at strides 2, 4, 8, 16, 32.
    """

    def __init__(self, spatial_dims: int, in_channels: int, name: str) -> None:
        super().__init__()
        block, layers = _RESNETS[name]
        self.body = ResNet(
            block, layers, get_inplanes(), spatial_dims=spatial_dims, n_input_channels=in_channels,
            conv1_t_stride=2, shortcut_type="B", feed_forward=False, bias_downsample=False,
        )
        expansion = 4 if block == "bottleneck" else 1
        self.out_channels = [64] + [c * expansion for c in (64, 128, 256, 512)]
        self.input_stride = 2  # conv1 halves the input

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.body
        x = b.act(b.bn1(b.conv1(x)))
        features = [x]
        x = b.layer1(b.maxpool(x))
        features.append(x)
        x = b.layer2(x)
        features.append(x)
        x = b.layer3(x)
        features.append(x)
        features.append(b.layer4(x))
        return features


class UpBlock(nn.Module):
    """Upsample x2 with a transposed convolution, concatenate the skip, then ``ConvBlock``."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = ConvBlock(spatial_dims, out_channels + skip_channels, out_channels)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:  # odd input sizes: pad/crop the upsampled map to the skip's size
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class LightUpBlock(nn.Module):
    """The last up-step of a U-Net with a strided stem: upsample x2 (transposed convolution), concatenate
    the input image, then ONE ``Conv - BatchNorm - ReLU`` -- the only layer at full resolution."""

    def __init__(self, spatial_dims: int, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = nn.Sequential(
            Conv[Conv.CONV, spatial_dims](out_channels + skip_channels, out_channels, kernel_size=3, padding=1, bias=False),
            Norm[Norm.BATCH, spatial_dims](out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[2:] != skip.shape[2:]:  # odd input sizes: match the input's size
            x = F.interpolate(x, size=skip.shape[2:], mode="nearest")
        return self.conv(torch.cat([x, skip], dim=1))


class UNetDecoder(nn.Module):
    """Decoder over an encoder's feature list; returns a full-resolution map.

    A strided encoder has no full-resolution level, so one more up-step uses the input as its skip:
    for a ResNet a full ``UpBlock`` of ``max(channels[0] // 2, 16)``; for the U-Net's strided stem
    (``light_final``) a :class:`LightUpBlock` of ``max(channels[0] // 2, 8)``.
    """

    def __init__(self, spatial_dims: int, encoder_channels: Sequence[int], input_stride: int, in_channels: int,
                 light_final: bool = False) -> None:
        super().__init__()
        rev = list(encoder_channels)[::-1]
        self.ups = nn.ModuleList(UpBlock(spatial_dims, c_in, c_skip, c_skip) for c_in, c_skip in zip(rev[:-1], rev[1:]))
        self.final_up: Optional[nn.Module] = None
        if input_stride == 2 and light_final:
            self.final_up = LightUpBlock(spatial_dims, encoder_channels[0], in_channels, max(encoder_channels[0] // 2, 8))
        elif input_stride == 2:
            self.final_up = UpBlock(spatial_dims, encoder_channels[0], in_channels, max(encoder_channels[0] // 2, 16))
        self.out_channels: int = self.final_up.out_channels if self.final_up is not None else encoder_channels[0]

    def forward(self, features: list[torch.Tensor], x_in: torch.Tensor) -> list[torch.Tensor]:
        """Every decoder level's output, coarsest first; the last one is at full resolution."""
        x = features[-1]
        n = len(features)
        levels: list[torch.Tensor] = []
        for i, up in enumerate(self.ups):
            x = up(x, features[n - 2 - i])
            levels.append(x)
        if self.final_up is not None:
            x = self.final_up(x, x_in)
            levels.append(x)
        return levels


class ClassificationHead(nn.Module):
    """Global average pooling of the deepest features, dropout, optional hidden layer, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float, hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            in_channels = hidden
        layers.append(nn.Linear(in_channels, num_classes))
        self.mlp = nn.Sequential(*layers)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        pooled = deepest.flatten(2).mean(dim=2)  # (B, C, *spatial) -> (B, C)
        return self.mlp(pooled)


def _masked_mean(features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``sum(w * f) / sum(w)`` over space: ``(B, C, *sp)``, ``(B, 1, *sp)`` -> ``(B, C)``."""
    num = (features * weight).flatten(2).sum(2)  # (B, C)
    den = weight.flatten(2).sum(2).clamp_min(1e-3)  # (B, 1)
    return num / den


class LesionAwareHead(nn.Module):
    """Diagnosis from the whole image and from the lesion the segmentation head found.

    Reads three feature maps -- the deepest encoder level, the middle decoder level and the
    full-resolution decoder output -- and the segmentation's lesion probability
    ``p = 1 - softmax(seg)[background]`` ``(B, 1, *sp)``. The pooling weight is the *confident* lesion
    ``w = clamp(2 p - 1, 0, 1)``: 0 wherever the segmentation leans to background, 1 where it is sure
    of a lesion. (Weighting by ``p`` itself lets the diffuse low probabilities of the background --
    0.2 over a whole image early in training -- outweigh a lesion of 1 % of the image.) Each map is
    pooled twice: globally, and weighted by ``w`` brought to its size (so the diagnosis reads the
    lesion and its surroundings, not the whole head; no lesion: zeros). Two lesion statistics, the
    mean of ``w`` (the lesion's share of the image) and its maximum (the strongest lesion evidence),
    feed both the MLP and a linear path straight to the logits that no dropout or ReLU can switch
    off: they let the head say "no tumor" exactly when the segmentation finds none.

    ``p`` is detached, and so are the decoder maps (``MultiTaskUNet.forward``): the diagnosis loss
    trains the encoder and this head, but never moves the segmentation.

    Lesion guidance (training only): given the ground-truth lesion mask ``lesion`` ``(B, 1, *sp)``
    (0 where a sample has no mask), the head pools with ``max(w, lesion)``. Early in training the
    segmentation finds nothing yet, so without guidance the head would learn to read the whole image
    and ignore the lesion pooling; with it, the head learns what a lesion's features say about its
    class from the first step, while the segmentation's own false positives (tumor-free images keep
    ``w``) still teach it what a spurious lesion looks like. Inference never passes a mask.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, dropout: float, hidden: int) -> None:
        super().__init__()
        width = 2 * sum(in_channels) + 2
        hidden = hidden if hidden > 0 else 64
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, hidden), nn.ReLU(inplace=True),
                                 nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.evidence = nn.Linear(2, num_classes)

    def forward(self, maps: list[torch.Tensor], seg: torch.Tensor, lesion: Optional[torch.Tensor] = None) -> torch.Tensor:
        p = 1.0 - torch.softmax(seg.detach().float(), dim=1)[:, :1]  # (B, 1, *sp)
        w = (2.0 * p - 1.0).clamp(0.0, 1.0).to(maps[0].dtype)
        if lesion is not None:
            w = torch.maximum(w, lesion.detach().to(w.dtype))
        pooled: list[torch.Tensor] = []
        for f in maps:
            wf = F.adaptive_avg_pool2d(w, f.shape[2:]) if f.dim() == 4 else F.adaptive_avg_pool3d(w, f.shape[2:])
            pooled.append(f.flatten(2).mean(2))  # (B, C)
            pooled.append(_masked_mean(f, wf))  # (B, C)
        flat = w.flatten(1)  # (B, N)
        stats = torch.cat([flat.mean(1, keepdim=True), flat.amax(1, keepdim=True)], dim=1)  # (B, 2)
        pooled.append(stats)
        return self.mlp(torch.cat(pooled, dim=1)) + self.evidence(stats)


class MultiTaskUNet(nn.Module):
    """Joint segmentation + diagnosis network.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels C (1 grey, 3 RGB, 4 multi-sequence MRI, ...).
        seg_classes: segment classes S including background (2 for binary tumor masks).
        num_classes: diagnosis classes K.
        encoder: ``"unet"`` or one of ``"resnet18" | "resnet34" | "resnet50"``.
        channels: encoder widths per level for ``"unet"`` (ignored by ResNet encoders).
        dropout: dropout probability in the classification head.
        cls_hidden: width of a hidden layer in the classification head, 0 for none (``"lesion"``:
            0 means the default 64).
        cls_pooling: ``"global"`` (deepest encoder features, average-pooled) or ``"lesion"``
            (:class:`LesionAwareHead`).
        stem_stride: ``"unet"`` only: 1 (every level's block at its own resolution, the earlier projects'
            U-Net) or 2 (the first convolution strided and a one-layer last up-step,
            :class:`LightUpBlock`: about 4x cheaper per 3D window; the plan picks it for 3D).

    ``forward(x)`` with ``x`` of shape ``(B, C, *spatial)`` returns
    ``{"seg": (B, S, *spatial), "cls": (B, K)}``. Spatial sizes need not be divisible by the
    total stride: up-sampled maps are matched to their skips.

    ``"pred"`` is the same tensor as ``"seg"``: MONAI's bundle tooling (``verify_net_in_out``,
    ``ckpt_export``, the ``channel_def`` meta property) looks for the primary output under that
    name. Code of this project reads the outputs by :class:`scripts.core.tasks.Task` only.

    Raises:
        ValueError: an argument is out of range; the message names it and the value.
    """

    __constants__ = ["lesion_aware"]  # TorchScript then compiles only the chosen head's call

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        seg_classes: int = 2,
        num_classes: int = 4,
        encoder: str = "unet",
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.5,
        cls_hidden: int = 0,
        cls_pooling: str = "global",
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {encoder!r}")
        for name, value, low in (("in_channels", in_channels, 1), ("seg_classes", seg_classes, 2), ("num_classes", num_classes, 2)):
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if encoder == "unet" and (len(channels) < 2 or any(c < 1 for c in channels)):
            raise ValueError(f"channels must list >= 2 positive widths, got {list(channels)}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        if encoder != "unet" and stem_stride != 1:
            raise ValueError(f"stem_stride applies to the 'unet' encoder only ({encoder!r} always strides its first "
                             f"convolution), got {stem_stride}")
        if cls_pooling not in CLS_POOLINGS:
            raise ValueError(f"cls_pooling must be one of {CLS_POOLINGS}, got {cls_pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.seg_key: str = Task.SEG.value
        self.cls_key: str = Task.CLS.value
        self.pred_key: str = PRED_KEY
        if encoder == "unet":
            self.encoder: nn.Module = UNetEncoder(spatial_dims, in_channels, channels, stem_stride)
        else:
            self.encoder = ResNetEncoder(spatial_dims, in_channels, encoder)
        enc_channels: list[int] = self.encoder.out_channels
        self.decoder = UNetDecoder(spatial_dims, enc_channels, self.encoder.input_stride, in_channels,
                                   light_final=encoder == "unet")
        self.segmentation_head = Conv[Conv.CONV, spatial_dims](self.decoder.out_channels, seg_classes, kernel_size=1)
        self.lesion_aware = cls_pooling == "lesion"
        if self.lesion_aware:
            dec_channels = [up.out_channels for up in self.decoder.ups]
            if self.decoder.final_up is not None:
                dec_channels.append(self.decoder.out_channels)
            self.mid_level: int = len(dec_channels) // 2
            read = [enc_channels[-1], dec_channels[self.mid_level], dec_channels[-1]]
            self.classification_head: nn.Module = LesionAwareHead(read, num_classes, dropout, cls_hidden)
        else:
            self.mid_level = 0
            self.classification_head = ClassificationHead(enc_channels[-1], num_classes, dropout, cls_hidden)

    def forward(self, x: torch.Tensor, lesion: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """``lesion``: optional ``(B, 1, *spatial)`` ground-truth lesion mask that guides the lesion-aware
        head's pooling during training (:class:`LesionAwareHead`); ignored by the global head."""
        features = self.encoder(x)
        levels = self.decoder(features, x)
        seg = self.segmentation_head(levels[-1])
        if self.lesion_aware:
            # the decoder maps are read, not trained, by the diagnosis: its loss would otherwise pull on the
            # few full-resolution channels the segmentation head lives on (the encoder still learns from it)
            cls = self.classification_head([features[-1], levels[self.mid_level].detach(), levels[-1].detach()], seg, lesion)
        else:
            cls = self.classification_head(features[-1])
        return {self.seg_key: seg, self.cls_key: cls, self.pred_key: seg}
