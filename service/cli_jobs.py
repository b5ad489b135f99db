"""`taskalign jobs ...`: submit fine-tuning and pretraining jobs to a server, follow them
live (server-sent events), list, show, cancel, read their logs."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Annotated, Any, Literal

import httpx
import typer
from rich import box
from rich.console import Console, RenderableType
from rich.padding import Padding
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from .cli_http import Client, Token, Url

app = typer.Typer(help="Jobs on a server: submit, list, show, follow, cancel, logs.",
                  no_args_is_help=True)
console = Console()
err = Console(stderr=True)

# Progress keys the runner reports; anything else in a metrics event is a metric.
PROGRESS_KEYS = ("phase", "epoch", "epochs", "step", "steps", "eta_s", "percent")
JobId = Annotated[int, typer.Argument(metavar="ID", help="Job id (from `jobs submit`).")]


@app.command()
def submit(
    type_: Annotated[Literal["finetune", "pretrain"], typer.Option(
        "--type", help="finetune a zoo encoder, or pretrain a new one.")],
    dataset_id: Annotated[int, typer.Option(help="Dataset id (taskalign datasets list).")],
    encoder: Annotated[str | None, typer.Option(
        help="Zoo encoder owner/name to fine-tune (finetune).")] = None,
    encoder_revision: Annotated[str | None, typer.Option(
        help="Revision number or commit (default: latest).")] = None,
    mode: Annotated[Literal["auto", "linear_probe", "full"], typer.Option(
        help="linear_probe (frozen encoder) or full fine-tuning (finetune).")] = "auto",
    label_fraction: Annotated[float, typer.Option(
        help="Fraction of the train labels to use, in (0, 1].")] = 1.0,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: auto).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate (default: auto).")] = None,
    encoder_lr_multiplier: Annotated[float | None, typer.Option(
        help="Encoder lr as a fraction of the head's (finetune, mode full).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size (default: auto).")]
    = None,
    augmentation: Annotated[list[str] | None, typer.Option(
        help="Augmentation to apply (repeatable; finetune, mode full; default: auto).")]
    = None,
    seed: Annotated[int, typer.Option()] = 0,
    device: Annotated[Literal["auto", "cpu", "cuda"], typer.Option()] = "auto",
    method: Annotated[str | None, typer.Option(
        help="Pretext method id (pretrain), e.g. simclr.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Name of the new encoder (pretrain), e.g. resnet18-2d.my-ssl.")] = None,
    private: Annotated[bool | None, typer.Option(
        "--private/--public", help="Visibility of the resulting encoder (default: "
        "private).", show_default=False)] = None,
    idempotency_key: Annotated[str | None, typer.Option(
        help="Send the same key again to get the same job back, not a second one.")] = None,
    follow_it: Annotated[bool, typer.Option(
        "--follow", help="Follow the job until it ends (exit 1 unless it succeeds).")]
    = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Queue a job; prints its id. Settings left out are resolved by the server (auto)."""
    optional = {"encoder": encoder, "encoder_revision": encoder_revision, "epochs": epochs,
                "lr": lr, "encoder_lr_multiplier": encoder_lr_multiplier,
                "batch_size": batch_size, "augmentations": augmentation or None,
                "method": method, "name": name, "private": private}
    body = {"type": type_, "dataset_id": dataset_id, "mode": mode,
            "label_fraction": label_fraction, "seed": seed, "device": device,
            **{k: v for k, v in optional.items() if v is not None}}
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    with Client(url, token) as client:
        job = client.post("/v1/jobs", json=body, headers=headers)
        typer.echo(job["id"])
        err.print(f"job {job['id']} {job['status']}: {_what(job)}")
        if follow_it:
            raise typer.Exit(follow_job(client, job["id"]))


def _what(job: dict[str, Any]) -> str:
    p = job.get("params", {})
    if job["type"] == "finetune":
        return (f"finetune {p.get('encoder')} on dataset {p.get('dataset_id')} "
                f"({p.get('mode')}, {p.get('label_fraction', 1):.0%} labels, "
                f"{p.get('epochs')} epochs)")
    return (f"pretrain {p.get('method')} on dataset {p.get('dataset_id')} "
            f"({p.get('epochs')} epochs)")


def _metrics(values: dict[str, Any]) -> str:
    """Scalar metrics as k=v (a history list or a nested dict stays in --json)."""
    shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in values.items()
             if k not in PROGRESS_KEYS and isinstance(v, int | float | str)]
    return " ".join(shown)


def _indented(text: str, by: int = 2) -> Padding:
    """A line that wraps under its own indent, not at the margin."""
    return Padding(text, (0, 0, 0, by), expand=False)


def _eta(progress: dict[str, Any]) -> str:
    eta = progress.get("eta_s")
    return f"ETA {timedelta(seconds=round(eta))}" if isinstance(eta, int | float) else ""


class _JobProgress(Progress):
    """A progress bar with a line under it for the job's phase and latest metrics, so
    that the bar keeps its columns at 80 characters and the metrics are cut, not it."""

    footer = ""

    def get_renderables(self) -> Iterator[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        if self.footer:
            yield Text(self.footer, style="dim", no_wrap=True, overflow="ellipsis")


class _Bar:
    """The rich progress bar of one job: epoch/epochs, and step/steps where the runner
    counts steps, with the server's ETA; phase and latest metrics on the line below."""

    def __init__(self, progress: _JobProgress, job: dict[str, Any]):
        self.progress = progress
        self.lock = threading.Lock()
        self.state: dict[str, Any] = dict(job.get("progress") or {})
        self.metrics: dict[str, Any] = dict(job.get("metrics") or {})
        self.status = job["status"]
        self.task: TaskID = progress.add_task(f"job {job['id']}", total=None,
                                              status=self.status, count="", eta="")
        self.draw()

    def update(self, values: dict[str, Any] | None = None, metrics: dict[str, Any] | None
               = None, status: str | None = None) -> None:
        with self.lock:
            self.state.update(values or {})
            self.metrics.update(metrics or {})
            self.status = status or self.status
            self.draw()

    def draw(self) -> None:
        s = self.state
        done, total, parts = 0, None, []
        if s.get("epochs"):
            done, total = s.get("epoch", 0), s["epochs"]
            parts.append(f"epoch {done}/{total}")
        if s.get("steps") and s["steps"] != s.get("epochs"):  # the finer count fills the bar
            done, total = s.get("step", 0), s["steps"]
            parts.append(f"step {done}/{total}")
        count = " ".join(parts)
        phase = s.get("phase") if self.status == "running" else None
        self.progress.footer = " ".join(filter(None, (phase, _metrics(self.metrics))))
        self.progress.update(self.task, completed=done, total=total, status=self.status,
                             count=count, eta=_eta(s) if self.status == "running" else "")


def _poll(url: str, headers: dict[str, str], job_id: int, bar: _Bar,
          stop: threading.Event) -> None:
    """Progress that comes without an event (a pretrain job's steps and ETA), read from
    the job every second or two while the event stream is open."""
    with httpx.Client(base_url=url, headers=headers, timeout=10) as http:
        while not stop.wait(1.5):
            try:
                job = http.get(f"/v1/jobs/{job_id}").json()
            except (httpx.HTTPError, ValueError):
                continue
            if isinstance(job, dict) and "progress" in job:
                bar.update(job["progress"], job.get("metrics"), job.get("status"))


def follow_job(client: Client, job_id: int, logs: bool = True) -> int:
    """Draw the job's progress from its event stream until the stream ends; the exit code
    is 0 when the job succeeded and 1 otherwise."""
    job = client.get(f"/v1/jobs/{job_id}")
    # The texts keep their width; the bar takes what is left (about 20 at 80 columns).
    columns = (TextColumn("{task.description} [bold]{task.fields[status]}[/bold]",
                          table_column=Column(no_wrap=True)),
               BarColumn(bar_width=None),
               TextColumn("{task.fields[count]}", table_column=Column(no_wrap=True)),
               TextColumn("{task.fields[eta]}", table_column=Column(no_wrap=True)),
               TimeElapsedColumn(table_column=Column(no_wrap=True)))
    after, tries = 0, 0
    with _JobProgress(*columns, console=console) as progress:
        bar = _Bar(progress, job)
        stop = threading.Event()
        poller = threading.Thread(target=_poll, args=(client.url, dict(client.http.headers),
                                                      job_id, bar, stop), daemon=True)
        poller.start()
        try:
            while True:
                try:
                    for kind, event_id, data in client.events(
                            f"/v1/jobs/{job_id}/events", params={"after": after}):
                        tries = 0
                        after = int(event_id) if event_id else after
                        if kind == "status":
                            bar.update(status=data["data"].get("status"))
                        elif kind == "metrics":
                            values = data["data"]
                            bar.update({k: v for k, v in values.items() if k in PROGRESS_KEYS},
                                       {k: v for k, v in values.items()
                                        if k not in PROGRESS_KEYS})
                        elif kind == "log" and logs:
                            progress.console.print(f"[dim]{data['data'].get('line', '')}[/dim]",
                                                   markup=True, highlight=False)
                    break  # the server ended the stream: the job is over
                except httpx.TransportError as e:
                    tries += 1
                    if tries > 5:
                        raise client.unreachable(e) from None
                    time.sleep(1.0)  # resume after the last event seen
        finally:
            stop.set()
            poller.join(timeout=5)
        job = client.get(f"/v1/jobs/{job_id}")
        bar.update(job.get("progress"), job.get("metrics"), job["status"])
    colour = {"succeeded": "green", "cancelled": "yellow"}.get(job["status"], "red")
    console.print(f"job {job_id} [{colour}]{job['status']}[/{colour}]"
                  + (f": {job['error']}" if job.get("error") else ""))
    if job.get("result"):
        result = job["result"]
        if result.get("encoder"):
            console.print(f"  encoder {result['encoder']} revision {result.get('revision')}")
        if result.get("evaluation"):
            console.print(_indented(f"evaluation {_metrics(result['evaluation'])}"),
                          highlight=False)
    return 0 if job["status"] == "succeeded" else 1


@app.command()
def follow(
    job_id: JobId,
    quiet: Annotated[bool, typer.Option("--quiet", help="Do not print the job's log lines.")]
    = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Follow a job live until it ends: exit 0 when it succeeded, 1 otherwise."""
    with Client(url, token) as client:
        code = follow_job(client, job_id, logs=not quiet)
    raise typer.Exit(code)


@app.command("list")
def list_jobs(
    status: Annotated[str | None, typer.Option(
        help="queued, running, succeeded, failed or cancelled.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many.")] = 100,
    offset: Annotated[int, typer.Option()] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """Your jobs, newest first (an admin token sees all)."""
    params = {"limit": limit, "offset": offset, **({"status": status} if status else {})}
    with Client(url, token) as client:
        body = client.get("/v1/jobs", params=params)
    if as_json:
        typer.echo(json.dumps(body))
        return
    table = Table(title=f"{body['count']} jobs", box=box.SIMPLE_HEAD)
    for col in ("id", "type", "status", "encoder / method", "data", "epoch", "created"):
        table.add_column(col, overflow="fold", no_wrap=col != "encoder / method")
    for j in body["data"]:
        p, prog = j["params"], j["progress"]
        done = f"{prog.get('epoch', 0)}/{prog['epochs']}" if prog.get("epochs") else ""
        table.add_row(str(j["id"]), j["type"], j["status"],
                      p.get("encoder") or p.get("method") or "-", str(p.get("dataset_id")),
                      done, j["created_at"][5:16].replace("T", " "))
    console.print(table)


@app.command()
def show(
    job_id: JobId,
    as_json: Annotated[bool, typer.Option("--json", help="Print the server's JSON.")] = False,
    url: Url = None,
    token: Token = None,
) -> None:
    """A job's status, resolved settings (and where each auto value came from), progress,
    metrics, error and result."""
    with Client(url, token) as client:
        j = client.get(f"/v1/jobs/{job_id}")
    if as_json:
        typer.echo(json.dumps(j))
        return
    console.print(f"job {j['id']} [bold]{j['status']}[/bold] ({j['owner']}): {_what(j)}")
    console.print(f"  attempts {j['attempts']}/{j['max_attempts']}, device "
                  f"{j['device'] or '-'}, worker {j['worker'] or '-'}")
    for stamp in ("created_at", "started_at", "finished_at"):
        if j.get(stamp):
            console.print(f"  {stamp.removesuffix('_at')} {j[stamp]}")
    settings = {k: v for k, v in j["params"].items() if k != "auto"}
    console.print(_indented("settings " + " ".join(f"{k}={v}" for k, v in settings.items())),
                  highlight=False)
    for key, used in (j["params"].get("auto", {}).get("settings") or {}).items():
        where = used.get("rule") or used.get("source") or ""
        console.print(_indented(f"[dim]{key}={used.get('value')} auto from {where}[/dim]", 4),
                      highlight=False)
    if j["progress"]:
        console.print(_indented("progress " + " ".join(
            f"{k}={v}" for k, v in j["progress"].items())), highlight=False)
    if j["metrics"]:
        console.print(_indented(f"metrics {_metrics(j['metrics'])}"), highlight=False)
    if j.get("error"):
        console.print(f"  [red]error[/red] {j['error']}")
    if j.get("result"):
        console.print(_indented(f"result {json.dumps(j['result'])}"), highlight=False)


@app.command()
def cancel(job_id: JobId, url: Url = None, token: Token = None) -> None:
    """Cancel a job: a queued one ends at once, a running one within seconds."""
    with Client(url, token) as client:
        j = client.post(f"/v1/jobs/{job_id}/cancel")
    state = "cancelled" if j["status"] == "cancelled" else f"{j['status']}, cancel requested"
    console.print(f"job {j['id']} {state}")


@app.command()
def logs(job_id: JobId, url: Url = None, token: Token = None) -> None:
    """The runner's output, every attempt in order."""
    with Client(url, token) as client:
        text = client.request("GET", f"/v1/jobs/{job_id}/logs").text
    typer.echo(text, nl=not text.endswith("\n"))
