"""Temporal objectives (review 4.2.4, Jiao et al. [35]): frame order correction and
spatio-temporal transform prediction on video clips.

[35] trains both tasks together on fetal ultrasound video; the catalog lists them as two
methods, so they are two objectives here. The project has no video loader: a clip is a 3D
tensor whose first spatial axis is time, (B, C, T, H, W), encoded by a 3D encoder.
`clips_from_sequences` cuts such clips out of frames that carry a sequence id and a frame
number (e.g. CVC-ClinicDB colonoscopy frames); a volume's slices also form a frame stack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ViTEncoder

from .. import rng
from ..augment import Policy, geometric, photometric
from .base import Objective, ObjectiveError, standardise
from .predictive import all_permutations, permutation_set


def clips_from_sequences(images: np.ndarray | torch.Tensor, sequence_ids: Sequence[int],
                         frame_ids: Sequence[str], clip_length: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut frames into clips: uint8 (N, C, clip_length, H, W) and each clip's sequence id.

    Frames are ordered within a sequence by the numeric value of their id ("10" after "9"),
    then cut into consecutive non-overlapping clips; a sequence's short tail is dropped and
    no clip mixes sequences. `images` is uint8 (N, H, W), channels-last (N, H, W, 1|3) as
    the npz files store it, or channels-first (N, C, H, W)."""
    frames = torch.as_tensor(np.asarray(images))
    if frames.dtype != torch.uint8:
        raise ObjectiveError(f"frames must be uint8, got {frames.dtype}")
    if frames.dim() == 3:
        frames = frames[:, None]
    elif frames.dim() == 4 and frames.shape[-1] in (1, 3):
        frames = frames.permute(0, 3, 1, 2)
    elif frames.dim() != 4:
        raise ObjectiveError(f"frames must be (N, H, W), (N, H, W, C) or (N, C, H, W); got "
                             f"{tuple(frames.shape)}")
    seqs = [int(s) for s in sequence_ids]
    try:
        numbers = [int(f) for f in frame_ids]
    except ValueError:
        raise ObjectiveError("frame ids must be frame numbers (e.g. '12')") from None
    if not len(seqs) == len(numbers) == frames.shape[0]:
        raise ObjectiveError(f"{frames.shape[0]} frames, {len(seqs)} sequence ids and "
                             f"{len(numbers)} frame ids: they must match")
    if clip_length < 1:
        raise ObjectiveError(f"clip_length must be at least 1, got {clip_length}")
    clips, owners = [], []
    for seq in sorted(set(seqs)):
        members = sorted((n, i) for i, (s, n) in enumerate(zip(seqs, numbers, strict=True))
                         if s == seq)
        if len({n for n, _ in members}) != len(members):
            raise ObjectiveError(f"sequence {seq} has a repeated frame id")
        order = [i for _, i in members]
        for start in range(0, len(order) - clip_length + 1, clip_length):
            clips.append(frames[order[start:start + clip_length]].transpose(0, 1))
            owners.append(seq)
    if not clips:
        shape = (0, frames.shape[1], clip_length, *frames.shape[2:])
        return torch.empty(shape, dtype=torch.uint8), torch.empty(0, dtype=torch.long)
    return torch.stack(clips), torch.tensor(owners, dtype=torch.long)


@lru_cache(maxsize=16)
def frame_orders(clip_length: int, count: int) -> torch.Tensor:
    """`count` fixed orders of `clip_length` frames, the identity first: every order when
    all are asked for, else far apart in Hamming distance (predictive.permutation_set, whose
    greedy search is slow at the catalog's 24 of 24, hence the shortcut and the cache)."""
    if count == math.factorial(clip_length):
        return all_permutations(clip_length)
    return permutation_set(clip_length, count)


def _check_3d(encoder: nn.Module, method: str) -> None:
    dims = getattr(encoder, "monai_kwargs", {}).get("spatial_dims")
    if dims != 3:
        got = f"a {dims}D encoder" if dims else "an encoder of unknown dimensionality"
        raise ObjectiveError(f"{method} needs a 3D encoder: clips are (C, T, H, W), time being "
                             f"the first spatial axis; got {got}")


def _check_clip(x: torch.Tensor, method: str) -> None:
    if x.dim() != 5:
        raise ObjectiveError(f"{method} needs clips (B, C, T, H, W); got shape "
                             f"{tuple(x.shape)}")
    if x.shape[2] < 2:
        raise ObjectiveError(f"{method} needs clips of at least 2 frames; got {x.shape[2]}")


def _encode(encoder: nn.Module, clip: torch.Tensor) -> torch.Tensor:
    """Encode a clip; a ViT, whose token grid is fixed, gets each frame repeated to fill its
    temporal extent (so a temporal patch holds copies of one frame when T divides it)."""
    if isinstance(encoder, ViTEncoder) and clip.shape[2] != encoder.img_size[0]:
        depth, t = encoder.img_size[0], clip.shape[2]
        if depth % t:
            raise ObjectiveError(f"a ViT built for {depth} frames cannot take clips of {t}: "
                                 "the clip length must divide it")
        clip = clip.repeat_interleave(depth // t, dim=2)
    return encoder(standardise(clip))


def augment_clip(x: torch.Tensor, policy: Policy, gen: torch.Generator | None,
                 spatial: bool = True) -> torch.Tensor:
    """One random view of a clip batch, the same for all its frames: the geometric ops act
    per frame in (H, W) (on a 5D tensor they would rotate and crop along time), with time
    folded into channels so that every frame of a clip gets one transform."""
    b, c, t, h, w = x.shape
    if spatial:
        x = geometric(x.reshape(b, c * t, h, w), policy, gen).reshape(b, c, t, h, w)
    return photometric(x, policy, gen)


class TemporalOrder(Objective):
    """Frame order correction (Jiao et al. [35]): shuffle the frames of a clip with one of
    `permutations` fixed permutations (far apart in Hamming distance, identity included)
    and classify which one was applied.

    Clips longer than `clip_length` are cut to their first `clip_length` frames (cut whole
    sequences with `clips_from_sequences` to use every frame). The paper uses ultrasound
    video; without a video loader here, any frame stack ordered in time (or depth) will do.
    The reversed order is a class like any other (at 24 of 24 orders all are there), though
    a reversed clip can look like plausible motion, which bounds how low the loss can go."""

    def __init__(self, encoder: nn.Module, clip_length: int = 4, permutations: int = 24):
        super().__init__()
        _check_3d(encoder, "temporal_order")
        if int(clip_length) != clip_length or clip_length < 2:
            raise ObjectiveError(f"clip_length must be an integer of at least 2, got "
                                 f"{clip_length}")
        most = math.factorial(int(clip_length))
        if int(permutations) != permutations or not 2 <= permutations <= most:
            raise ObjectiveError(f"permutations must be an integer from 2 to clip_length! = "
                                 f"{most}, got {permutations}")
        self.encoder = encoder
        self.clip_length = int(clip_length)
        perms = frame_orders(self.clip_length, int(permutations)).clone()
        if len({tuple(p.tolist()) for p in perms}) != len(perms):
            raise ObjectiveError(f"could not draw {permutations} distinct orders of "
                                 f"{clip_length} frames; ask for fewer")
        self.register_buffer("perms", perms)
        self.head = nn.Linear(encoder.feature_dim, int(permutations))

    def shuffle(self, x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame t of the output is frame perms[label][t] of the input."""
        label = rng.randint(0, len(self.perms), (x.shape[0],), gen, x.device)
        idx = self.perms[label]  # (B, T)
        b, c, t, h, w = x.shape
        return torch.gather(x, 2, idx.view(b, 1, t, 1, 1).expand_as(x)), label

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        _check_clip(x, "temporal_order")
        if x.shape[2] < self.clip_length:
            raise ObjectiveError(f"temporal_order has clip_length {self.clip_length} but the "
                                 f"clips have {x.shape[2]} frames")
        return x[:, :, :self.clip_length]

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        x = augment_clip(self.clip(x), policy, gen)
        shuffled, label = self.shuffle(x, gen)
        logits = self.head(_encode(self.encoder, shuffled))
        return F.cross_entropy(logits.float(), label)


# Parameters of each transform (affine_grid convention: the grid maps output to input
# coordinates in [-1, 1]) and the largest magnitude drawn; targets are divided by it.
TRANSFORMS: dict[str, tuple[tuple[str, ...], float]] = {
    "translation": (("tx", "ty"), 0.25),  # up to 1/8 of the frame side
    "scale": (("log_scale",), 0.2),  # zoom by exp(+-0.2): 0.82 to 1.22
    "rotation": (("angle",), math.pi / 9),  # +-20 degrees
    "shear": (("shear",), 0.25),  # x += 0.25 y at most
}


def affine_frames(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Warp every frame of clips (B, C, T, H, W) by its own affine transform. `params` maps a
    parameter name of TRANSFORMS to its (B, T) values (missing ones are the identity); the
    2x2 part is rotation @ shear @ scale, out-of-view pixels are black (zero padding)."""
    b, c, t, h, w = x.shape
    zero = torch.zeros(b, t, device=x.device)
    p = {name: params.get(name, zero).float() for name in
         ("tx", "ty", "log_scale", "angle", "shear")}
    s, cos, sin, k = p["log_scale"].exp(), p["angle"].cos(), p["angle"].sin(), p["shear"]
    # [[cos, -sin], [sin, cos]] @ [[1, k], [0, 1]] @ s I
    theta = torch.stack([torch.stack([cos * s, (cos * k - sin) * s, p["tx"]], -1),
                         torch.stack([sin * s, (sin * k + cos) * s, p["ty"]], -1)], -2)
    frames = x.transpose(1, 2).reshape(b * t, c, h, w)
    grid = F.affine_grid(theta.reshape(b * t, 2, 3), [b * t, c, h, w], align_corners=False)
    out = F.grid_sample(frames.float(), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.to(x.dtype).reshape(b, t, c, h, w).transpose(1, 2)


class SpatioTemporalTransform(Objective):
    """Spatio-temporal transform prediction (Jiao et al. [35]): warp the frames of a clip by
    an affine transform whose parameters change linearly over time, and regress them.

    Every transform in `transforms` is applied at once, composed in a fixed order, each
    parameter drawn uniformly within TRANSFORMS' bound at the first and at the last frame
    and interpolated in between; the head regresses all of them (first and last frame,
    scaled to [-1, 1]) by mean squared error. We regress rather than classify a transform
    type: the review describes the task as identifying the parameters; with a fixed
    composition order they identify the warp, and a small drawn magnitude is then a small
    target instead of an unidentifiable class. The paper warps ultrasound clips, whose
    sector edges show the geometry; here out-of-view pixels are black so that the frame's
    border does, and only photometric augmentations are applied (a random crop or flip
    would change the target)."""

    def __init__(self, encoder: nn.Module, transforms: Sequence[str] = tuple(TRANSFORMS)):
        super().__init__()
        _check_3d(encoder, "spatiotemporal_transform")
        if isinstance(transforms, str):
            transforms = [transforms]
        unknown = [t for t in transforms if t not in TRANSFORMS]
        if unknown or not transforms or len(set(transforms)) != len(transforms):
            raise ObjectiveError(f"transforms must be distinct names among "
                                 f"{', '.join(TRANSFORMS)}; got {list(transforms)}")
        self.encoder = encoder
        self.transforms = [t for t in TRANSFORMS if t in transforms]
        names = [(n, TRANSFORMS[t][1]) for t in self.transforms for n in TRANSFORMS[t][0]]
        self.names = [n for n, _ in names]
        self.register_buffer("bounds", torch.tensor([bound for _, bound in names]))
        self.head = nn.Linear(encoder.feature_dim, 2 * len(self.names))

    def draw(self, x: torch.Tensor, gen: torch.Generator | None
             ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Per-frame parameters {name: (B, T)} and the target (B, 2 * P): the scaled
        parameters at the first frame, then at the last."""
        b, t = x.shape[0], x.shape[2]
        target = rng.rand((b, 2, len(self.names)), gen, x.device) * 2 - 1
        ramp = torch.linspace(0, 1, t, device=x.device).view(1, t, 1)
        per_frame = (target[:, :1] + (target[:, 1:] - target[:, :1]) * ramp) * self.bounds
        params = {n: per_frame[:, :, i] for i, n in enumerate(self.names)}
        return params, target.reshape(b, -1)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        _check_clip(x, "spatiotemporal_transform")
        x = augment_clip(x, policy, gen, spatial=False)
        params, target = self.draw(x, gen)
        pred = self.head(_encode(self.encoder, affine_frames(x, params)))
        return F.mse_loss(pred.float(), target)
