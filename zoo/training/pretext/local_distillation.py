"""Self-distillation with local and cross-dimensional targets: PGL (review [85]) matches the
EMA target's features of the same anatomy seen in two overlapping crops; UniMiSS+ ([86])
joins DINO-style distillation, slice-volume consistency and masked reconstruction."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import photometric
from . import losses
from .base import EMA, Decoder, Objective, ObjectiveError, feature_map, mlp, standardise
from .generative import blank


@dataclass
class CropPair:
    """Two crops of each image whose geometry is known, in tensor axis order (D, H, W).

    View i of sample b shows voxels [start[b, i], start[b, i] + size) of the image, read
    through `turn[b, i]`: the view's normalised coordinate u lands at crop coordinate
    turn @ u (a flip or an in-plane quarter turn, so the crop box maps onto itself)."""

    start: torch.Tensor  # (B, 2, d) integer voxel starts
    size: list[int]  # crop side per axis, voxels
    image: list[int]  # image size per axis
    turn: torch.Tensor  # (B, 2, d, d) signed permutation matrices

    def box(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and half-side of crop i in the image's normalised coordinates (the
        align_corners=False convention of grid_sample: -1 and 1 are the outer edges)."""
        s = self.start[:, i].float()
        size = torch.tensor(self.size, dtype=torch.float32, device=s.device)
        image = torch.tensor(self.image, dtype=torch.float32, device=s.device)
        return (2 * s + size) / image - 1, size / image

    def overlap(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper corner (B, d) of the region both crops show, normalised."""
        (c1, h1), (c2, h2) = self.box(0), self.box(1)
        return torch.maximum(c1 - h1, c2 - h2), torch.minimum(c1 + h1, c2 + h2)


def _need_cnn(encoder: nn.Module) -> None:
    """Refuse a ViT when the objective is built, not at its first step: both objectives
    read the last convolutional map."""
    if not isinstance(encoder, ResNetEncoder):
        raise ObjectiveError("this objective needs a convolutional (resnet) encoder")


def _centres(n: int, device: torch.device) -> torch.Tensor:
    """Normalised centres of n cells spanning [-1, 1]."""
    return (2 * torch.arange(n, device=device, dtype=torch.float32) + 1) / n - 1


def _mesh(lo: torch.Tensor, hi: torch.Tensor, out: list[int]) -> torch.Tensor:
    """(B, *out, d) cell-centre points of the boxes [lo, hi] (B, d), tensor axis order."""
    b, d = lo.shape
    axes = []
    for a, n in enumerate(out):
        t = (_centres(n, lo.device) + 1) / 2  # in (0, 1)
        shape = [b] + [1] * d
        shape[1 + a] = n
        axes.append((lo[:, a, None] + (hi - lo)[:, a, None] * t).view(shape).expand(b, *out))
    return torch.stack(axes, -1)


def _grid(points: torch.Tensor) -> torch.Tensor:
    """Tensor-order points to grid_sample's (x, y[, z]) = (W, H[, D]) order."""
    return points.flip(-1)


def draw_crops(shape: list[int], crop: list[int], overlap_min: float, ops: set[str],
               gen: torch.Generator | None, device: torch.device) -> CropPair:
    """Two crops per image of side `crop`, overlapping by at least `overlap_min` of a crop.

    The second crop is shifted from the first by at most (1 - q) of the side on every axis,
    q = overlap_min ** (1 / d), so the shared volume is at least q ** d = overlap_min. Flips
    (horizontal: W, vertical: H) and quarter turns in the H-W plane are drawn as the policy
    allows, independently per view."""
    b, size = shape[0], list(shape[2:])
    d = len(size)
    q = overlap_min ** (1 / d)
    side = torch.tensor(crop, device=device)
    room = torch.tensor([s - c for s, c in zip(size, crop, strict=True)], device=device)
    first = (rng.rand((b, d), gen, device) * (room + 1)).floor().long().clamp(max=room)
    reach = torch.floor(side * (1 - q) + 1e-6).long()
    lo, hi = (first - reach).clamp(min=0), torch.minimum(first + reach, room)
    second = lo + (rng.rand((b, d), gen, device) * (hi - lo + 1)).floor().long()
    second = torch.minimum(second, hi)
    turn = torch.eye(d, device=device).repeat(b, 2, 1, 1)
    flip = torch.ones(b, 2, d, device=device)
    if "horizontal_flip" in ops:
        flip[..., -1] = torch.where(rng.rand((b, 2), gen, device) < 0.5, -1.0, 1.0)
    if "vertical_flip" in ops:
        flip[..., -2] = torch.where(rng.rand((b, 2), gen, device) < 0.5, -1.0, 1.0)
    if "rotation_90" in ops:
        k = rng.randint(0, 4, (b, 2), gen, device).float() * (math.pi / 2)
        cos, sin = torch.cos(k).round(), torch.sin(k).round()
        turn[..., -2, -2], turn[..., -2, -1] = cos, -sin
        turn[..., -1, -2], turn[..., -1, -1] = sin, cos
    turn = turn * flip[..., None, :]
    return CropPair(torch.stack([first, second], 1), list(crop), size, turn)


def render(x: torch.Tensor, pair: CropPair, i: int) -> torch.Tensor:
    """View i of every image: its crop, turned, at the crop's own voxel resolution. Each
    output voxel lands on a voxel centre of the image, so an unturned view is an exact
    copy of the crop."""
    centre, half = pair.box(i)
    shape = (-1, *[1] * len(pair.size), len(pair.size))
    with torch.autocast(x.device.type, enabled=False):  # a bf16 einsum breaks exactness
        u = _mesh(-torch.ones_like(centre), torch.ones_like(centre), pair.size)
        p = centre.view(shape) + half.view(shape) * torch.einsum(
            "bij,b...j->b...i", pair.turn[:, i].float(), u)
        return F.grid_sample(x.float(), _grid(p), mode="bilinear", padding_mode="border",
                             align_corners=False)


def overlap_grid(pair: CropPair, i: int, out: list[int]) -> torch.Tensor:
    """Where, in view i's normalised coordinates, the `out` cell centres of the shared
    region lie: grid_sample with it reads both views at the same anatomical points."""
    lo, hi = pair.overlap()
    centre, half = pair.box(i)
    shape = (-1, *[1] * len(out), len(out))
    with torch.autocast(centre.device.type, enabled=False):
        crop_coords = (_mesh(lo, hi, out) - centre.view(shape)) / half.view(shape)
        # turn is a signed permutation: its inverse is its transpose.
        return _grid(torch.einsum("bji,b...j->b...i", pair.turn[:, i].float(), crop_coords))


def sample(fmap: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """RoIAlign-style bilinear read of a feature map at grid points, in fp32."""
    return F.grid_sample(fmap.float(), grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def _rows(f: torch.Tensor) -> torch.Tensor:
    """(B, C, *s) -> (B * prod(s), C): one row per location."""
    return f.flatten(2).transpose(1, 2).reshape(-1, f.shape[1])


def local_consistency(p1: torch.Tensor, z1: torch.Tensor, p2: torch.Tensor,
                      z2: torch.Tensor) -> torch.Tensor:
    """PGL's symmetric loss: each view's prediction at every aligned location against the
    other view's target there, negative cosine averaged over locations (min -1)."""
    return (losses.negative_cosine(p1.float(), z2.float())
            + losses.negative_cosine(p2.float(), z1.float())) / 2


class PGL(Objective):
    """Prior-guided local self-distillation (Xie et al. 2020, review [85]).

    Two crops of the same image with known boxes (and known flips or quarter turns) go to
    an online encoder with projector and predictor and to its EMA target. The region both
    crops show is read from each view's last feature map on one common grid (bilinear,
    RoIAlign-style, the grid size being the views' feature-map size), so location k of one
    map and location k of the other are the same anatomy; the online prediction must match
    the target projection there, per location and symmetrically. The loss is local only,
    as the paper describes it; a global term would mostly repeat it, since the crops
    overlap. The paper works with an encoder-decoder network; with an encoder alone we
    align its last map. The crops replace the policy's random resized crop (they always
    apply: without them both views coincide); free rotations are not applied (the shared
    region would no longer be a box); the policy's intensity and noise operations are,
    per view.

    `crop_size` is in voxels, axes (D, H, W); a 2D image uses its last two entries. Each
    side is capped at ceil(S / (2 - q)) for an image side S, q = overlap_min ** (1 / d):
    at that side two crops anywhere in the image still share overlap_min, so a small image
    (28 voxels: 22 in 3D, 20 in 2D at overlap_min 0.3) is cropped in the same proportion
    as the paper's large CT volumes would be, rather than not at all.
    """

    def __init__(self, encoder: nn.Module, ema_momentum: float = 0.99,
                 crop_size: list[int] | tuple[int, ...] | int = (96, 96, 96),
                 overlap_min: float = 0.3, projection_dim: int = 128, predictor_hidden: int = 512):
        super().__init__()
        _need_cnn(encoder)
        if not 0 < overlap_min <= 1:
            raise ObjectiveError(f"overlap_min must be in (0, 1], got {overlap_min}")
        crop = [int(crop_size)] * 3 if isinstance(crop_size, int) else [int(c) for c in crop_size]
        if len(crop) not in (2, 3) or min(crop) < 1:
            raise ObjectiveError(f"crop_size must list 2 or 3 positive sides, got {crop_size}")
        self.encoder, self.crop, self.overlap_min = encoder, crop, overlap_min
        d = encoder.feature_dim
        self.projector = mlp(d, 2 * d, projection_dim)
        self.predictor = mlp(projection_dim, predictor_hidden, projection_dim)
        self.target = EMA(nn.ModuleDict({"encoder": encoder, "projector": self.projector}),
                          ema_momentum)

    def crop_for(self, size: list[int]) -> list[int]:
        """The crop side per axis for an image of `size` (see the class docstring)."""
        if len(size) > len(self.crop):
            raise ObjectiveError(f"crop_size {self.crop} has too few axes for {size}")
        q = self.overlap_min ** (1 / len(size))
        return [max(1, min(c, math.ceil(s / (2 - q) - 1e-9)))
                for c, s in zip(self.crop[-len(size):], size, strict=True)]

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        pair = draw_crops(list(x.shape), self.crop_for(list(x.shape[2:])), self.overlap_min,
                          policy.ops, gen, x.device)
        views = [standardise(photometric(render(x, pair, i), policy, gen)) for i in (0, 1)]
        online = [feature_map(self.encoder, v) for v in views]
        out = list(online[0].shape[2:])
        grids = [overlap_grid(pair, i, out) for i in (0, 1)]
        preds = [self.predictor(self.projector(_rows(sample(f, g).to(f.dtype))))
                 for f, g in zip(online, grids, strict=True)]
        with torch.no_grad():
            target = self.target.at(x.device)
            zs = [target["projector"](_rows(sample(feature_map(target["encoder"], v), g)
                                            .to(v.dtype)))
                  for v, g in zip(views, grids, strict=True)]
        return local_consistency(preds[0], zs[0], preds[1], zs[1])

    def after_step(self) -> None:
        self.target.update(nn.ModuleDict({"encoder": self.encoder,
                                          "projector": self.projector}))


def patch_mask(shape: torch.Size, patch: int, ratio: float, gen: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """(B, 1, *spatial), 1 on a random `ratio` of the patch grid (patches of side `patch`)."""
    b, size = shape[0], list(shape[2:])
    cells = [math.ceil(s / patch) for s in size]
    mask = (rng.rand((b, 1, *cells), gen, device) < ratio).float()
    for axis in range(len(size)):
        mask = mask.repeat_interleave(patch, dim=2 + axis)
    return mask[(..., *[slice(0, s) for s in size])]


def tile_slice(v: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Slice `index[b]` of each volume along D, repeated over D: a pseudo-volume that holds
    exactly what a 2D slice holds."""
    b, c, depth, h, w = v.shape
    one = v.gather(2, index.view(b, 1, 1, 1, 1).expand(b, c, 1, h, w))
    return one.expand(b, c, depth, h, w)


class DINOHead(nn.Module):
    """DINO's projection head: an MLP to an l2-normalised bottleneck, then cosine scores
    against `output_dim` normalised prototypes (the paper's weight-normalised last layer with
    its gain fixed at 1). Bounded logits keep the student from growing overconfident faster
    than the EMA teacher can follow: with a plain linear output (1024 prototypes) the cross
    entropy climbed from 6.5 to 10 nats in 20 steps on PneumoniaMNIST; with this head it
    stays near 7 while its KL part falls."""

    def __init__(self, dim_in: int, output_dim: int, bottleneck: int = 256):
        super().__init__()
        self.mlp = mlp(dim_in, 2 * dim_in, bottleneck)
        self.prototypes = nn.Parameter(torch.randn(output_dim, bottleneck) * 0.02)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.mlp(h)
        # Cosines in fp32: divided by a 0.04 temperature, bf16's 3 digits would be too few.
        with torch.autocast(z.device.type, enabled=False):
            return F.normalize(z.float(), dim=1) @ F.normalize(self.prototypes.float(),
                                                               dim=1).t()


class UniMiSSPlus(Objective):
    """UniMiSS+ (Xie et al. 2024, review [86]), within one CNN encoder of fixed
    dimensionality.

    The paper trains one switchable pyramid transformer on unpaired 2D X-rays and 3D CT
    together, with DINO-style distillation, slice-volume consistency, CT-to-DRR alignment
    and reconstruction. We have one data set of one dimensionality and a ResNet, so there
    is no 2D/3D switching and no DRR (no paired or rendered radiographs); what remains:
    (1) DINO between two augmented views (EMA teacher, centring, sharpening); the student
    sees them with a random `mask_ratio` of `mask_patch`-sided patches blanked, the teacher
    sees them whole; (2) a light decoder restores the blanked patches from the student's
    feature map (error on blanked pixels only); (3) for volumes, when
    `slice_volume_consistency` is on, one slice of the first view tiled along D into a
    pseudo-volume must give the teacher's output for the whole volume, the paper's
    slice-volume term with the slice carried by the 3D encoder. It is a third DINO pair,
    averaged with the two cross-view pairs; 2D images have no slices, so there it is off.
    """

    def __init__(self, encoder: nn.Module, ema_momentum: float = 0.996,
                 slice_volume_consistency: bool = True, output_dim: int = 1024,
                 teacher_temperature: float = 0.04, student_temperature: float = 0.1,
                 center_momentum: float = 0.9, mask_ratio: float = 0.5, mask_patch: int = 4,
                 reconstruction_weight: float = 1.0):
        super().__init__()
        _need_cnn(encoder)
        if not isinstance(slice_volume_consistency, bool):
            raise ObjectiveError("slice_volume_consistency must be true or false")
        self.encoder = encoder
        d = encoder.feature_dim
        dims = encoder.net.conv1.weight.dim() - 2
        self.head = DINOHead(d, output_dim)
        self.teacher = EMA(nn.Sequential(encoder, self.head), ema_momentum)
        # Light: never wider than the encoder's top map, or a small encoder would leave the
        # restoration to the decoder (and pay more for it than for itself).
        self.decoder = Decoder(d, encoder.net.conv1.in_channels, dims,
                               min(d, 64 if dims == 2 else 16))
        self.slice_volume = slice_volume_consistency
        self.t_s, self.t_t, self.center_momentum = (student_temperature, teacher_temperature,
                                                    center_momentum)
        self.mask_ratio, self.mask_patch = mask_ratio, mask_patch
        self.weight = reconstruction_weight
        self.register_buffer("center", torch.zeros(output_dim))
        self.last_terms: dict[str, torch.Tensor] = {}

    def _targets(self, teacher: torch.Tensor) -> torch.Tensor:
        """The teacher's centred, sharpened distribution (only for the record: the loss
        computes the same inside losses.dino_loss)."""
        return torch.softmax((teacher.float() - self.center) / self.t_t, dim=1)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        v1, v2 = self.views(x, policy, gen)
        restore, students = [], []
        for v in (v1, v2):
            mask = patch_mask(v.shape, self.mask_patch, self.mask_ratio, gen, v.device)
            f = feature_map(self.encoder, standardise(blank(v, mask)))
            students.append(self.head(f.flatten(2).mean(-1)))
            restored = self.decoder(f, list(v.shape[2:]))
            restore.append(losses.masked_pixel_mse(restored.float(), standardise(v), mask))
        with torch.no_grad():
            teacher = self.teacher.at(x.device)
            t1, t2 = teacher(standardise(v1)), teacher(standardise(v2))
        pairs = [(students[0], t2), (students[1], t1)]
        if self.slice_volume and x.dim() == 5:
            index = rng.randint(0, x.shape[2], (x.shape[0],), gen, x.device)
            pairs.append((self.head(self.encoder(standardise(tile_slice(v1, index)))), t1))
        distil = torch.stack([losses.dino_loss(s.float(), t.float(), self.center, self.t_s,
                                               self.t_t) for s, t in pairs]).mean()
        reconstruction = torch.stack(restore).mean()
        with torch.no_grad():
            # H(teacher) is the part of the cross entropy the student cannot lower; the
            # rest, KL(teacher || student), is what it learns to close.
            entropy = torch.stack([-(p * p.clamp(min=1e-12).log()).sum(1).mean()
                                   for p in (self._targets(t) for _, t in pairs)]).mean()
            self.last_terms = {"distillation": distil.detach(), "teacher_entropy": entropy,
                               "reconstruction": reconstruction.detach()}
            batch_center = torch.cat([t1, t2]).float().mean(0)
            self.center.mul_(self.center_momentum).add_(batch_center,
                                                        alpha=1 - self.center_momentum)
        return distil + self.weight * reconstruction

    def after_step(self) -> None:
        self.teacher.update(nn.Sequential(self.encoder, self.head))
