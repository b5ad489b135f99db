"""`taskalign zoo ...`: browse a zoo server, download verified files, move encoders."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .cli_http import Client, Token

app = typer.Typer(help="The model zoo: list, show, download, export, pull, push.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)

# `--endpoint` is the option's earlier name; TASKALIGN_ZOO_URL its earlier variable (still
# read, with a note, when TASKALIGN_URL is not set).
Endpoint = Annotated[str | None, typer.Option(
    "--url", "--endpoint", envvar="TASKALIGN_URL", show_default=False,
    help="Zoo server root. Default: TASKALIGN_URL, else http://TASKALIGN_HOST:TASKALIGN_PORT.")]


def _client(endpoint: str | None, token: str | None = None) -> Client:
    return Client(endpoint, token, zoo_alias=True)


@app.command("list")
def list_encoders(endpoint: Endpoint = None,
                  modality: Annotated[str | None, typer.Option(
                      help="ct, mri, xray, ... (aliases such as cxr accepted).")] = None,
                  method: Annotated[str | None, typer.Option()] = None,
                  family: Annotated[str | None, typer.Option()] = None,
                  dims: Annotated[str | None, typer.Option(help="2d or 3d.")] = None,
                  q: Annotated[str | None, typer.Option(
                      help="Text in name, description, modality, anatomy or dataset.")]
                  = None,
                  token: Token = None) -> None:
    """List encoders on a zoo server."""
    params = {k: v for k, v in {"modality": modality, "method": method, "family": family,
                                "dims": dims, "q": q}.items() if v}
    with _client(endpoint, token) as client:
        body = client.get("/v1/encoders", params={**params, "limit": 500})
    table = Table(title=f"{body['count']} encoders")
    for col in ("name", "method", "modality", "dims", "ch", "dim", "rev"):
        table.add_column(col, overflow="fold")
    for e in body["data"]:
        table.add_row(e["name"], e["method_id"], e["modality"], str(e["spatial_dims"]),
                      str(e["in_channels"]), str(e["feature_dim"]), str(e["latest_revision"]))
    console.print(table)


@app.command()
def show(name: str, endpoint: Endpoint = None, token: Token = None) -> None:
    """Show an encoder's card, evaluations and revisions."""
    with _client(endpoint, token) as client:
        e = client.get(f"/v1/encoders/{name}")
    card = e["card"]
    console.print(f"[bold]{e['name']}[/bold] - {card['pretext']['method_id']} on "
                  f"{card['pretraining_data']['name']} ({card['modality']}, "
                  f"{card['spatial_dims']}D, {card['in_channels']} ch, "
                  f"{'x'.join(map(str, card['input_size']))}, {card['feature_dim']}-d)")
    for ev in card.get("evaluation", []):
        spread = f" ± {ev['spread']:.3f}" if ev.get("spread") is not None else ""
        noise = f" with {ev['test_noise']} noise" if ev.get("test_noise") else ""
        ci = ev.get("difference_vs_best_ci95")
        vs = f"  (vs best init {ci[0]:+.3f} to {ci[1]:+.3f})" if ci else ""
        console.print(f"  {ev['protocol']:24s} {ev['label_fraction']:>5.0%} "
                      f"{ev['metric']} {ev['value']:.3f}{spread} on {ev['dataset']}{noise}{vs}")
    for r in e["revisions"]:
        console.print(f"  revision {r['revision']} {r['commit'][:12]} {r['created_at']}")


@app.command()
def download(name: str, endpoint: Endpoint = None,
             revision: Annotated[str | None, typer.Option()] = None,
             dest: Annotated[Path, typer.Option(help="Target folder.")] = Path("."),
             token: Token = None) -> None:
    """Download a revision's files, checking each against its sha256."""
    with _client(endpoint, token) as client:
        info = client.get(f"/v1/encoders/{name}")
        rev = next((r for r in info["revisions"]
                    if revision in (None, str(r["revision"]), r["commit"])), None)
        if revision is None:
            rev = info["revisions"][-1]
        if rev is None:
            err.print(f"[red]error[/red] no revision {revision} of {name}")
            raise typer.Exit(1)
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console) as progress:
            for filename, meta in sorted(rev["files"].items()):
                task = progress.add_task(filename, total=meta["size"])
                target = folder / filename
                part = target.with_name(target.name + ".part")
                digest = hashlib.sha256()
                path = f"/v1/encoders/{name}/files/{filename}"
                with client.http.stream("GET", path, params={"revision": rev["revision"]}) as r, \
                        open(part, "wb") as fh:
                    if r.status_code >= 400:
                        r.read()
                        raise client.refused(r)
                    for chunk in r.iter_bytes(1 << 20):
                        digest.update(chunk)
                        fh.write(chunk)
                        progress.advance(task, len(chunk))
                if digest.hexdigest() != meta["sha256"]:
                    part.unlink()
                    err.print(f"[red]error[/red] {filename}: sha256 mismatch; file discarded")
                    raise typer.Exit(1)
                os.replace(part, target)
    console.print(f"saved {len(rev['files'])} verified files to {folder}")


@app.command()
def export(name: str, out: Annotated[Path, typer.Option(help="Target folder.")],
           revision: Annotated[str | None, typer.Option()] = None) -> None:
    """Write a local zoo encoder as a Hugging Face style folder (safetensors, ONNX, card)."""
    from zoo.hub import TransferError, export_folder
    from zoo.local import local_registry

    with local_registry() as registry:
        try:
            card = export_folder(registry, name, revision, out)
        except TransferError as e:
            err.print(f"[red]error[/red] {e}")
            raise typer.Exit(1) from None
    console.print(f"exported {name} revision {card.revision} to {out}")


@app.command()
def pull(repo: Annotated[str, typer.Argument(help="ORG/REPO, e.g. taskalign/<name>")],
         endpoint: Annotated[str | None, typer.Option(
             help="Hub endpoint; a TaskAlign server's is <url>/hf. Default: the HF Hub.")]
         = None,
         revision: Annotated[str | None, typer.Option()] = None,
         token: Annotated[str | None, typer.Option(envvar="HF_TOKEN")] = None,
         owner: Annotated[str, typer.Option(help="Local namespace to register under.")]
         = "taskalign",
         private: Annotated[bool, typer.Option(help="Register as a private repository.")]
         = False) -> None:
    """Import an encoder from a Hub-compatible endpoint into the local zoo, verified."""
    from service.db import make_engine
    from service.migrate import upgrade
    from zoo.hub import TransferError
    from zoo.hub import pull as pull_repo
    from zoo.local import local_registry
    from zoo.registry import FILES, RegistrationError

    from .config import get_settings

    settings = get_settings()
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    with local_registry(settings.home, settings.database_url) as registry, Progress(
            TextColumn("{task.description}"), BarColumn(), console=console) as progress:
        task = progress.add_task(f"pull {repo}", total=len(FILES))
        try:
            card = pull_repo(registry, repo, endpoint=endpoint, revision=revision, token=token,
                             on_file=lambda _: progress.advance(task), owner=owner,
                             private=private)
        except (TransferError, RegistrationError) as e:
            err.print(f"[red]error[/red] {e}")
            raise typer.Exit(1) from None
    console.print(f"registered {card.repo_id} revision {card.revision} (sha256 of every file "
                  "checked)")


@app.command()
def push(name: str, repo: Annotated[str, typer.Option(help="ORG/REPO on the Hub.")],
         endpoint: Annotated[str | None, typer.Option(help="Hub endpoint (default HF Hub).")]
         = None,
         revision: Annotated[str | None, typer.Option()] = None,
         token: Annotated[str | None, typer.Option(envvar="HF_TOKEN")] = None,
         private: Annotated[bool, typer.Option()] = False) -> None:
    """Publish a local encoder revision to a Hugging Face Hub repository."""
    from zoo.hub import TransferError
    from zoo.hub import push as push_repo
    from zoo.local import local_registry

    with local_registry() as registry:
        try:
            commit = push_repo(registry, name, repo, endpoint=endpoint, token=token,
                               revision=revision, private=private)
        except TransferError as e:
            err.print(f"[red]error[/red] {e}")
            raise typer.Exit(1) from None
    console.print(f"pushed {name} to {repo} ({commit})")


@app.command()
def report(out: Annotated[Path, typer.Option(help="Where the write-up goes.")]
           = Path("docs/seed-zoo-evidence.md"),
           seed: Annotated[Path | None, typer.Option(help="Seed folder (default zoo/seed).")]
           = None,
           check: Annotated[bool, typer.Option(help="Only say whether `out` is current; "
                                                    "exit 1 when it is not.")] = False,
           ) -> None:
    """Write the seed zoo's evidence from its cards: every metric, interval and verdict."""
    from zoo.evidence_report import load_cards, render
    from zoo.storage import write_atomic
    from zoo.training.build import SEED_DIR

    text = render(load_cards(seed or SEED_DIR))
    if check:
        current = out.exists() and out.read_text() == text
        console.print(f"{out} is {'current' if current else 'stale: run taskalign zoo report'}")
        raise typer.Exit(0 if current else 1)
    write_atomic(out, text.encode())
    console.print(f"wrote {out}")


def _threads_of_shipped(selected: list) -> None:
    """On CPU the sums inside training depend on the thread count, so a check runs with
    the count the shipped cards were built with."""
    import torch

    from zoo.training.build import SEED_DIR

    for _, recipe in selected:
        shipped = SEED_DIR / recipe.name / "card.json"
        if shipped.exists():
            train = json.loads(shipped.read_text())["pretext"]["hyperparameters"].get("train", {})
            if train.get("cpu_threads"):
                torch.set_num_threads(int(train["cpu_threads"]))
                console.print(f"checking with {train['cpu_threads']} CPU thread(s), as the "
                              f"shipped cards were built (torch {train.get('torch', '?')}, now "
                              f"{torch.__version__})")
                return


def _compare_with_seed(built: list[Path], tolerance: float) -> None:
    import shutil

    from zoo.training.build import SEED_DIR, card_differences

    failed = False
    for folder in built:
        shipped = SEED_DIR / folder.name / "card.json"
        if not shipped.exists():
            console.print(f"{folder.name}: no shipped card to compare with")
            failed = True
            continue
        diffs = card_differences(json.loads(shipped.read_text()),
                                 json.loads((folder / "card.json").read_text()), tolerance)
        if diffs:
            failed = True
            console.print(f"[red]{folder.name}: {len(diffs)} difference(s)[/red]")
            for line in diffs[:20]:
                console.print(f"  {line}")
        else:
            console.print(f"{folder.name}: every evaluation row reproduces "
                          f"(tolerance {tolerance:g})")
    if built:
        shutil.rmtree(built[0].parent, ignore_errors=True)
    if failed:
        raise typer.Exit(1)


@app.command()
def build(recipes: Annotated[list[str] | None, typer.Argument(
              help="Recipe names (zoo/training/recipes/*.yaml); all when none given.")] = None,
          out: Annotated[Path | None, typer.Option(help="Output folder (default zoo/seed).")]
          = None,
          register: Annotated[bool, typer.Option(help="Register in the local zoo.")] = True,
          check: Annotated[bool, typer.Option(help="Rebuild into a temporary folder and "
                                                   "compare with the shipped seed cards; "
                                                   "exit 1 on any difference.")] = False,
          tolerance: Annotated[float, typer.Option(help="With --check: largest difference "
                                                        "accepted.")] = 0.0,
          ) -> None:
    """Pretrain, evaluate and register encoders from recipes (progress shown per epoch)."""
    from zoo.local import local_registry
    from zoo.training.build import build as build_one
    from zoo.training.build import load_recipes, register_seed_zoo

    from .config import get_settings
    from .db import make_engine
    from .migrate import upgrade

    try:
        selected = load_recipes(recipes)
    except ValueError as e:
        err.print(f"[red]error[/red] {e}")
        raise typer.Exit(2) from None
    if check:
        import tempfile

        out, register = Path(tempfile.mkdtemp(prefix="taskalign-check-")), False
        _threads_of_shipped(selected)
    built = []
    for _, recipe in selected:
        if recipe.profile.get("task") == "segmentation":
            # Their cards carry a U-Net study (SSL vs random init over seeds), which only
            # bench/seg_study.py produces; a rebuild here would drop it.
            console.print(f"skipped {recipe.name}: segmentation encoders are pretrained and "
                          "scored by bench/seg_study.py (the command is in the recipe)")
            continue
        with Progress(TextColumn("{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} steps"), console=console,
                      transient=True) as progress:
            task = progress.add_task(recipe.name, total=None)

            def step(done: int, total: int, _loss: object = None,
                     task=task) -> None:  # noqa: ANN001
                progress.update(task, completed=done, total=total)

            built.append(build_one(recipe, out, log=progress.console.print, on_step=step))
    if check:
        _compare_with_seed(built, tolerance)
    if register:
        settings = get_settings()
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        with local_registry(settings.home, settings.database_url) as registry:
            for folder in built:
                added = register_seed_zoo(registry, folder.parent, log=err.print)
                console.print(f"registered: {', '.join(added) or 'nothing new'}")
