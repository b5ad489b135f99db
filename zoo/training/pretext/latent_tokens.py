"""Iterative latent token masking (Patel et al. 2023, review [60]): normal anatomy as
discrete latent tokens, with anomalies found where low-likelihood tokens, once resampled,
decode to something other than the image."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from zoo.architectures import ResNetEncoder

from .. import rng
from ..augment import Policy, augment
from .base import Decoder, Objective, ObjectiveError, feature_map, standardise

RESTART_BELOW = 0.05  # a code whose EMA assignment count falls below this is dead
LAPLACE = 1e-5  # smoothing of the EMA counts, so a code with no assignment divides by > 0


def _fp32(device: torch.device) -> torch.autocast:
    """Switch autocast off: codebook distances, softmax and CE run in fp32 (a bf16 distance
    cannot tell nearby codes apart)."""
    return torch.autocast(device_type=device.type, enabled=False)


def token_mask(shape: torch.Size | tuple[int, ...], ratio: float, gen: torch.Generator | None,
               device: torch.device) -> torch.Tensor:
    """(B, *s) bool, True at exactly round(n * ratio) token positions per sample (at least
    one masked and one visible), chosen uniformly."""
    b, n = shape[0], math.prod(shape[1:])
    k = min(n - 1, max(1, round(n * ratio)))
    order = torch.argsort(rng.rand((b, n), gen, device), dim=1)
    mask = torch.zeros(b, n, dtype=torch.bool, device=device)
    return mask.scatter_(1, order[:, :k], True).view(shape)


def sample_tokens(probs: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One index per position from (B, K, *s) probabilities, by inverse CDF with a uniform
    draw through `rng` (so a CUDA generator works)."""
    u = rng.rand((probs.shape[0], *probs.shape[2:]), gen, probs.device)
    below = probs.cumsum(1) < u.unsqueeze(1)
    return below.sum(1).clamp(max=probs.shape[1] - 1)


class LatentTokenMasking(Objective):
    """VQ tokeniser + decoder + masked token predictor on a ResNet encoder (review [60]).

    One loss() trains all of it: the encoder's last feature map (after a 1x1 projection,
    VQGAN's quant conv) is snapped to the nearest of `codebook_size` codes with a
    straight-through estimator (van den Oord et al. 2017); `base.Decoder` restores the image
    from the quantised map (MSE); a commitment term (weight `commitment`) keeps the encoder
    near its codes; and a small conv head predicts the code index of `mask_ratio` of the
    token positions, replaced by a learned mask embedding, from the visible ones (CE). The
    codebook is learnt by EMA (van den Oord's appendix alternative to the codebook loss),
    updated in no_grad inside loss() in training mode only, seeded from the first batch's
    encodings, with codes unused for a while restarted at random current encodings against
    codebook collapse. `anomaly_map(x)` is the inference procedure: each token's likelihood
    under the predictor, tokens below `likelihood_threshold` resampled from it for
    `iterations` rounds, then |x - decoded|.

    Differences from the paper: Patel et al. train a VQ-VAE first and then an autoregressive
    transformer on its frozen tokens, and also mask low-likelihood tokens of the (anomalous)
    training set while training the transformer; we train tokeniser, decoder and a
    bidirectional conv predictor jointly in one loss (the point here is the encoder), score
    a token by its leave-one-out likelihood given all other tokens rather than given its
    predecessors in a raster order, and do the masking-and-resampling only at inference.
    An untrained predictor is near uniform, 1 / `codebook_size`, which for 256 codes is
    below the catalog's 0.005: before training every token counts as unlikely.
    """

    def __init__(self, encoder: nn.Module, codebook_size: int = 256,
                 likelihood_threshold: float = 0.005, iterations: int = 3,
                 mask_ratio: float = 0.5, commitment: float = 0.25, decay: float = 0.95):
        super().__init__()
        if not isinstance(encoder, ResNetEncoder):
            raise ObjectiveError("latent_token_masking needs a convolutional (resnet) encoder")
        if int(codebook_size) != codebook_size or codebook_size < 2:
            raise ObjectiveError(f"codebook_size must be an integer >= 2, got {codebook_size}")
        if not 0.0 <= likelihood_threshold <= 1.0:
            raise ObjectiveError(f"likelihood_threshold must be in [0, 1], got "
                                 f"{likelihood_threshold}")
        if int(iterations) != iterations or iterations < 0:
            raise ObjectiveError(f"iterations must be an integer >= 0, got {iterations}")
        self.encoder = encoder
        self.codebook_size, self.iterations = int(codebook_size), int(iterations)
        self.likelihood_threshold = float(likelihood_threshold)
        self.mask_ratio, self.commitment, self.decay = mask_ratio, commitment, decay
        dims = encoder.net.conv1.weight.dim() - 2
        c, k = encoder.feature_dim, self.codebook_size
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        norm = nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d
        self.to_code = conv(c, c, 1)
        self.register_buffer("codebook", torch.randn(k, c))
        self.register_buffer("counts", torch.zeros(k))
        self.register_buffer("sums", torch.zeros(k, c))
        self.register_buffer("seeded", torch.zeros((), dtype=torch.bool))
        self.decoder = Decoder(c, encoder.net.conv1.in_channels, dims)
        self.mask_embedding = nn.Parameter(torch.zeros(1, c, *[1] * dims))
        hidden = 64
        self.predictor = nn.Sequential(
            conv(c, hidden, 3, padding=1), norm(hidden), nn.ReLU(inplace=True),
            conv(hidden, hidden, 3, padding=1), norm(hidden), nn.ReLU(inplace=True),
            conv(hidden, k, 1))

    # --- tokeniser -----------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] images -> continuous pre-quantisation map (B, c, *s), fp32."""
        return self.to_code(feature_map(self.encoder, standardise(x))).float()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index (B, *s) of the nearest code (squared Euclidean, fp32) at every position."""
        with _fp32(z.device):
            flat = z.float().movedim(1, -1).reshape(-1, z.shape[1])
            cb = self.codebook.float()
            d = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.T + cb.pow(2).sum(1))
            return d.argmin(1).view(z.shape[0], *z.shape[2:])

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token indices (B, *s) -> code vectors (B, c, *s)."""
        return self.codebook[idx].movedim(-1, 1)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.nearest(self.encode(x))

    def decode(self, q: torch.Tensor, size: list[int]) -> torch.Tensor:
        """Quantised map -> image in [0, 1] scale (the decoder works standardised)."""
        return self.decoder(q, size).float() * 0.5 + 0.5

    @torch.no_grad()
    def _seed(self, flat: torch.Tensor, gen: torch.Generator | None) -> None:
        """Codes at random encodings of the first batch, so all start where the data is."""
        pick = rng.randint(0, flat.shape[0], (self.codebook_size,), gen, flat.device)
        self.codebook.copy_(flat[pick])
        self.sums.copy_(flat[pick])
        self.counts.fill_(1.0)
        self.seeded.fill_(True)

    @torch.no_grad()
    def ema_update(self, z: torch.Tensor, idx: torch.Tensor,
                   gen: torch.Generator | None) -> None:
        """EMA codebook step (counts and sums, Laplace-smoothed), then dead-code restarts."""
        with _fp32(z.device):
            flat = z.float().movedim(1, -1).reshape(-1, z.shape[1])
            onehot = F.one_hot(idx.reshape(-1), self.codebook_size).float()
            self.counts.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
            self.sums.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
            total = self.counts.sum()
            smoothed = (self.counts + LAPLACE) / (total + self.codebook_size * LAPLACE) * total
            self.codebook.copy_(self.sums / smoothed[:, None])
            dead = self.counts < RESTART_BELOW
            if dead.any():
                pick = rng.randint(0, flat.shape[0], (int(dead.sum()),), gen, flat.device)
                self.codebook[dead] = flat[pick]
                self.sums[dead] = flat[pick]
                self.counts[dead] = 1.0

    # --- token predictor -----------------------------------------------------------------
    def token_logits(self, q: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
        """(B, K, *s) fp32 logits of every position's code, from the map q with the
        positions in `masked` (B, *s) replaced by the mask embedding."""
        m = masked.unsqueeze(1)
        h = torch.where(m, self.mask_embedding.to(q.dtype), q)
        return self.predictor(h).float()

    @torch.no_grad()
    def token_likelihood(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, *s): p(token_i | all other tokens), each position masked on its own (the
        n masked copies run as one batch)."""
        b, s = idx.shape[0], idx.shape[1:]
        n = math.prod(s)
        alone = torch.eye(n, dtype=torch.bool, device=idx.device).view(n, 1, *s)
        alone = alone.expand(n, b, *s).reshape(n * b, *s)
        rep = idx.repeat(n, *[1] * len(s))  # row j * b + i is sample i with position j masked
        with _fp32(idx.device):
            probs = self.token_logits(self.embed(rep), alone).softmax(1)
        p = probs.gather(1, rep.unsqueeze(1)).squeeze(1)
        p = (p * alone).flatten(1).sum(1).view(n, b)
        return p.T.reshape(b, *s)

    @torch.no_grad()
    def resample(self, idx: torch.Tensor, gen: torch.Generator | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One round: mask the tokens below the threshold, draw them from the predictor
        given the rest; returns the new tokens and the mask."""
        low = self.token_likelihood(idx) < self.likelihood_threshold
        with _fp32(idx.device):
            probs = self.token_logits(self.embed(idx), low).softmax(1)
        return torch.where(low, sample_tokens(probs, gen), idx), low

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor, gen: torch.Generator | None = None) -> torch.Tensor:
        """|x - restoration| (B, C, *S) after `iterations` rounds of resampling the
        low-likelihood tokens (in eval mode; the module's mode is restored)."""
        was = self.training
        self.eval()
        try:
            idx = self.tokens(x)
            for _ in range(self.iterations):
                idx, _ = self.resample(idx, gen)
            return (x.float() - self.decode(self.embed(idx), list(x.shape[2:]))).abs()
        finally:
            self.train(was)

    # --- objective -----------------------------------------------------------------------
    def terms(self, x: torch.Tensor, policy: Policy, gen: torch.Generator | None = None
              ) -> dict[str, torch.Tensor]:
        """The three fp32 terms of the loss: restoration MSE, commitment, masked-token CE."""
        view = augment(x, policy, gen)
        z = self.encode(view)
        with _fp32(z.device):
            if self.training and not bool(self.seeded):
                self._seed(z.detach().movedim(1, -1).reshape(-1, z.shape[1]), gen)
            idx = self.nearest(z)
            q = self.embed(idx)
            commit = F.mse_loss(z, q)
            q = z + (q - z).detach()  # straight-through: forward codes, backward identity
        if self.training:
            self.ema_update(z.detach(), idx, gen)
        restored = self.decoder(q, list(view.shape[2:]))
        masked = token_mask(idx.shape, self.mask_ratio, gen, z.device)
        logits = self.token_logits(q, masked)
        with _fp32(z.device):
            return {"restoration": F.mse_loss(restored.float(), standardise(view).float()),
                    "commitment": commit,
                    "tokens": F.cross_entropy(logits, idx, reduction="none")[masked].mean()}

    def loss(self, x, policy, gen=None, groups=None):  # noqa: ANN001, ANN201
        t = self.terms(x, policy, gen)
        return t["restoration"] + self.commitment * t["commitment"] + t["tokens"]
