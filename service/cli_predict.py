"""`taskalign predict MODEL FILE...`: class probabilities from a zoo task model, or the
mask of a segmentation model saved next to where you ask, for the files people have (PNG,
JPEG, NPY, DICOM, NIfTI), computed by the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.table import Table

from .cli_http import Client, Token, Url

console = Console()
err = Console(stderr=True)


def predict(
    model: Annotated[str, typer.Argument(help="Task model repository owner/name, e.g. "
                                         "alice/resnet18-2d.ft-job3-breast.")],
    files: Annotated[list[Path], typer.Argument(help="Image files: .png .jpg .npy .dcm "
                                                ".nii .nii.gz", exists=True, dir_okay=False)],
    revision: Annotated[str | None, typer.Option(help="Revision or commit (default: "
                                                 "latest).")] = None,
    slice_index: Annotated[int | None, typer.Option(
        "--slice", help="For a 2D model given a volume: the slice (default: middle).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
    out: Annotated[Path, typer.Option(help="Segmentation models: folder the masks are "
                                      "written to (FILE.mask.png or .nii.gz).",
                                      file_okay=False)] = Path("."),
    url: Url = None,
    token: Token = None,
) -> None:
    """Predict with a task model. Classification: a table of the decision and each
    class's probability per file. Segmentation: one mask file per input, written to --out,
    with the share of each class."""
    if "/" not in model:
        err.print(f"[red]error[/red] {model!r}: give the repository as owner/name")
        raise typer.Exit(2)
    form = {k: str(v) for k, v in {"revision": revision, "slice_index": slice_index}.items()
            if v is not None}
    parts = [("images", (f.name, f.read_bytes(), "application/octet-stream")) for f in files]
    with Client(url, token, timeout=300) as client:
        card = client.get(f"/v1/encoders/{model}").get("card") or {}
        if (card.get("task") or {}).get("kind") == "segmentation":  # a mask per file
            masks = [client.request("POST", f"/v1/encoders/{model}/predict", files=[part],
                                    data=form) for part in parts]
            save_masks(masks, files, out, as_json, card["task"].get("classes") or [])
            return
        body = client.post(f"/v1/encoders/{model}/predict", files=parts, data=form)
    if as_json:
        typer.echo(json.dumps(body))
        return
    table = Table(title=f"{body['name']} (revision {body['revision']})")
    table.add_column("file", overflow="fold")
    table.add_column("decision")
    for name in body["classes"]:
        table.add_column(name, justify="right", overflow="fold")
    for item in body["data"]:
        table.add_row(item["image"], item["top_class"],
                      *(f"{item['probabilities'][c]:.3f}" for c in body["classes"]))
    console.print(table)
    if body.get("threshold") is not None:
        console.print(f"[dim]decision: {body['classes'][1]} when its probability is at "
                      f"least {body['threshold']:.4f} (chosen on validation)[/dim]")


def save_masks(answers: list[httpx.Response], files: list[Path], out: Path,
               as_json: bool, card_classes: list[str]) -> None:
    """Write each mask (temp file, then rename) and say where, with class shares."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for answer, source in zip(answers, files, strict=True):
        disposition = answer.headers.get("content-disposition", "")
        name = disposition.rpartition("filename=")[2].strip('"') or f"{source.name}.mask"
        target = out / Path(name).name
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(answer.content)
        tmp.replace(target)
        # The server leaves very long name lists out of its headers: the card has them.
        classes = json.loads(answer.headers.get("x-mask-classes") or "null") or card_classes
        fractions = json.loads(answer.headers.get("x-mask-fractions", "[]"))
        rows.append({"image": source.name, "mask": str(target),
                     "fractions": dict(zip(classes, fractions, strict=False))})
    if as_json:
        typer.echo(json.dumps({"data": rows, "count": len(rows)}))
        return
    table = Table(title="masks")
    table.add_column("file", overflow="fold")
    table.add_column("mask", overflow="fold")
    table.add_column("class shares", overflow="fold")
    for row in rows:
        table.add_row(row["image"], row["mask"], ", ".join(
            f"{c} {v:.1%}" for c, v in row["fractions"].items()))
    console.print(table)
