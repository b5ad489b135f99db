"""M-mode / frame contrast for ultrasound video (review [77]): images drawn from one B-mode
video are positives of each other, images of other videos are negatives.

An M-mode trace is the intensity along one scan line over time. From a clip (C, T, H, W)
the trace under image column x is clip[:, :, :, x], an image (C, T, H) whose rows are time
and whose columns are depth along the line. `mmode_images` draws those; the loss is the
multi-positive InfoNCE of supervised contrastive learning (`multi_positive_nce`), with the
video (or clip) as the label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..augment import Policy
from .base import Objective, ObjectiveError, mlp, standardise
from .temporal import augment_clip

POSITIVES = ("slices_same_video",)


def multi_positive_nce(z: torch.Tensor, labels: torch.Tensor,
                       temperature: float = 0.1) -> torch.Tensor:
    """Supervised-contrastive loss (Khosla et al. 2020, L_out): for anchor i with positives
    P(i) = {p != i : labels[p] == labels[i]},

        L_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) ),

    s being cosine similarity; the mean over anchors that have a positive. With two views
    per sample and one label per sample it is exactly SimCLR's NT-Xent. Computed in fp32,
    autocast off: at a temperature of 0.1, bf16 similarities would be off by up to 0.04."""
    with torch.autocast(z.device.type, enabled=False):
        return _multi_positive_nce(z.float(), labels, float(temperature))


def _multi_positive_nce(z: torch.Tensor, labels: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    z = F.normalize(z, dim=1)
    n = z.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = (z @ z.t() / temperature).masked_fill(eye, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    count = positive.sum(1)
    # -inf on the diagonal times False would be nan: select, do not multiply.
    per_anchor = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1)
    # A select, not a boolean index: no host-device synchronisation on a GPU.
    mean = torch.where(count > 0, per_anchor / count.clamp(min=1), torch.zeros_like(per_anchor))
    return mean.sum() / (count > 0).sum().clamp(min=1)


def mmode_images(clips: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """The M-mode image of each clip (B, C, T, H, W) along its image column columns[b]:
    (B, C, T, H), row t being frame t's intensities down that column."""
    b = clips.shape[0]
    return clips.permute(0, 4, 1, 2, 3)[torch.arange(b, device=clips.device), columns]


def sample_frames(clips: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """Frame sampling: each clip is replayed from a random window of at least half its
    frames, stretched back to T frames by repeating frames (a change of playback speed
    and of start), so views of a clip differ in time as well as in appearance."""
    b, t = clips.shape[0], clips.shape[2]
    if t < 2:
        return clips
    lo = (t + 1) // 2
    length = rng.randint(lo, t + 1, (b,), gen, clips.device)
    start = (rng.rand((b,), gen, clips.device) * (t - length + 1)).long()
    steps = torch.arange(t, device=clips.device)
    idx = start[:, None] + (steps[None, :] * length[:, None]) // t  # (B, T), < start + length
    c, h, w = clips.shape[1], clips.shape[3], clips.shape[4]
    return torch.gather(clips, 2, idx.view(b, 1, t, 1, 1).expand(b, c, t, h, w))


def _spatial_dims(encoder: nn.Module) -> int | None:
    return getattr(encoder, "monai_kwargs", {}).get("spatial_dims")


class MModeContrast(Objective):
    """M-mode / frame contrast (VanBerlo et al. 2023, review [77]): M-mode images drawn
    from one B-mode lung-ultrasound video are positives under a joint-embedding objective.
    Three input forms:

    - frames (B, C, H, W), 2D encoder: each frame gets two augmented views; with `groups`
      (video ids) every view of every frame of the same video in the batch is a positive
      (supervised-contrastive multi-positive InfoNCE). Without groups only a frame's own
      second view is: that is SimCLR, instance contrast rather than video contrast.
    - clips (B, C, T, H, W), 2D encoder: `lines_per_clip` M-mode images per clip, each from
      an independently augmented and frame-sampled copy of the clip at a random column,
      resized to the frame size (or the ViT's input size) for the encoder; lines of one
      clip, and of clips sharing a group, are positives. This is the paper's task.
    - clips, 3D encoder: two frame-sampled, augmented views of each clip are positives
      (again with same-group clips), the clip-level analogue for encoders that take video.

    We have no ultrasound video, so tests use colonoscopy video (CVC-ClinicDB), whose
    scan lines lack the pleural sliding that makes lung M-mode informative. Frame sampling
    is applied by the objective whatever the policy says (the augmentation library has no
    temporal operations); `positive` accepts only `slices_same_video`."""

    needs_groups = True

    def __init__(self, encoder: nn.Module, temperature: float = 0.1,
                 positive: str = "slices_same_video", lines_per_clip: int = 2,
                 projection_dim: int = 128):
        super().__init__()
        if positive not in POSITIVES:
            raise ObjectiveError(f"positive must be one of {', '.join(POSITIVES)}, got "
                                 f"'{positive}'")
        if not temperature > 0:
            raise ObjectiveError(f"temperature must be positive, got {temperature}")
        if int(lines_per_clip) != lines_per_clip or lines_per_clip < 2:
            raise ObjectiveError(f"lines_per_clip must be an integer of at least 2, got "
                                 f"{lines_per_clip}")
        dims = _spatial_dims(encoder)
        if dims not in (2, 3):
            raise ObjectiveError("mmode_temporal_contrast needs a 2D or 3D encoder")
        self.encoder, self.temperature, self.positive = encoder, float(temperature), positive
        self.lines_per_clip, self.dims = int(lines_per_clip), dims
        d = encoder.feature_dim
        self.projector = mlp(d, d, projection_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(standardise(x)))

    def _size(self, h: int, w: int) -> tuple[int, int]:
        """What a 2D encoder should see: a ViT's declared size, else the frame size."""
        size = getattr(self.encoder, "monai_kwargs", {}).get("img_size")
        return (int(size[0]), int(size[1])) if size is not None else (h, w)

    def lines(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None
              ) -> torch.Tensor:
        """`lines_per_clip` M-mode images per clip, (K * B, C, *size), line-major."""
        b, w = x.shape[0], x.shape[-1]
        size = self._size(x.shape[-2], w)
        out = []
        for _ in range(self.lines_per_clip):
            view = augment_clip(sample_frames(x, gen), policy, gen)
            column = rng.randint(0, w, (b,), gen, x.device)
            image = mmode_images(view, column)  # (B, C, T, H)
            if tuple(image.shape[2:]) != size:
                image = F.interpolate(image.float(), size=size, mode="bilinear",
                                      align_corners=False).to(image.dtype)
            out.append(image)
        return torch.cat(out)

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        b = x.shape[0]
        ids = groups.to(x.device) if groups is not None else torch.arange(b, device=x.device)
        if self.dims == 2 and x.dim() == 4:
            views, k = torch.cat(self.views(x, policy, gen)), 2
        elif self.dims == 2 and x.dim() == 5:
            views, k = self.lines(x, policy, gen), self.lines_per_clip
        elif self.dims == 3 and x.dim() == 5:
            views = torch.cat([augment_clip(sample_frames(x, gen), policy, gen)
                               for _ in range(2)])
            k = 2
        else:
            raise ObjectiveError(f"mmode_temporal_contrast takes frames (B, C, H, W) or clips "
                                 f"(B, C, T, H, W) with a 2D encoder, clips with a 3D one; "
                                 f"got {tuple(x.shape)} for a {self.dims}D encoder")
        return multi_positive_nce(self.embed(views), ids.repeat(k), self.temperature)

