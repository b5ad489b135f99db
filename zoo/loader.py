"""`load_encoder`: a ready torch module from the local zoo, or from a zoo server through
the Hugging Face cache (so it keeps working offline once downloaded)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .access import ORG, SYSTEM
from .cards import StoredCard
from .registry import CONFIG, WEIGHTS


def build_from_card(config: dict[str, Any], weights_path: Path) -> Any:
    """An eval-mode module from a card (config.json) and its safetensors weights: the
    encoder, or for a task model the whole classifier (`zoo.task_models.Classifier`)."""
    from safetensors.torch import load_file

    from .architectures import build_encoder
    from .cards import EncoderCard, declared_part
    from .task_models import build_task_model

    card = StoredCard.model_validate(config) if "revision" in config else None
    if config.get("task"):
        model = build_task_model(EncoderCard.model_validate(declared_part(config)))
    else:
        model = build_encoder(config["architecture"]["name"], config["spatial_dims"],
                              config["in_channels"], config["input_size"],
                              config["architecture"].get("args"))
    state = load_file(str(weights_path))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    model.eval()
    model.card = card if card is not None else config
    return model


def repo_of(name: str) -> str:
    """A repository id; a bare name means the seed zoo's namespace."""
    return name if "/" in name else f"{ORG}/{name}"


def load_encoder(name: str, revision: str | None = None, endpoint: str | None = None,
                 cache_dir: str | Path | None = None, local_files_only: bool = False) -> Any:
    """Load an encoder as an eval-mode torch module with its card at `.card`.

    With `endpoint` (or TASKALIGN_ZOO_URL) the files come from that server's /hf API into
    the Hugging Face cache; `local_files_only=True` (or HF_HUB_OFFLINE=1) uses the cache
    only. Without an endpoint the local zoo under TASKALIGN_HOME is read.
    """
    endpoint = endpoint or os.environ.get("TASKALIGN_ZOO_URL")
    if endpoint:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(
            repo_of(name), revision=revision, endpoint=endpoint.rstrip("/") + "/hf",
            cache_dir=cache_dir, local_files_only=local_files_only))
        return build_from_card(json.loads((folder / CONFIG).read_text()), folder / WEIGHTS)

    from .local import local_registry

    with local_registry() as registry:
        rev = registry.revision(repo_of(name), revision, SYSTEM)
        if rev is None:
            raise LookupError(f"no encoder '{name}' (revision {revision or 'latest'}) in the "
                              "local zoo (TASKALIGN_HOME)")
        weights = next(f for f in rev.files if f.filename == WEIGHTS)
        return build_from_card(rev.card, registry.store.path(weights.sha256))
