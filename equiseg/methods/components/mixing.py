"""Mixing unlabeled and labeled samples: CutMix boxes, class regions, Copy-Paste.

Samples are dicts of same-sized tensors keyed like a batch (``image`` (B,3,H,W), ``label`` (B,H,W),
``confidence`` (B,H,W), ``valid`` (B,H,W)); :func:`paste` moves every field through one mask, so
images, (pseudo-)labels, confidences and padding always stay consistent.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ...data.augment import box_masks
from .rng import randint, uniform

CUTMIX_AREA = 0.5
"""Box area as a fraction of the image: CutMix-Seg (French et al. 2020, ``mask_prop_range 0.5``)
and the official AEL code (``init_cutmix``)."""


def random_boxes(batch: int, height: int, width: int, generator: torch.Generator,
                 area: float = CUTMIX_AREA, device: Optional[torch.device] = None) -> torch.Tensor:
    """``batch`` CutMix boxes as a (B, H, W) bool mask, True inside the box.

    CutMix-Seg / official-AEL boxes: the box covers ``area`` of the image, with a log-uniform
    aspect: height fraction ``area^u`` (u ~ U[0,1]) and width fraction ``area / that`` (both in
    [area, 1]); its position is uniform over the places where it fits. (``equiseg.data.augment``
    has UniMatch's boxes, a different distribution: area U[0.02, 0.4], ratio U[0.3, 1/0.3].)
    """
    if not 0 < area <= 1:
        raise ValueError(f"CutMix box area must be in (0, 1], got {area}")
    u = uniform((4, batch), generator, generator.device)
    height_frac = torch.pow(torch.tensor(area), u[0])
    box_h = (height_frac * height).round().clamp(1, height)
    box_w = (area / height_frac * width).round().clamp(1, width)
    top = (u[1] * (height - box_h + 1)).floor()
    left = (u[2] * (width - box_w + 1)).floor()
    inside = box_masks(top, top + box_h, left, left + box_w, height, width)
    return inside.to(device) if device is not None else inside


def mixing_partners(batch: int, generator: torch.Generator) -> torch.Tensor:
    """For each image i, the index of the image mixed into it: a random single cycle over the
    batch, so no image is its own partner when B > 1 (with B = 1 the image is its own partner,
    i.e. CutMix among one image is the identity)."""
    order = torch.randperm(batch, generator=generator, device=generator.device).cpu()
    partners = torch.empty(batch, dtype=torch.long)
    partners[order] = order.roll(-1)
    return partners


def select(sample: dict, index: torch.Tensor) -> dict:
    return {k: v[index.to(v.device)] for k, v in sample.items()}


def paste(mask: torch.Tensor, target: dict, source: dict) -> dict:
    """``target`` with ``source``'s pixels where ``mask`` (B,H,W) is True, for every field of
    ``target`` (Eq. 8: Î = CutMix(Crop(I_1), I_2) with I_1 = source, I_2 = target)."""
    out = {}
    for key, value in target.items():
        m = mask.to(value.device)
        if value.dim() == 4:  # (B, C, H, W) images
            m = m.unsqueeze(1)
        out[key] = torch.where(m, source[key].to(value.dtype), value)
    return out


# --------------------------------------------------------------------------- class regions (ACM)


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected components of a (B, H, W) bool mask, as (B, H, W) long labels (0 = background;
    a component's label is 1 + the flat index of its last pixel), like ``skimage.measure.label``'s
    default full connectivity. Pure torch: max-propagation over 3x3 neighbourhoods with pointer
    jumping, iterated to a fixed point (typically a few dozen iterations)."""
    b, h, w = mask.shape
    if mask.numel() == 0:
        return torch.zeros_like(mask, dtype=torch.long)
    # float32 is exact up to 2^24; larger maps use float64.
    dtype = torch.float32 if h * w < 2**24 else torch.float64
    on = mask.to(dtype).unsqueeze(1)
    labels = torch.arange(1, h * w + 1, device=mask.device, dtype=dtype).view(1, 1, h, w) * on
    while True:
        grown = F.max_pool2d(labels, kernel_size=3, stride=1, padding=1) * on
        # Pointer jumping: take the label of the pixel our label points at (never smaller).
        flat = grown.view(b, h * w)
        pointer = (flat.long() - 1).clamp_min(0)
        jumped = torch.gather(flat, 1, pointer).view_as(grown) * on
        if torch.equal(jumped, labels):
            return labels.squeeze(1).long()
        labels = jumped


def class_region_masks(prediction: torch.Tensor, classes: torch.Tensor, min_area: float,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """ACM's Crop(·) region: for each image i, the tight bounding box of one connected component
    of ``prediction[i] == classes[i]`` with at least ``min_area`` pixels, chosen uniformly among
    such components (as the official code). Returns (B,H,W) box masks and a (B,) bool ``found``;
    an image without such a component gets an all-False mask and ``found`` False."""
    components = connected_components(prediction == classes.view(-1, 1, 1))
    masks = torch.zeros_like(prediction, dtype=torch.bool)
    found = torch.zeros(prediction.shape[0], dtype=torch.bool)
    for i in range(prediction.shape[0]):
        ids, areas = components[i][components[i] > 0].unique(return_counts=True)
        large = ids[areas >= min_area]
        if large.numel() == 0:
            continue
        chosen = large[randint(large.numel(), generator)]
        ys, xs = (components[i] == chosen).nonzero(as_tuple=True)
        masks[i, ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
        found[i] = True
    return masks, found


# --------------------------------------------------------------------------- Copy-Paste (ACP)


def large_scale_jitter(sample: dict, scale: float, size: tuple[int, int], offset: tuple[float, float],
                       ignore_index: int) -> dict:
    """Copy-Paste's large scale jittering [Ghiasi et al. 2021]: resize one sample (``image``
    (3,H,W), ``label`` (H,W), ``valid`` (H,W)) by ``scale``, then crop (if larger) or pad (if
    smaller) to ``size``; ``offset`` in [0,1)² places the crop / the padded image. Padding has
    image 0 (the mean colour), label ``ignore_index`` and valid False."""
    height, width = size
    h, w = sample["label"].shape
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    image = F.interpolate(sample["image"][None].float(), size=(new_h, new_w), mode="bilinear",
                          align_corners=False)[0]
    label = F.interpolate(sample["label"][None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].long()
    valid = F.interpolate(sample["valid"][None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].bool()
    out = {"image": image.new_zeros(3, height, width),
           "label": label.new_full((height, width), ignore_index),
           "valid": valid.new_zeros(height, width)}
    # Window of the resized sample that lands on the canvas, and where it lands.
    src_y = int(offset[0] * max(new_h - height, 0) + 0.5) if new_h > height else 0
    src_x = int(offset[1] * max(new_w - width, 0) + 0.5) if new_w > width else 0
    dst_y = int(offset[0] * (height - new_h) + 0.5) if new_h < height else 0
    dst_x = int(offset[1] * (width - new_w) + 0.5) if new_w < width else 0
    ch, cw = min(new_h, height), min(new_w, width)
    out["image"][:, dst_y:dst_y + ch, dst_x:dst_x + cw] = image[:, src_y:src_y + ch, src_x:src_x + cw]
    out["label"][dst_y:dst_y + ch, dst_x:dst_x + cw] = label[src_y:src_y + ch, src_x:src_x + cw]
    out["valid"][dst_y:dst_y + ch, dst_x:dst_x + cw] = valid[src_y:src_y + ch, src_x:src_x + cw]
    return out


def copy_paste_mask(source_label: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The pixels Copy-Paste moves: every pixel of the source whose label is one of ``classes``
    (category-level Copy-Paste, AEL §3.3)."""
    return torch.isin(source_label, classes.to(source_label.device))


def ground_below(label: torch.Tensor, inside: torch.Tensor, reach: int, ignore_index: int) -> torch.Tensor:
    """(H, W): for every pixel, the first class below it in its column that lies outside ``inside``
    within ``reach`` rows ("the ground it stands on"); ``ignore_index`` where there is none."""
    found = torch.full_like(label, ignore_index)
    for k in range(min(reach, label.shape[-2] - 1), 0, -1):  # the nearest row last, so it wins
        below = torch.full_like(label, ignore_index)
        below[..., :-k, :] = label[..., k:, :]
        outside = torch.zeros_like(inside)
        outside[..., :-k, :] = ~inside[..., k:, :]
        found = torch.where(outside & (below != ignore_index), below, found)
    return found


def foot_pixels(moved: torch.Tensor) -> torch.Tensor:
    """(H, W) bool: the pixels of ``moved`` with no moved pixel right below them (an object's
    bottom edge, where it meets its ground)."""
    below = torch.zeros_like(moved)
    below[:-1] = moved[1:]
    return moved & ~below


def shift(sample: dict, dy: int, dx: int, ignore_index: int) -> dict:
    """``image`` (3,H,W), ``label`` and ``valid`` (H,W) moved by (dy, dx) pixels; what enters is
    padding (image 0, label ``ignore_index``, valid False), what leaves is dropped."""
    h, w = sample["label"].shape
    out = {"image": sample["image"].new_zeros(sample["image"].shape),
           "label": sample["label"].new_full((h, w), ignore_index),
           "valid": sample["valid"].new_zeros((h, w))}
    src_y, dst_y = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
    src_x, dst_x = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
    if src_y.start < src_y.stop and src_x.start < src_x.stop:
        out["image"][:, dst_y, dst_x] = sample["image"][:, src_y, src_x]
        out["label"][dst_y, dst_x] = sample["label"][src_y, src_x]
        out["valid"][dst_y, dst_x] = sample["valid"][src_y, src_x]
    return out
