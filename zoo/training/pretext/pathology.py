"""Self-Path (Koohbanani et al. 2021, review [38]): pathology-specific pretext tasks
(magnification prediction, magnification jigsaw, haematoxylin prediction) trained together
with generic ones (rotation, flip) on one shared encoder, one head per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import Policy, augment
from .base import Decoder, Objective, ObjectiveError, feature_map, standardise
from .predictive import _untile, all_permutations

TASKS = ("magnification_prediction", "magnification_jigsaw", "hematoxylin_prediction",
         "rotation", "flip")
GREY_TASKS = tuple(t for t in TASKS if t != "hematoxylin_prediction")

# Zoom factors standing in for magnification levels: a zoom z shows the central 1/z of the
# tile's side at full size, as a z-times higher magnification of the same spot would.
ZOOMS = (1.0, 1.5, 2.0, 3.0)
GRID = [2, 2]  # the magnification jigsaw: one tile per zoom, so 4! = 24 arrangements

# Ruifrok & Johnston 2001, "Quantification of histochemical staining by color
# deconvolution", Anal. Quant. Cytol. Histol. 23(4):291-299: optical-density RGB vectors of
# haematoxylin, eosin and DAB (rows; normalised to unit length below).
STAINS = torch.tensor([[0.650, 0.704, 0.286],
                       [0.072, 0.990, 0.105],
                       [0.268, 0.570, 0.776]])
_UNMIX = torch.linalg.inv(F.normalize(STAINS, dim=1))  # od = c @ M, so c = od @ M^-1

# Geometric augmentations that would make a task's label ambiguous: a vertical flip is a
# horizontal flip turned by 180 degrees, and a random crop changes the apparent zoom.
_CONFLICTS = {
    "rotation": {"rotation_90", "rotation_free", "vertical_flip"},
    "flip": {"horizontal_flip", "vertical_flip"},
    "magnification_prediction": {"random_resized_crop"},
    "magnification_jigsaw": {"random_resized_crop"},
}


def hematoxylin(x: torch.Tensor) -> torch.Tensor:
    """Haematoxylin concentration (B, 1, H, W) of RGB images in [0, 1] by colour
    deconvolution: optical density -log10(I) is a linear mix of the stain vectors, so the
    inverse of the stain matrix unmixes it (Ruifrok & Johnston 2001)."""
    with torch.autocast(x.device.type, enabled=False):  # the target stays fp32 on a GPU
        od = -torch.log10(x.float().clamp(min=1 / 255, max=1.0))
        return torch.einsum("bchw,c->bhw", od, _UNMIX[:, 0].to(od.device))[:, None]


def zoom(x: torch.Tensor, factors: torch.Tensor, size: list[int]) -> torch.Tensor:
    """The central 1/factor of each image (factors: (B,)), resampled to `size`."""
    b = x.shape[0]
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factors.to(x.device, torch.float32)
    grid = F.affine_grid(theta, [b, x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border",
                         align_corners=False)


class SelfPath(Objective):
    """Multi-task pretext of Self-Path on a 2D CNN; the loss is the sum of the task losses.

    The paper reads tiles at several scanner magnifications from whole-slide pyramids; we
    have single-magnification tiles, so a 'magnification' is a zoom factor (ZOOMS) applied
    to a centre crop resized back to the tile size: magnification prediction classifies
    which zoom a view was made with, and the magnification jigsaw places the four zooms of
    one tile on a 2x2 grid in one of the 24 orders and classifies the order. Upsampling
    softens the higher zooms, so part of that signal is sharpness rather than tissue
    scale. Haematoxylin prediction regresses the colour-deconvolved haematoxylin channel
    from the RGB tile with a light decoder, so it needs 3-channel input. Rotation is the
    4-way rot90 classification and flip a binary left-right flip. Each task's view goes
    through the encoder in one concatenated batch, and the geometric augmentations that
    would blur a task's label (rotations and vertical flips for rotation, flips for flip,
    random crops for the zoom tasks) are left out of the policy. The paper's autoencoding
    and domain-adversarial heads are not among the catalog's tasks and are not built."""

    def __init__(self, encoder: nn.Module, tasks: list[str] | None = None):
        super().__init__()
        self.encoder = encoder
        net = getattr(encoder, "net", None)
        if net is None or not hasattr(net, "layer4") or net.conv1.weight.dim() != 4:
            raise ObjectiveError("self_path needs a 2D convolutional (resnet) encoder")
        channels = net.conv1.in_channels
        usable = TASKS if channels == 3 else GREY_TASKS
        tasks = list(usable if tasks is None else tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown or not tasks:
            raise ObjectiveError(f"self_path tasks must be a non-empty subset of "
                                 f"{', '.join(TASKS)}; got {tasks}")
        if "hematoxylin_prediction" in tasks and channels != 3:
            raise ObjectiveError(f"hematoxylin_prediction needs RGB (3-channel) input, got "
                                 f"{channels}; on grey images use {', '.join(GREY_TASKS)}")
        self.tasks = [t for t in TASKS if t in tasks]  # fixed order, no duplicates
        d = encoder.feature_dim
        self.register_buffer("perms", all_permutations(len(ZOOMS)))
        outputs = {"magnification_prediction": len(ZOOMS), "magnification_jigsaw":
                   len(self.perms), "rotation": 4, "flip": 1}
        self.heads = nn.ModuleDict({t: nn.Linear(d, n) for t, n in outputs.items()
                                    if t in self.tasks})
        if "hematoxylin_prediction" in self.tasks:
            self.decoder = Decoder(d, 1, 2, width=32)

    def safe_policy(self, policy: Policy) -> Policy:
        drop = set().union(*(_CONFLICTS.get(t, set()) for t in self.tasks))
        return Policy(set(policy.ops) - drop, policy.crop_scale)

    def magnified(self, x: torch.Tensor, gen: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        label = rng.randint(0, len(ZOOMS), (x.shape[0],), gen, x.device)
        factors = torch.tensor(ZOOMS, device=x.device)[label]
        return zoom(x, factors, list(x.shape[2:])), label

    def puzzle(self, x: torch.Tensor, gen: torch.Generator | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tiles of one image at every zoom, arranged on the grid in a drawn order: tile
        position i holds zoom perms[label][i]."""
        b, size = x.shape[0], list(x.shape[2:])
        tile = [(s + 1) // 2 for s in size]
        tiles = torch.stack([zoom(x, torch.full((b,), z), tile) for z in ZOOMS], 1)
        label = rng.randint(0, len(self.perms), (b,), gen, x.device)
        idx = self.perms[label].view(b, -1, 1, 1, 1).expand_as(tiles)
        board = _untile(torch.gather(tiles, 1, idx), GRID)
        return board[..., :size[0], :size[1]], label

    @staticmethod
    def rotated(x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        k = rng.randint(0, 4, (x.shape[0],), gen, x.device)
        turns = torch.stack([torch.rot90(x, r, dims=(-2, -1)) for r in range(4)])
        return turns[k, torch.arange(x.shape[0], device=x.device)], k

    @staticmethod
    def flipped(x: torch.Tensor, gen: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        flip = rng.rand((x.shape[0],), gen, x.device) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x), flip.float()

    def task_views(self, x: torch.Tensor, gen: torch.Generator | None
                   ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each task's encoder input and target, in self.tasks order."""
        make = {"magnification_prediction": self.magnified, "magnification_jigsaw": self.puzzle,
                "hematoxylin_prediction": lambda v, _: (v, hematoxylin(v)),
                "rotation": self.rotated, "flip": self.flipped}
        return {t: make[t](x, gen) for t in self.tasks}

    def task_losses(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
                    ) -> dict[str, torch.Tensor]:
        """Each task's loss (fp32) on one batch; the objective's loss is their sum."""
        if x.dim() != 4:
            raise ObjectiveError("self_path is a 2D objective: images (B, C, H, W)")
        side = min(x.shape[-2:])  # rotations need square tiles
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        x = augment(x[..., top:top + side, left:left + side], self.safe_policy(policy), gen)
        views = self.task_views(x, gen)
        f = feature_map(self.encoder, standardise(torch.cat([v for v, _ in views.values()])))
        out = {}
        for part, (task, (_, target)) in zip(f.split(x.shape[0]), views.items(), strict=True):
            if task == "hematoxylin_prediction":
                out[task] = F.mse_loss(self.decoder(part, [side, side]).float(), target)
                continue
            logits = self.heads[task](part.flatten(2).mean(-1)).float()
            out[task] = (F.binary_cross_entropy_with_logits(logits[:, 0], target)
                         if task == "flip" else F.cross_entropy(logits, target))
        return out

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        return torch.stack(list(self.task_losses(x, policy, gen).values())).sum()
