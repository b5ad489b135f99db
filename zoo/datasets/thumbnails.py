"""A PNG montage of a few training images, each with its mask overlaid: the quickest check
that masks lie on the structures (a flipped or shifted mask shows at a glance) and that
the images look like the modality the user named.

Volumes show one axial slice (the last axis; RAS+ for NIfTI and DICOM): the middle slice of
the mask's foreground when it has one, else the middle of the volume, rotated so that
anterior is up and the patient's right is on the right (neurological convention).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from .base import Dataset

TILE = 128  # pixels on the longer side of each tile
COLUMNS = 4
ALPHA = 0.45  # mask opacity
# Overlay colours for classes 1, 2, ... (background is left clear); repeats past eight.
PALETTE = np.array([(255, 59, 48), (52, 199, 89), (0, 122, 255), (255, 204, 0),
                    (175, 82, 222), (255, 149, 0), (90, 200, 250), (255, 45, 85)],
                   dtype=np.float32)
CAPTION = 14  # pixels of text under each tile


def middle_slice(volume: np.ndarray, mask: np.ndarray | None) -> int:
    """Index along the last axis: the middle of the foreground's extent, else the middle."""
    if mask is not None and mask.any():
        present = np.nonzero(mask.reshape(-1, mask.shape[-1]).any(axis=0))[0]
        return int((present[0] + present[-1]) // 2)
    return volume.shape[-1] // 2


def _planes(image: np.ndarray, mask: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray | None]:
    """(H, W, 3) uint8 and (H, W) mask from a (C, *spatial) image and (*spatial) mask."""
    if image.ndim == 4:  # (C, X, Y, Z): one axial slice, anterior up
        k = middle_slice(image, mask)
        image = np.rot90(image[..., k], axes=(1, 2))
        mask = None if mask is None else np.rot90(mask[..., k])
    rgb = np.repeat(image, 3, axis=0) if image.shape[0] == 1 else image[:3]
    return np.ascontiguousarray(rgb.transpose(1, 2, 0)), mask


def _edges(plane: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another class (the mask's outline)."""
    padded = np.pad(plane, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    differs = ((padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
               | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre))
    return differs & (plane > 0)


def overlay(image: np.ndarray, mask: np.ndarray | None) -> Image.Image:
    """One tile: the image with each mask class in its colour at ALPHA opacity."""
    rgb, plane = _planes(image, mask)
    out = rgb.astype(np.float32)
    if plane is not None:
        fg = plane > 0
        colours = PALETTE[(plane[fg].astype(np.int64) - 1) % len(PALETTE)]
        out[fg] = (1 - ALPHA) * out[fg] + ALPHA * colours
        edge = _edges(plane)  # drawn opaque, so a mask shows on images of its own colour
        out[edge] = PALETTE[(plane[edge].astype(np.int64) - 1) % len(PALETTE)]
    tile = Image.fromarray(np.round(out).astype(np.uint8))
    scale = TILE / max(tile.size)
    size = (max(1, round(tile.width * scale)), max(1, round(tile.height * scale)))
    return tile.resize(size, Image.Resampling.NEAREST)


def _legend(classes: list[str], width: int) -> Image.Image:
    strip = Image.new("RGB", (width, CAPTION + 6), "black")
    draw, x = ImageDraw.Draw(strip), 4
    for i, name in enumerate(classes[1:], start=1):
        colour = tuple(int(c) for c in PALETTE[(i - 1) % len(PALETTE)])
        draw.rectangle((x, 4, x + 10, 14), fill=colour)
        draw.text((x + 14, 3), name[:24], fill="white")
        x += 24 + 7 * min(len(name), 24)
        if x > width - 40:
            break
    return strip


def montage(ds: Dataset, count: int = 8) -> bytes:
    """PNG bytes: up to `count` train images spread evenly over the split, captioned with
    their case id (and class, for a labelled set), with a legend of mask classes."""
    split = ds.splits["train"]
    n = min(count, len(split))
    picks = np.unique(np.linspace(0, len(split) - 1, n).round().astype(int)) if n else []
    ids = ds.info.get("cases", {}).get("train", {}).get("ids") or []
    names = ds.info.get("labels") or []
    tiles, captions = [], []
    for i in picks:
        mask = None if split.masks is None else split.masks[i].numpy()
        tiles.append(overlay(split.images[i].numpy(), mask))
        caption = str(ids[i]) if i < len(ids) else f"#{i}"
        if split.labels is not None:
            label = int(split.labels[i])
            caption += f" - {names[label] if label < len(names) else label}"
        captions.append(caption[:22])
    columns = max(1, min(COLUMNS, len(tiles)))
    rows = max(1, -(-len(tiles) // columns))
    cell_w = max((t.width for t in tiles), default=TILE)
    cell_h = max((t.height for t in tiles), default=TILE) + CAPTION
    classes = ds.info.get("mask_classes") if split.masks is not None else None
    legend = _legend(classes, columns * cell_w) if classes else None
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h + (legend.height if legend
                                                                 else 0)), "black")
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        x, y = (k % columns) * cell_w, (k // columns) * cell_h
        sheet.paste(tile, (x, y))
        draw.text((x + 2, y + tile.height + 1), caption, fill="white")
    if legend:
        sheet.paste(legend, (0, rows * cell_h))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", optimize=True)
    return buf.getvalue()
