"""Training augmentations drawn per sample and applied to a whole batch at once (2D and 3D).

:class:`BatchAugment` does what the per-sample MONAI chain of :func:`scripts.core.transforms.augmentations`
does -- flips on every axis, rotate-90 in the image plane (180 degrees when the plane is not square),
shift-scale-rotate, elastic deformation, brightness, contrast, gamma and Gaussian noise, each with its
probability knob -- but on the collated ``(B, C, *spatial)`` tensor, on the training device:

* every spatial operation of every sample is folded into one sampling grid, so the batch is resampled
  once (``grid_sample``: bilinear for the image, nearest for the label, zeros outside); a batch in which
  no sample drew a spatial operation is not resampled at all;
* the intensity operations are a few vectorised tensor operations.

Why: on a CPU the per-sample chain costs about as much as the network. On the generated brain set
(96x96, the plan's width-8 U-Net, one thread) it took 10.9 ms per image against 20 ms for the
network's training step, so under a time budget a third of the epochs went to augmentation
(``Testing/benchmarks/bench_augment.py`` measures both side by side). ``augment_on`` picks this
(``"batch"``: the default, 2D and 3D, CPU and CUDA) or the MONAI chain (``"sample"``). What each
costs and what each reaches on the generated sets (3-5 seeds): the benchmarks README, *Training
augmentations* and *Session 10*.

Conventions: ``grid_sample`` grids hold normalised coordinates in ``[-1, 1]`` with the *last* spatial
axis first (x = W, y = H[, z = D]); with ``align_corners=False`` pixel centres sit at
``(2 i + 1) / n - 1``, so flips and square 90-degree turns move centres onto centres and a sample with
only those operations keeps its exact values. Rotations and scaling are built in pixel units
(``S^-1 R S`` with ``S`` the half sizes), so a non-square image turns without shearing. The image
plane is tensor axes (0, 1), as in :func:`scripts.core.transforms.augmentations`; 3D rotations turn about
the slice axis only.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from scripts.core.transforms import AUGMENT_STRENGTHS, BRIGHTNESS, CONTRAST, GAMMA_RANGE, augmentations, checked_flip_axes

#: the knobs of :func:`scripts.core.transforms.augmentations` and their defaults ("medium"), read from its signature
DEFAULTS: dict[str, float | None] = {name: p.default for name, p in inspect.signature(augmentations).parameters.items()
                              if p.default is not inspect.Parameter.empty}
PROBABILITIES = ("p_flip", "p_rot90", "p_affine", "p_elastic", "p_intensity", "p_gamma", "p_noise")
#: elastic deformation: control points every 1/8 of the image (at least 4 px), each moved by a normal
#: offset of ``magnitude`` pixels (drawn per sample from this range), interpolated smoothly in between
#: -- as MONAI's ``RandDeformGrid`` behind the per-sample chain's ``Rand2DElasticd`` (its offsets are
#: in pixels, not control spacings); in 3D about the voxel-sized shifts of ``Rand3DElasticd``'s
#: Gaussian-smoothed field
ELASTIC_MAGNITUDE = (0.5, 1.5)
ELASTIC_CONTROL_FRACTION = 8
ELASTIC_MIN_SPACING = 4


class BatchAugment:
    """Random augmentations of a collated batch, drawn independently for each sample.

    Args:
        spatial_dims: 2 or 3.
        strength: ``light`` / ``medium`` / ``strong`` (:data:`scripts.core.transforms.AUGMENT_STRENGTHS`,
            the plan's ``augmentation``).
        **knobs: single knobs over the strength's (``p_flip``, ``p_rot90``, ``p_affine``,
            ``p_elastic``, ``p_intensity``, ``p_gamma``, ``p_noise``, ``rotate_deg``, ``scale``,
            ``shift`` as a fraction of the size, ``noise_std``, ``flip_axes``) -- the same names and
            meaning as :func:`scripts.core.transforms.augmentations`.

    Raises:
        ValueError: ``spatial_dims`` not 2 or 3, an unknown strength or knob, a probability outside 0..1,
            a negative range, a flip axis that is not a spatial axis.
    """

    def __init__(self, spatial_dims: int, strength: str = "medium", **knobs: float) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if strength not in AUGMENT_STRENGTHS:
            raise ValueError(f"augment_strength must be one of {list(AUGMENT_STRENGTHS)}, got {strength!r}")
        unknown = sorted(set(knobs) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"unknown augmentation knob(s) {unknown}; known: {sorted(DEFAULTS)}")
        values = {**DEFAULTS, **AUGMENT_STRENGTHS[strength], **knobs}
        for name in PROBABILITIES:
            if not 0.0 <= values[name] <= 1.0:
                raise ValueError(f"{name} must be a probability in 0..1, got {values[name]}")
        for name in ("rotate_deg", "scale", "shift", "noise_std"):
            if values[name] < 0:
                raise ValueError(f"{name} must be >= 0, got {values[name]}")
        self.flip_axes = checked_flip_axes(spatial_dims, values["flip_axes"])
        self.spatial_dims = spatial_dims
        self.strength = strength
        self.knobs = values

    def __repr__(self) -> str:
        return f"BatchAugment(spatial_dims={self.spatial_dims}, strength={self.strength!r})"

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, label: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment ``image`` ``(B, C, *spatial)`` float and ``label`` ``(B, 1, *spatial)`` (any dtype) alike.

        Returns:
            the augmented image (float, same dtype) and label (same dtype; values only ever copied from
            the input label, or 0 outside the image).

        Raises:
            ValueError: tensors that are not ``(B, C, *spatial)`` with ``spatial_dims`` axes, or an image
                and label of different batch or spatial size.
        """
        d = self.spatial_dims
        if image.dim() != d + 2:
            raise ValueError(f"image must be (B, C, *spatial) with {d} spatial axes, got shape {tuple(image.shape)}")
        if label is not None and (label.dim() != d + 2 or label.shape[0] != image.shape[0]
                                  or label.shape[2:] != image.shape[2:]):
            raise ValueError(f"label {tuple(label.shape)} does not match image {tuple(image.shape)}")
        if image.shape[0] == 0:
            return image, label
        grid = self._grid(image.shape[0], tuple(image.shape[2:]), image.device, generator)
        if grid is not None:
            image = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="zeros",
                                  align_corners=False).to(image.dtype)
            if label is not None:
                label = F.grid_sample(label.float(), grid, mode="nearest", padding_mode="zeros",
                                      align_corners=False).round().to(label.dtype)
        return self._intensity(image, generator), label

    # --- spatial ------------------------------------------------------------------------------------------
    def _draw(self, n: int, p: float, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device) < p

    def _uniform(self, shape: Sequence[int], low: float, high: float, device: torch.device,
                 generator: torch.Generator | None) -> torch.Tensor:
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    def _grid(self, b: int, size: tuple[int, ...], device: torch.device,
              generator: torch.Generator | None) -> torch.Tensor | None:
        """The ``(B, *size, d)`` sampling grid of the batch, or None when no sample moves."""
        d, k = self.spatial_dims, self.knobs
        eye = torch.eye(d, device=device)
        # grid coordinate j belongs to tensor axis d - 1 - j; the image plane is tensor axes (0, 1)
        plane = (d - 1, d - 2)
        half = torch.tensor([size[d - 1 - j] / 2.0 for j in range(d)], device=device)
        linear = eye.repeat(b, 1, 1)  # maps output coordinates to input coordinates
        shift = torch.zeros(b, d, device=device)
        moved = torch.zeros(b, dtype=torch.bool, device=device)

        for axis in self.flip_axes:  # flips
            hit = self._draw(b, k["p_flip"], device, generator)
            flip = eye.clone()
            flip[d - 1 - axis, d - 1 - axis] = -1.0
            linear = torch.where(hit[:, None, None], flip @ linear, linear)
            moved |= hit
        hit = self._draw(b, k["p_rot90"], device, generator)
        if size[0] == size[1]:  # quarter turns 1, 2 or 3 times
            turns = torch.randint(1, 4, (b,), generator=generator, device=device)
            for t in (1, 2, 3):
                rot = eye.clone()
                c, s = round(math.cos(t * math.pi / 2)), round(math.sin(t * math.pi / 2))
                rot[plane[0], plane[0]], rot[plane[0], plane[1]] = c, -s
                rot[plane[1], plane[0]], rot[plane[1], plane[1]] = s, c
                use = hit & (turns == t)
                linear = torch.where(use[:, None, None], rot @ linear, linear)
        else:  # a half turn keeps a non-square plane's size
            rot = eye.clone()
            rot[plane[0], plane[0]] = rot[plane[1], plane[1]] = -1.0
            linear = torch.where(hit[:, None, None], rot @ linear, linear)
        moved |= hit

        hit = self._draw(b, k["p_affine"], device, generator)
        if hit.any():
            angle = self._uniform((b,), -math.radians(k["rotate_deg"]), math.radians(k["rotate_deg"]), device, generator)
            rot = eye.repeat(b, 1, 1)
            rot[:, plane[0], plane[0]], rot[:, plane[0], plane[1]] = torch.cos(angle), -torch.sin(angle)
            rot[:, plane[1], plane[0]], rot[:, plane[1], plane[1]] = torch.sin(angle), torch.cos(angle)
            zoom = 1.0 + self._uniform((b, d), -k["scale"], k["scale"], device, generator)
            # in pixel units: p_in = R p_out / zoom; normalised u = p / half
            affine = torch.diag_embed(1.0 / half).expand(b, d, d) @ rot @ torch.diag_embed(half / zoom)
            move = self._uniform((b, d), -2.0 * k["shift"], 2.0 * k["shift"], device, generator)  # of the size
            linear = torch.where(hit[:, None, None], affine @ linear, linear)
            shift = torch.where(hit[:, None], move, shift)
            moved |= hit

        elastic = self._draw(b, k["p_elastic"], device, generator)
        moved |= elastic
        if not bool(moved.any()):
            return None
        axes = [torch.linspace(-1.0 + 1.0 / n, 1.0 - 1.0 / n, n, device=device) for n in size]
        mesh = torch.meshgrid(*axes, indexing="ij")  # tensor-axis order
        base = torch.stack(mesh[::-1], dim=-1)  # (*size, d), grid order
        coords = base.expand(b, *size, d)
        if bool(elastic.any()):
            coords = coords + self._elastic(b, size, device, generator) * elastic.reshape(b, *([1] * (d + 1)))
        grid = torch.einsum("bij,b...j->b...i", linear, coords) + shift.reshape(b, *([1] * d), d)
        return grid

    def _elastic(self, b: int, size: tuple[int, ...], device: torch.device,
                 generator: torch.Generator | None) -> torch.Tensor:
        """A smooth random displacement ``(B, *size, d)`` in normalised units."""
        d = self.spatial_dims
        spacing = [max(ELASTIC_MIN_SPACING, n // ELASTIC_CONTROL_FRACTION) for n in size]
        control = [max(2, math.ceil(n / s) + 1) for n, s in zip(size, spacing)]
        magnitude = self._uniform((b,), *ELASTIC_MAGNITUDE, device, generator).reshape(b, 1, *([1] * d))
        # offsets in pixels -> normalised units per grid coordinate (2 / size)
        offsets = torch.randn((b, d, *control), generator=generator, device=device) * magnitude
        scale = torch.tensor([2.0 / size[d - 1 - j] for j in range(d)], device=device)
        offsets = offsets * scale.reshape(1, d, *([1] * d))
        mode = "bicubic" if d == 2 else "trilinear"
        field = F.interpolate(offsets, size=size, mode=mode, align_corners=True)
        return field.movedim(1, -1)

    # --- intensity ----------------------------------------------------------------------------------------
    def _intensity(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        k, b, dev = self.knobs, image.shape[0], image.device
        view = (b, *([1] * (image.dim() - 1)))
        out = image
        hit = self._draw(b, k["p_intensity"], dev, generator)  # brightness
        offset = self._uniform((b,), -BRIGHTNESS, BRIGHTNESS, dev, generator) * hit
        hit = self._draw(b, k["p_intensity"], dev, generator)  # contrast
        factor = 1.0 + self._uniform((b,), -CONTRAST, CONTRAST, dev, generator) * hit
        if bool((offset != 0).any()) or bool((factor != 1).any()):
            out = (out + offset.reshape(view).to(out.dtype)) * factor.reshape(view).to(out.dtype)
        hit = self._draw(b, k["p_gamma"], dev, generator)
        if bool(hit.any()):
            gamma = self._uniform((b,), *GAMMA_RANGE, dev, generator)
            flat = out.reshape(b, -1)
            low = flat.amin(dim=1).reshape(view)
            span = (flat.amax(dim=1).reshape(view) - low)
            curved = ((out - low) / (span + 1e-7)).clamp_min(0) ** gamma.reshape(view).to(out.dtype) * span + low
            out = torch.where(hit.reshape(view), curved, out)
        hit = self._draw(b, k["p_noise"], dev, generator)
        if bool(hit.any()):
            std = self._uniform((b,), 0.0, k["noise_std"], dev, generator) * hit
            noise = torch.randn(out.shape, generator=generator, device=dev, dtype=out.dtype)
            out = out + noise * std.reshape(view).to(out.dtype)
        return out


def batch_augment_for(spatial_dims: int, augment: bool, augment_on: str, strength: str = "medium",
                      knobs: Mapping[str, float] | None = None) -> BatchAugment | None:
    """The training config's batch augmentation: a :class:`BatchAugment` when ``augment`` is on and
    ``augment_on`` is ``"batch"``, None otherwise (``"sample"``: the MONAI chain in the dataset).

    Raises:
        ValueError: ``augment_on`` not ``"batch"`` or ``"sample"``; see :class:`BatchAugment`.
    """
    if augment_on not in ("batch", "sample"):
        raise ValueError(f"augment_on must be 'batch' or 'sample', got {augment_on!r}")
    if not augment or augment_on != "batch":
        return None
    return BatchAugment(spatial_dims, strength, **dict(knobs or {}))
