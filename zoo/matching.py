"""Rank zoo encoders against a recommendation: method, family, modality, dims, channels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DIMS = {"2d": 2, "3d": 3, "video": 2}


@dataclass(frozen=True)
class EncoderFacts:
    name: str
    revision: int
    method_id: str
    family: str | None
    modality: str
    spatial_dims: int
    in_channels: int
    feature_dim: int


def match_key(profile: dict[str, Any], ranked: Sequence[tuple[str, int, str]]
              ) -> tuple[Any, ...]:
    """Everything `rank_encoders` reads besides the encoders: equal keys, equal answers."""
    return (tuple(ranked), profile["modality"], profile["dimensionality"],
            bool(profile["properties"].get("color")))


def rank_encoders(profile: dict[str, Any], ranked: Sequence[tuple[str, int, str]],
                  encoders: list[EncoderFacts], limit: int = 5) -> list[dict[str, Any]]:
    """Score each usable encoder; dims must match, everything else adds or explains.

    `profile` is the resolved profile; `ranked` the recommended (method id, rank, family).
    """
    wanted_dims = DIMS[profile["dimensionality"]]
    colour = bool(profile["properties"].get("color"))
    n = max(len(ranked), 1)
    rank_of = {mid: rank for mid, rank, _ in ranked}
    top_families = [family for _, _, family in ranked[:3]]
    out = []
    for enc in encoders:
        if enc.spatial_dims != wanted_dims:
            continue
        score, reasons = 0.0, []
        rank = rank_of.get(enc.method_id)
        if rank is not None:
            score += 3.0 * (n - rank + 1) / n
            reasons.append(f"pretrained with {enc.method_id}, recommended #{rank}")
        elif enc.family and enc.family in top_families:
            score += 1.0
            reasons.append(f"{enc.method_id} is in family {enc.family}, among the top "
                           "recommendations")
        else:
            reasons.append(f"{enc.method_id} is not among the recommended methods")
        if enc.modality == profile["modality"]:
            score += 2.0
            reasons.append(f"pretrained on {enc.modality}")
        else:
            reasons.append(f"pretrained on {enc.modality}, not {profile['modality']}")
        want_channels = 3 if colour else 1
        if enc.in_channels == want_channels:
            score += 0.5
        else:
            score -= 0.5
            reasons.append(f"expects {enc.in_channels} channel(s); your images have "
                           f"{want_channels}")
        out.append({"name": enc.name, "revision": enc.revision, "method_id": enc.method_id,
                    "modality": enc.modality, "feature_dim": enc.feature_dim,
                    "score": round(score, 3), "reasons": reasons})
    out.sort(key=lambda e: (-e["score"], e["name"]))
    for i, e in enumerate(out[:limit], start=1):
        e["rank"] = i
    return out[:limit]


def encoders_by_method(profile: dict[str, Any], ranked: Sequence[tuple[str, int, str]],
                       encoders: list[EncoderFacts]) -> dict[str, list[str]]:
    """For every recommended method, the zoo encoders pretrained with it that fit the data's
    dimensionality (all of them, not only the best five), so each line of a recommendation
    can point at something to download or fine-tune."""
    wanted_dims = DIMS[profile["dimensionality"]]
    out: dict[str, list[str]] = {mid: [] for mid, _, _ in ranked}
    for enc in encoders:
        if enc.spatial_dims == wanted_dims and enc.method_id in out:
            out[enc.method_id].append(enc.name)
    return {mid: sorted(names) for mid, names in out.items() if names}
