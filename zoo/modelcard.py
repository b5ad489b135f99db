"""Render README.md (a Hugging Face model card with YAML front matter) from a stored card."""

from __future__ import annotations

import yaml

from .cards import StoredCard


def render(card: StoredCard) -> str:
    front = {
        "license": card.weights_licence.lower(),
        "library_name": "taskalign",
        "pipeline_tag": "image-feature-extraction",
        "tags": ["medical-imaging", "self-supervised", card.modality, card.pretext.method_id,
                 f"{card.spatial_dims}d"],
        "datasets": [card.pretraining_data.name],
        "base_model": card.parent,
    }
    front = {k: v for k, v in front.items() if v is not None}
    size = "x".join(str(s) for s in card.input_size)
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {card.name}", "",
        card.description or (f"A {card.architecture.name} encoder pretrained with "
                             f"{card.pretext.method_id} on {card.pretraining_data.name}."),
        "",
        "## Input", "",
        f"- modality: {card.modality}",
        f"- spatial dims: {card.spatial_dims}, channels: {card.in_channels}, size: {size}",
        f"- normalisation: mean {card.normalization.mean}, std {card.normalization.std} "
        f"({card.normalization.scale} scale)",
        f"- output: a {card.feature_dim}-d feature vector per image", "",
        "## Pretraining", "",
        f"- method: `{card.pretext.method_id}` ({card.pretext.family or 'family not given'})",
        f"- hyperparameters: `{card.pretext.hyperparameters}`",
        f"- data: {card.pretraining_data.name} ({card.pretraining_data.split} split, "
        f"licence {card.pretraining_data.licence})", "",
        "## Evaluation", "",
    ]
    if card.evaluation:
        lines += ["| dataset | protocol | labels | metric | value | seeds |",
                  "|---|---|---|---|---|---|"]
        for e in card.evaluation:
            spread = f" ± {e.spread:.3f}" if e.spread is not None else ""
            lines.append(f"| {e.dataset} | {e.protocol} | {e.label_fraction:.0%} | {e.metric} "
                         f"| {e.value:.3f}{spread} | {','.join(map(str, e.seeds)) or '-'} |")
    else:
        lines.append("No evaluation reported.")
    lines += ["", "## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    for name, entry in sorted(card.files.items()):
        lines.append(f"| {name} | `{entry.sha256}` | {entry.size} |")
    lines += ["", f"ONNX parity against PyTorch: max abs diff {card.onnx_parity_max_abs_diff:.2e}.",
              f"Revision {card.revision} (commit `{card.commit}`), created {card.created_at}.",
              ""]
    if card.parent:
        lines.append(f"Fine-tuned from `{card.parent}`; lineage: `{card.lineage}`.")
    return "\n".join(lines) + "\n"
