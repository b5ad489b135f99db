"""`taskalign datasets ...`: upload or register a dataset on a server, list, show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .cli_http import Client, Token, Url

app = typer.Typer(help="Datasets on a server: add (upload or register a path), list, show.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)


class _Reading:
    """A file object that advances a progress bar as httpx reads it for the upload."""

    def __init__(self, path: Path, progress: Progress, task: Any):
        self.fh = open(path, "rb")  # noqa: SIM115  (closed by the caller)
        self.progress, self.task = progress, task

    def read(self, size: int = -1) -> bytes:
        chunk = self.fh.read(size)
        self.progress.advance(self.task, len(chunk))
        return chunk

    # httpx sizes the body (Content-Length) from the descriptor and rewinds before sending.
    def fileno(self) -> int:
        return self.fh.fileno()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fh.seek(offset, whence)

    def tell(self) -> int:
        return self.fh.tell()

    def close(self) -> None:
        self.fh.close()


@app.command()
def add(
    file: Annotated[Path | None, typer.Argument(
        help="An .npz (MedMNIST keys) or a .zip of images with labels.csv to upload.",
        exists=True, dir_okay=False, readable=True)] = None,
    name: Annotated[str | None, typer.Option(
        help="Dataset name (letters, digits, '.', '_', '-'); default: the file's stem.")]
    = None,
    path: Annotated[str | None, typer.Option(
        "--path", help="Register this path on the server instead of uploading (an npz or a "
        "folder the server can read: your folder under its TASKALIGN_HOME/datasets/).")]
    = None,
    modality: Annotated[str | None, typer.Option(
        help="ct, mri, xray, ultrasound, ... (aliases such as cxr accepted).")] = None,
    channels: Annotated[int | None, typer.Option(
        help="1 or 3: channels of the images in a zip upload.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Upload a file, or register a path the server reads; prints the new dataset's id."""
    if (file is None) == (path is None):
        err.print("[red]error[/red] give a FILE to upload or --path to register, not both")
        raise typer.Exit(2)
    label = name or Path(path if path is not None else str(file)).stem
    with Client(url, token, timeout=600) as client:
        if path is not None:
            if channels is not None:
                err.print("[red]error[/red] --channels applies to uploads only")
                raise typer.Exit(2)
            body = {"name": label, "path": path, **({"modality": modality} if modality else {})}
            row = client.post("/v1/datasets", json=body)
        else:
            assert file is not None
            form = {"name": label, **({"modality": modality} if modality else {}),
                    **({"channels": str(channels)} if channels else {})}
            with Progress(TextColumn("upload {task.description}"), BarColumn(),
                          DownloadColumn(), TransferSpeedColumn(), console=err,
                          transient=True) as progress:
                task = progress.add_task(file.name, total=file.stat().st_size)
                reading = _Reading(file, progress, task)
                try:
                    row = client.post("/v1/datasets", data=form,
                                      files={"file": (file.name, reading,
                                                      "application/octet-stream")})
                finally:
                    reading.close()
    if as_json:
        typer.echo(json.dumps(row))
        return
    typer.echo(row["id"])
    err.print(f"dataset {row['id']} [bold]{row['name']}[/bold]: {_shape(row)}")


def _shape(row: dict[str, Any]) -> str:
    splits = row["summary"].get("splits", {})
    counts = ", ".join(f"{s} {v['images']}" for s, v in splits.items())
    size = "x".join(map(str, row["image_size"]))
    labels = (f"{row['num_classes']} classes" if row.get("labelled", True)
              else "no labels")
    return (f"{row.get('modality') or 'no modality'}, {row['spatial_dims']}D {size}, "
            f"{row['channels']} ch, {labels}; {counts}")


@app.command("list")
def list_datasets(
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Your datasets on the server (an admin token sees everyone's)."""
    with Client(url, token) as client:
        body = client.get("/v1/datasets", params={"limit": limit, "offset": offset})
    if as_json:
        typer.echo(json.dumps(body))
        return
    table = Table(title=f"{body['count']} datasets", box=box.SIMPLE_HEAD)
    for col in ("id", "name", "owner", "modality", "images", "classes", "train/val/test"):
        table.add_column(col, overflow="fold")
    for d in body["data"]:
        splits = d["summary"].get("splits", {})
        table.add_row(str(d["id"]), d["name"], d["owner"], d.get("modality") or "-",
                      f"{d['spatial_dims']}D {'x'.join(map(str, d['image_size']))} "
                      f"{d['channels']}ch",
                      str(d["num_classes"]) if d.get("labelled", True) else "-",
                      "/".join(str(splits.get(s, {}).get("images", 0))
                               for s in ("train", "val", "test")))
    console.print(table)


@app.command()
def show(
    dataset_id: Annotated[int, typer.Argument(metavar="ID")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """One dataset: its shape and the number of images per split and class."""
    with Client(url, token) as client:
        d = client.get(f"/v1/datasets/{dataset_id}")
    if as_json:
        typer.echo(json.dumps(d))
        return
    console.print(f"dataset {d['id']} [bold]{d['name']}[/bold] ({d['owner']}, {d['kind']})")
    console.print(f"  {_shape(d)}")
    if d.get("path"):
        console.print(f"  path {d['path']}")
    if d.get("sha256"):
        console.print(f"  sha256 {d['sha256']}")
    splits = d["summary"].get("splits", {})
    names = d["summary"].get("labels") or []
    classes = sorted({int(c) for s in splits.values() for c in s.get("per_class", {})})
    table = Table(title="images per split and class")
    table.add_column("class", overflow="fold")
    for s in splits:
        table.add_column(s, justify="right")
    for c in classes:
        label = f"{c} {names[c]}" if c < len(names) else str(c)
        table.add_row(label, *(str(v.get("per_class", {}).get(str(c), 0))
                               for v in splits.values()))
    table.add_row("[bold]all[/bold]", *(f"[bold]{v['images']}[/bold]" for v in splits.values()))
    console.print(table)
