"""Render README.md (a Hugging Face model card with YAML front matter) from a stored card.

Written for someone who has only this repository: the usage snippet builds the network with
MONAI and loads the weights with safetensors, no TaskAlign import (tests run it where
TaskAlign cannot be imported and compare its output with the zoo's encoder). Facts about
the pretraining data (e.g. that a set holds binary masks rather than scans) come from
`zoo/datasets/datasets.yaml`, not from code here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .cards import StoredCard

DATASETS_YAML = Path(__file__).parent / "datasets" / "datasets.yaml"
DEFAULT_ZOO = "http://127.0.0.1:8000"  # where `make run` serves
LICENCE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")  # the Hub's licence ids: cc-by-4.0, mit
# How each MONAI network's output becomes the encoder's feature vector; the same as
# ResNetEncoder.forward and ViTEncoder.forward in zoo/architectures.py.
FEATURES = {
    "ResNet": ["features = net(x)  # global average pool of the last stage"],
    "ViT": ["tokens, _ = net(x)  # MONAI's ViT returns (tokens, per-layer hidden states)",
            "features = tokens.mean(dim=1)  # the mean of the patch tokens"],
}


@cache
def known_datasets() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(DATASETS_YAML.read_text())["datasets"]


def dataset_facts(name: str) -> dict[str, Any]:
    """The catalogue entry of a dataset named like a datasets.yaml key (any case), or {}."""
    return known_datasets().get(name.lower(), {})


@dataclass
class Network:
    monai_class: str  # in monai.networks.nets
    kwargs: dict[str, Any]
    prefix: str  # of the MONAI network's tensor names in model.safetensors
    size_agnostic: bool


def network_of(card: StoredCard) -> Network | None:
    """The MONAI constructor call behind a card, read off the zoo's own builder (on the
    meta device: no memory, no weights), so the snippet cannot drift from it. None when the
    architecture is not a MONAI network the snippet knows how to read features from."""
    import torch

    from .architectures import build_encoder

    try:
        with torch.device("meta"):
            if card.task is not None:
                from .task_models import build_task_model

                model = build_task_model(card)
                encoder = model.encoder
            else:
                model = encoder = build_encoder(card.architecture.name, card.spatial_dims,
                                                card.in_channels, card.input_size,
                                                card.architecture.args)
    except Exception:  # registration already refused cards that do not build
        return None
    net, kwargs = getattr(encoder, "net", None), getattr(encoder, "monai_kwargs", None)
    if net is None or kwargs is None or not type(net).__module__.startswith("monai."):
        return None
    if type(net).__name__ not in FEATURES:
        return None
    prefix = next(name for name, module in model.named_modules() if module is net)
    return Network(type(net).__name__, dict(kwargs), prefix + ".",
                   bool(getattr(encoder, "size_agnostic", False)))


def _py(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _array(values: list[float], dims: int) -> str:
    shape = ", ".join(["-1"] + ["1"] * dims)
    return f"np.array({values!r}, dtype=np.float32).reshape({shape})"


def size_text(card: StoredCard) -> str:
    return "x".join(str(s) for s in card.input_size)


def monai_snippet(card: StoredCard, net: Network) -> str:
    """Build the network, load model.safetensors strictly, normalise one image, embed it."""
    dims, norm = card.spatial_dims, card.normalization
    what = "image" if dims == 2 else "volume"
    shape = ", ".join(str(s) for s in [card.in_channels, *card.input_size])
    lines = ["import numpy as np", "import torch",
             f"from monai.networks.nets import {net.monai_class}",
             "from safetensors.torch import load_file", "",
             f"net = {net.monai_class}("]
    lines += [f"    {k}={_py(v)}," for k, v in net.kwargs.items()]
    lines += [
        ")",
        f"# TaskAlign keeps this MONAI network at `{net.prefix[:-1]}` inside its own module, "
        "so its tensor",
        f"# names start with \"{net.prefix}\": strip that and the file loads strictly.",
        "weights = load_file(\"model.safetensors\")  # or the path hf_hub_download returned",
        f"net.load_state_dict({{k.removeprefix(\"{net.prefix}\"): v for k, v in weights.items()",
        f"                     if k.startswith(\"{net.prefix}\")}}, strict=True)",
        "net.eval()", "",
        f"# One {what}, channels first: shape ({shape}).",
    ]
    if card.in_channels > 1 and dims == 2:
        lines.append("# (An RGB picture read with PIL is (H, W, 3): use .transpose(2, 0, 1).)")
    lines.append("image = np.load(\"image.npy\").astype(np.float32)")
    if norm.window is not None:
        lo, hi = norm.window
        lines.append(f"x = (np.clip(image, {lo!r}, {hi!r}) - {lo!r}) / ({hi!r} - {lo!r})"
                     "  # intensity window to [0, 1]")
    else:
        lines.append("x = image / 255.0  # 8-bit values to [0, 1]; skip if yours are "
                     "already in [0, 1]")
    lines += [f"mean = {_array(norm.mean, dims)}",
              f"std = {_array(norm.std, dims)}",
              "x = torch.from_numpy((x - mean) / std)[None]  # a batch of one",
              "with torch.no_grad():"]
    lines += [f"    {line}" for line in FEATURES[net.monai_class]]
    lines.append(f"print(features.shape)  # (1, {card.feature_dim})")
    if card.task is not None and card.task.kind == "segmentation":
        lines += ["", "# The U-Net decoder (tensors `skips.*`, `decoder.*`, `head.*`: MONAI "
                  "UnetUpBlock and",
                  "# UnetOutBlock on the encoder's stages) is easiest to run as model.onnx, "
                  "which holds",
                  "# the whole segmenter: [0, 1] input, per-class probability maps out."]
    elif card.task is not None:
        classes = card.task.classes
        lines += ["", f"# The classification head: {len(classes)} classes, softmax.",
                  f"head = torch.nn.Linear({card.feature_dim}, {len(classes)})",
                  "head.load_state_dict({\"weight\": weights[\"head.weight\"], "
                  "\"bias\": weights[\"head.bias\"]})",
                  "with torch.no_grad():",
                  "    probabilities = torch.softmax(head(features), dim=1)",
                  f"print(dict(zip({classes!r}, probabilities[0].tolist())))"]
    return "\n".join(lines)


def hub_snippet(card: StoredCard) -> str:
    repo = card.repo_id or card.name
    return "\n".join([
        "import os", "", "from huggingface_hub import hf_hub_download", "",
        "# A TaskAlign zoo serves a Hugging Face compatible API under /hf: point",
        "# TASKALIGN_ZOO_URL at the zoo this card came from.",
        f"zoo = os.environ.get(\"TASKALIGN_ZOO_URL\", \"{DEFAULT_ZOO}\")",
        "path = hf_hub_download(",
        f"    repo_id=\"{repo}\",",
        "    filename=\"model.safetensors\",",
        *([f"    revision=\"{card.commit}\",  # this revision; \"main\" for the latest"]
          if card.commit else []),
        "    endpoint=f\"{zoo}/hf\",",
        ")",
        "print(path)",
    ])


def front_matter(card: StoredCard) -> dict[str, Any]:
    """Hub metadata. `library_name` names the modelling library (the Hub lists file formats
    such as safetensors and ONNX apart from libraries, and finds those from the files)."""
    licence = card.weights_licence.lower()
    front: dict[str, Any] = {"license": licence if LICENCE_ID.match(licence) else "other"}
    if front["license"] == "other":
        front["license_name"] = re.sub(r"[^a-z0-9]+", "-", licence).strip("-") or "unknown"
    front.update({
        "library_name": "monai",
        "pipeline_tag": ({"classification": "image-classification",
                          "segmentation": "image-segmentation"}[card.task.kind]
                         if card.task else "image-feature-extraction"),
        "tags": ["medical-imaging", "self-supervised", card.modality, card.pretext.method_id,
                 f"{card.spatial_dims}d"],
        "datasets": [card.pretraining_data.name],
        "base_model": card.parent,
    })
    return {k: v for k, v in front.items() if v is not None}


def _count(n: int) -> str:
    return f"{n:,} parameters ({n / 1e6:.3g} M)"


def render(card: StoredCard) -> str:
    net = network_of(card)
    data = card.pretraining_data
    facts = dataset_facts(data.name)
    content = facts.get("content")
    size = size_text(card)
    unit = "pixels" if card.spatial_dims == 2 else "voxels"
    channels = f"{card.in_channels} channel{'s' if card.in_channels > 1 else ''}"
    params = _count(card.parameters) if card.parameters is not None else "parameters not recorded"
    arch = (f"MONAI `{net.monai_class}` ({card.architecture.name}, `{card.architecture.args}`)"
            if net else f"`{card.architecture.name}` (`{card.architecture.args}`)")
    lines = [
        "---", yaml.safe_dump(front_matter(card), sort_keys=False).strip(), "---", "",
        f"# {card.name}", "",
        card.description or (f"A {card.architecture.name} encoder pretrained with "
                             f"{card.pretext.method_id} on {data.name}."),
        "",
        "## Model", "",
        f"- network: {arch}, {params}",
        f"- input: {card.spatial_dims}D {card.modality}, {size} {unit}, {channels}"
        + (" (what the pretraining images are: see Limitations)" if content else ""),
        f"- output: a {card.feature_dim}-d feature vector per "
        f"{'image' if card.spatial_dims == 2 else 'volume'}"
        + (f", then probabilities over {card.task.classes}" if card.task and
           card.task.kind == "classification" else "")
        + (f"; the task model outputs a probability map per class ({card.task.classes}) "
           f"at the input's size" if card.task and card.task.kind == "segmentation" else ""),
        "",
        "## How to use", "",
    ]
    lines += ["Download the weights with `huggingface_hub` from the zoo's Hub mirror:", "",
              "```python", hub_snippet(card), "```", ""]
    if net is not None:
        lines += ["Load them with MONAI and safetensors alone (no TaskAlign needed), with the "
                  "card's normalisation:", "", "```python", monai_snippet(card, net), "```", ""]
    else:
        lines += [f"No standalone snippet for the `{card.architecture.name}` architecture; "
                  "use `zoo.load_encoder` or model.onnx.", ""]
    shape = f"(N, {card.in_channels}, {', '.join(map(str, card.input_size))})"
    if card.task is None:
        lines += ["`model.onnx` holds the same network for onnxruntime (input `x`, a float "
                  f"batch shaped {shape}).", ""]
    else:
        lines += ["`model.onnx` holds the whole task model for onnxruntime: input `x`, a float "
                  f"batch shaped {shape} scaled to [0, 1] (the graph applies the normalisation "
                  "itself); output `probabilities`. The zoo's `/predict` route runs it on PNG, "
                  "JPEG, NPY, DICOM and NIfTI files.", ""]
    lines += task_section(card)
    lines += intended_use(card, size, unit, channels, content)
    lines += limitations(card, net, size, unit, channels, content)
    lines += [
        "## Input", "",
        f"- modality: {card.modality}" + (f" (pretraining images: {content})" if content else ""),
        f"- spatial dims: {card.spatial_dims}, channels: {card.in_channels}, size: {size}",
        f"- normalisation: mean {card.normalization.mean}, std {card.normalization.std} "
        f"({card.normalization.scale} scale"
        + (f", window {list(card.normalization.window)}" if card.normalization.window else "")
        + ")",
        "",
        "## Pretraining", "",
        f"- method: `{card.pretext.method_id}` ({card.pretext.family or 'family not given'})",
        f"- hyperparameters: `{card.pretext.hyperparameters}`",
        f"- data: {data.name} ({data.split} split"
        + (f", {data.images:,} images" if data.images is not None else "")
        + f", licence {data.licence})",
    ]
    if data.citation:
        lines.append(f"- cite: {data.citation}")
    lines += ["", "## Evaluation", ""]
    lines += evaluation(card)
    lines += ["", "## Files", "", "| file | sha256 | bytes |", "|---|---|---|"]
    for name, entry in sorted(card.files.items()):
        lines.append(f"| {name} | `{entry.sha256}` | {entry.size} |")
    lines += ["", f"ONNX parity against PyTorch: max abs diff {card.onnx_parity_max_abs_diff:.2e}.",
              f"Revision {card.revision} (commit `{card.commit}`), created {card.created_at}.",
              ""]
    if card.parent:
        lines.append(f"Fine-tuned from `{card.parent}`; lineage: `{card.lineage}`.")
    return "\n".join(lines) + "\n"


def intended_use(card: StoredCard, size: str, unit: str, channels: str,
                 content: str | None) -> list[str]:
    kind = f"{card.spatial_dims}D {card.modality} images of {size} {unit} ({channels})"
    if content:  # say what the inputs must be like, not just the modality they came from
        kind = (f"{card.spatial_dims}D inputs of {size} {unit} ({channels}) like its "
                f"pretraining images, which are {content}")
    if card.task is not None and card.task.kind == "segmentation":
        use = (f"Outlines {', '.join(card.task.classes[1:])} in {kind}, for research on "
               "that task.")
    elif card.task is not None:
        use = (f"Classifies {kind} into {', '.join(card.task.classes)}, for research on "
               "that task.")
    else:
        use = (f"A feature extractor for {kind}: frozen features for linear probes, kNN "
               "retrieval or clustering, or a starting point for fine-tuning when labels "
               "are few.")
    return ["## Intended use", "", use, "",
            "Out of scope: any clinical use (diagnosis, triage, treatment or any decision "
            "about a patient), and inputs of another modality, size or channel count without "
            "your own validation.", ""]


def limitations(card: StoredCard, net: Network | None, size: str, unit: str, channels: str,
                content: str | None) -> list[str]:
    data = card.pretraining_data
    if net is not None and net.size_agnostic:
        sizes = ("the network runs at other sizes (convolutions, then global pooling) but "
                 "was neither trained nor evaluated there")
    elif net is not None:
        sizes = (f"the {net.monai_class} takes exactly this size (its position embeddings "
                 "are fixed)")
    else:
        sizes = "other sizes are untested"
    small = " Images this small lose fine detail." if max(card.input_size) <= 64 else ""
    lines = [
        "## Limitations", "",
        "- **Research use only. Not a medical device**: not validated, cleared or approved "
        "for clinical use.",
        f"- Input resolution: trained at {size} {unit}, {channels}; {sizes}.{small}",
        f"- Training data: {data.name} ({data.split} split"
        + (f", {data.images:,} images" if data.images is not None else "")
        + f"), licence {data.licence}: check its terms, and cite it, when you use these "
        f"weights (their own licence: {card.weights_licence}).",
    ]
    if content:
        lines.append(f"- **The pretraining images are {content}.** The encoder has seen "
                     "nothing else: its features on intensity images (scans) are untested.")
    evaluated = sorted({e.dataset for e in card.evaluation})
    if evaluated:
        lines.append(f"- Evaluated only on {', '.join(evaluated)}: performance on other "
                     "sites, scanners, protocols and populations is unknown.")
    return lines + [""]


def evaluation(card: StoredCard) -> list[str]:
    if not card.evaluation:
        return ["No evaluation reported."]
    if any(e.protocol_version == 2 for e in card.evaluation):
        return evaluation_v2(card)
    with_ci = any(getattr(e, "ci95", None) for e in card.evaluation)
    head = "| dataset | split | protocol | labels | metric | value ± spread | seeds |"
    rule = "|---|---|---|---|---|---|---|"
    if with_ci:
        head, rule = head + " 95 % interval |", rule + "---|"
    lines = [head, rule]
    for e in card.evaluation:
        spread = f" ± {e.spread:.3f}" if e.spread is not None else ""
        row = (f"| {e.dataset} | {e.split} | {e.protocol} | {e.label_fraction:.0%} | {e.metric} "
               f"| {e.value:.3f}{spread} | {','.join(map(str, e.seeds)) or '-'} |")
        if with_ci:
            ci = getattr(e, "ci95", None)
            row += f" {ci[0]:.3f}-{ci[1]:.3f} |" if ci else " - |"
        lines.append(row)
    lines += [
        "",
        "`value ± spread`: the mean over the seeds listed ± their sample standard deviation "
        "(no spread: one seed). Each seed draws its own subset of the training labels and "
        "its own probe or fine-tuning run, so the spread is seed-to-seed variation, not a "
        "confidence interval over patients; at 100 % labels every seed uses the whole "
        "training split and the spread is often 0. `labels`: the fraction of the training "
        "labels used. `random_init_*` rows: the same architecture with untrained weights, "
        "evaluated the same way, as the baseline to beat.",
    ]
    return lines


def _interval(ci: tuple[float, float] | None) -> str:
    return f"{ci[0]:+.3f} to {ci[1]:+.3f}" if ci else "-"


def evaluation_v2(card: StoredCard) -> list[str]:
    """Protocol v2 rows: every metric with its spread, the majority-class rate beside ACC,
    and the paired intervals of SSL against the random inits."""
    lines = ["| dataset | protocol | labels | metric | mean ± s.d. | runs | majority rate "
             "| SSL - mean init, 95 % | SSL - best init, 95 % | tuned on validation |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in card.evaluation:
        spread = f" ± {e.spread:.3f}" if e.spread is not None else ""
        tuned = ""
        if e.tuned and e.metric == "AUC":
            chosen = sorted({str(v) for v in e.tuned.get("chosen", [])})
            tuned = f"{e.tuned['name']} in {e.tuned.get('grid')}: {', '.join(chosen)}"
        majority = f"{e.majority_rate:.3f}" if e.majority_rate is not None else "-"
        protocol = f"{e.protocol} ({e.test_noise} noise)" if e.test_noise else e.protocol
        lines.append(f"| {e.dataset} | {protocol} | {e.label_fraction:.0%} | {e.metric} "
                     f"| {e.value:.3f}{spread} | {e.runs or '-'} | {majority} "
                     f"| {_interval(e.difference_ci95)} | {_interval(e.difference_vs_best_ci95)} "
                     f"| {tuned} |")
    described = card.evaluation_protocol or {}
    lines += [
        "",
        "Protocol v2: " + "; ".join(
            f"{key.replace('_', ' ')}: {value}" for key, value in described.items()
            if isinstance(value, str)) + ".",
        "`random_init_*` rows: the same architecture with untrained weights, one per "
        "random-init seed, evaluated the same way. An interval that contains 0 is no "
        "evidence of a gain; read ACC against the majority rate.",
    ]
    return lines


def task_section(card: StoredCard) -> list[str]:
    """What a task model decides and how far to trust it: threshold, calibration, errors."""
    task = card.task
    if task is None:
        return []
    lines = ["## Task", "", f"- classes, in output order: {', '.join(task.classes)}"]
    if task.kind == "segmentation":
        lines.append("- output: the most probable class per pixel (voxel); `/predict` returns "
                     "it as a PNG (2D) or NIfTI (3D) mask on the input's own grid")
        if task.labelled_images is not None:
            lines.append(f"- trained on {task.labelled_images:,} images with masks"
                         + (" (**few labels**: read every metric below as fragile)"
                            if task.few_labels else ""))
        scores = [e for e in card.evaluation if e.split == "test"]
        if scores:
            lines += ["", "Test scores (Dice and surface Dice: higher is better; HD95 in mm: "
                      "lower is better):", "", "| metric | value |", "|---|---|"]
            lines += [f"| {e.metric} | {e.value:.4f} |" for e in scores]
    elif task.threshold is not None:
        lines.append(f"- decision: `{task.classes[1]}` when its probability is at least "
                     f"{task.threshold:.4f} ({task.threshold_rule or 'chosen on validation'})")
    else:
        lines.append("- decision: the most probable class")
    if task.labelled_images is not None and task.kind == "classification":
        lines.append(f"- trained on {task.labelled_images:,} labelled images, at least "
                     f"{task.labelled_per_class_min} per class"
                     + (" (**few labels**: read every metric below as fragile)"
                        if task.few_labels else ""))
    for label, value in (("balanced accuracy (test, at the decision)",
                          task.balanced_accuracy),
                         ("majority-class rate (test; accuracy of always answering the most "
                          "frequent training class)", task.majority_rate),
                         ("expected calibration error (test, 15 bins)",
                          task.calibration_ece)):
        if value is not None:
            lines.append(f"- {label}: {value:.3f}")
    if task.confusion_matrix:
        lines += ["", "Confusion matrix on test (rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(task.classes) + " |",
                  "|---" * (len(task.classes) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(map(str, row)) + " |"
                  for name, row in zip(task.classes, task.confusion_matrix, strict=False)]
    if task.curves:
        lines += ["", f"Training curves ({len(task.curves)} epochs): see `config.json` "
                  "(`task.curves`)" + (f" and the plot at `{task.curves_png}` (the job's "
                                       "artifact, for its owner)" if task.curves_png else "")
                  + "."]
    return lines + [""]
