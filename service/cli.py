"""`taskalign` command line: serve the API, ask the rules engine, browse the catalog."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from rules import ProfileConflict, Recommendation, TaskProfile, default_engine
from rules.profile import Properties

app = typer.Typer(help="TaskAlign: task-aligned self-supervised learning for medical imaging.",
                  no_args_is_help=True, add_completion=False)


def _register_subcommands() -> None:
    from .cli_datasets import app as datasets_app
    from .cli_jobs import app as jobs_app
    from .cli_predict import predict
    from .cli_zoo import app as zoo_app

    app.add_typer(zoo_app, name="zoo")
    app.add_typer(datasets_app, name="datasets")
    app.add_typer(jobs_app, name="jobs")
    app.command("predict")(predict)


_register_subcommands()
console = Console()
err_console = Console(stderr=True)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address.")] = None,
    port: Annotated[int | None, typer.Option(help="Port.")] = None,
) -> None:
    """Start the API (SQLite under TASKALIGN_HOME unless TASKALIGN_DATABASE_URL says otherwise)."""
    import uvicorn

    from .config import get_settings
    from .main import create_app

    settings = get_settings()
    uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port,
                log_level=settings.log_level, timeout_keep_alive=settings.keep_alive_seconds)


def _about(field: str) -> str:
    """A CLI option's help: the API field's own description."""
    fields = {**TaskProfile.model_fields, **Properties.model_fields}
    return fields[field].description or ""


# Every TaskProfile and Properties field has an option named as in the API (`--top-k` for
# top_k); older short names stay as aliases. tests/service/test_cli_recommend.py checks it.
@app.command()
def recommend(
    task: Annotated[str, typer.Option(help=_about("task"))],
    modality: Annotated[str, typer.Option(help=_about("modality"))],
    anatomy: Annotated[str | None, typer.Option(help=_about("anatomy"))] = None,
    dimensionality: Annotated[str | None, typer.Option(
        "--dimensionality", "--dims", help=_about("dimensionality"))] = None,
    label_regime: Annotated[str | None, typer.Option(help=_about("label_regime"))] = None,
    labeled: Annotated[int | None, typer.Option(help=_about("labeled"))] = None,
    unlabeled: Annotated[int | None, typer.Option(help=_about("unlabeled"))] = None,
    classes: Annotated[int | None, typer.Option(help=_about("classes"))] = None,
    orientation_sensitive: Annotated[bool | None, typer.Option(
        "--orientation-sensitive/--orientation-free", help=_about("orientation_sensitive"))]
    = None,
    lesion_scale: Annotated[str | None, typer.Option(help=_about("lesion_scale"))] = None,
    signal_organization: Annotated[str | None, typer.Option(
        "--signal-organization", "--signal", help=_about("signal_organization"))] = None,
    patient_ids: Annotated[bool | None, typer.Option(
        "--patient-ids/--no-patient-ids", help=_about("patient_ids"))] = None,
    paired_modalities: Annotated[list[str] | None, typer.Option(
        "--paired-modalities", "--paired",
        help=f"{_about('paired_modalities')} Repeat for several.")] = None,
    multi_sequence: Annotated[bool | None, typer.Option(
        "--multi-sequence/--single-sequence", help=_about("multi_sequence"))] = None,
    temporal: Annotated[bool | None, typer.Option(
        "--temporal/--static", help=_about("temporal"))] = None,
    color: Annotated[bool | None, typer.Option(
        "--color/--grayscale", help=_about("color"))] = None,
    noise: Annotated[str | None, typer.Option(help=_about("noise"))] = None,
    kspace: Annotated[bool | None, typer.Option(
        "--kspace/--no-kspace", help=_about("kspace"))] = None,
    atlas: Annotated[bool | None, typer.Option(
        "--atlas/--no-atlas", help=_about("atlas"))] = None,
    multi_site: Annotated[bool | None, typer.Option(
        "--multi-site/--single-site", help=_about("multi_site"))] = None,
    longitudinal: Annotated[bool | None, typer.Option(
        "--longitudinal/--cross-sectional", help=_about("longitudinal"))] = None,
    whole_slide: Annotated[bool | None, typer.Option(
        "--whole-slide/--no-whole-slide", help=_about("whole_slide"))] = None,
    gpu_memory_gb: Annotated[float | None, typer.Option(help=_about("gpu_memory_gb"))] = None,
    top_k: Annotated[int, typer.Option(help=_about("top_k"))] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the API's JSON.")] = False,
) -> None:
    """Recommend pretext methods for a task profile."""
    given = dict(locals())
    props = {k: given.get(k) for k in Properties.model_fields if given.get(k) not in (None, [])}
    raw = {k: given.get(k) for k in TaskProfile.model_fields
           if k != "properties" and given.get(k) is not None}
    raw["properties"] = props
    try:
        profile = TaskProfile.model_validate(raw)
        engine = default_engine()
        ev = engine.evaluate(profile)
        encoders = _local_encoders()
        if as_json:
            from .routers.recommendations import matcher_over, recommendation_json

            body = recommendation_json(engine, profile, matcher_over(encoders))
            typer.echo(body.decode())
            return
        rec = engine.recommend(profile)
    except ValidationError as err:
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"])
            err_console.print(f"[red]error[/red] {field}: {e['msg']}")
        raise typer.Exit(2) from None
    except ProfileConflict as err:
        err_console.print(f"[red]error[/red] {err.field}: {err.reason}")
        raise typer.Exit(2) from None
    from zoo.matching import rank_encoders

    # Every usable encoder, ranked as the API ranks them (which lists the best 5).
    matches = rank_encoders(ev.profile, ev.ranked, encoders, limit=max(len(encoders), 5))
    _print_recommendation(rec, matches, _implemented())


def _local_encoders() -> list:
    """Encoders of the local zoo (TASKALIGN_HOME), without migrating or creating anything."""
    from sqlalchemy.exc import SQLAlchemyError

    from zoo.matching import EncoderFacts
    from zoo.registry import Registry
    from zoo.storage import BlobStore

    from .config import get_settings
    from .db import make_engine, session_factory

    settings = get_settings()
    url = settings.resolved_database_url()
    if url.startswith("sqlite") and not (settings.home / "taskalign.db").exists():
        return []
    engine = make_engine(settings)
    try:
        rows, _ = Registry(session_factory(engine), BlobStore(settings.artifacts_dir)).list(
            limit=100_000)
    except SQLAlchemyError:
        return []
    finally:
        engine.dispose()
    return [EncoderFacts(name=r.name, revision=r.latest_revision, method_id=r.method_id,
                         family=r.family, modality=r.modality, spatial_dims=r.spatial_dims,
                         in_channels=r.in_channels, feature_dim=r.feature_dim) for r in rows]


def _implemented() -> frozenset[str]:
    """Method ids with a pretext objective in this installation (zoo.training's registry;
    it needs torch, so it is read only for the human-readable answer)."""
    try:
        from zoo.training.pretext.registry import OBJECTIVES
    except ImportError:  # no training stack installed: nothing runs here
        return frozenset()
    return frozenset(OBJECTIVES)


def _print_recommendation(rec: Recommendation, matches: list[dict] | None = None,
                          implemented: frozenset[str] = frozenset()) -> None:
    """The answer for a terminal, readable at 80 columns: a narrow table whose method ids
    are never cut, then each method's details (name, family, hyperparameters, matching zoo
    encoders) on lines of their own."""
    from rich.padding import Padding

    matches = matches or []
    p = rec.profile
    console.print(f"[bold]{p.task}[/bold] · {p.modality}"
                  f"{' · ' + p.anatomy if p.anatomy else ''} · {p.dimensionality} · "
                  f"labels: [bold]{p.label_regime}[/bold] ({p.label_regime_source}"
                  f"{'' if p.label_regime_rule == 'given' else '; ' + p.label_regime_rule})")
    table = Table(show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("method", no_wrap=True,
                     min_width=max((len(r.id) for r in rec.recommendations), default=6))
    table.add_column("Table 3", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("pretext", no_wrap=True)
    for r in rec.recommendations:
        runs = ("[green]runnable here[/green]" if r.id in implemented
                else "literature only" if r.literature_only else "not yet")
        table.add_row(str(r.rank), r.id, r.alignment.rating, f"{r.score:g}", runs)
    console.print(table)
    keys = ("mask_ratio", "temperature", "crop_scale", "grid", "patch_size", "queue_size")
    for r in rec.recommendations:
        console.print(f"[bold]{r.rank}. {r.id}[/bold]: {r.name} ({r.family})", highlight=False)
        details = []
        hp = ", ".join(f"{k}={r.hyperparameters[k]}" for k in keys if k in r.hyperparameters)
        if hp:
            details.append(f"hyperparameters: {hp}")
        zoo = [m["name"] for m in matches if m["method_id"] == r.id]
        details.append(f"zoo: {', '.join(zoo)}" if zoo else "[dim]zoo: no encoder[/dim]")
        if r.literature_only:
            details.append(f"[dim]literature only: {r.literature_only}[/dim]")
        for line in details:
            console.print(Padding(line, (0, 0, 0, 4), expand=False), highlight=False)
    if implemented:
        console.print("[dim]runnable here: taskalign jobs submit --type pretrain --method ID; "
                      "literature only: its input exists in no data set here; not yet: no "
                      "objective implemented[/dim]")
    if matches:
        console.print("[bold]zoo encoders[/bold] for this profile, best first:")
        for m in matches[:5]:
            console.print(Padding(f"{m['name']} ({m['score']:g}): {'; '.join(m['reasons'])}",
                                  (0, 0, 0, 2), expand=False), highlight=False)
    colour = {"high": "red", "medium": "yellow", "low": "cyan"}
    for w in rec.warnings:
        refs = ", ".join(f"[{e.id}]" for e in w.evidence)
        console.print(f"[{colour[w.severity]}]warning[/] {w.code}: {w.message} {refs} "
                      f"[dim]({w.rule})[/dim]")
    a = rec.label_advice
    console.print(f"[bold]label regime {a.regime}[/bold]: {a.expected_benefit}\n"
                  f"  evaluate: {a.evaluation}\n  adapt: {a.adaptation} [dim]({a.rule})[/dim]")
    if rec.augmentations.avoid:
        by_rule: dict[str, list[str]] = {}
        for x in rec.augmentations.avoid:
            by_rule.setdefault(x.rule, []).append(x.name)
        avoided = "; ".join(f"{', '.join(sorted(names))} [dim]({rule})[/dim]"
                            for rule, names in sorted(by_rule.items()))
        console.print(f"avoid augmentations: {avoided}")
    for note in rec.notes:
        console.print(f"[dim]note[/dim] {note.text} [dim]({note.rule})[/dim]", highlight=False)
    for item in rec.assumptions:
        if item.source == "global default":
            continue
        console.print(f"[dim]assumed {item.field}={item.value} ({item.source})[/dim]")


@app.command("methods")
def list_methods(
    family: Annotated[str | None, typer.Option()] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List the pretext-method catalog."""
    methods = [m for m in default_engine().kb.methods.values()
               if family is None or m.family == family]
    if as_json:
        typer.echo(json.dumps({"data": [m.model_dump() for m in methods],
                               "count": len(methods)}))
        return
    table = Table()
    for col in ("id", "name", "family", "granularity", "dims", "refs"):
        table.add_column(col)
    for m in methods:
        table.add_row(m.id, m.name, m.family, m.granularity, ",".join(m.dims),
                      ",".join(str(r) for r in m.references))
    console.print(table)


@app.command()
def worker(
    executor: Annotated[str, typer.Option(help="local (child processes) or ray (a cluster)")]
    = "local",
    ray_address: Annotated[str | None, typer.Option(help="Ray job API, e.g. "
                                                    "http://127.0.0.1:8265")] = None,
    slots: Annotated[int | None, typer.Option(help="Jobs at a time (default: GPUs, or 1)")]
    = None,
) -> None:
    """Run a job worker on its own (the API runs one too unless TASKALIGN_WORKER=false)."""
    import logging
    import signal
    import threading

    from zoo.storage import BlobStore  # noqa: F401  (import cost paid before claiming)

    from .config import get_settings
    from .db import make_engine, session_factory
    from .jobs.worker import LocalWorker
    from .migrate import upgrade

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    engine = make_engine(settings)
    upgrade(engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if executor == "ray":
        from .jobs.ray_executor import RayWorker

        address = ray_address or settings.ray_address
        if not address:
            err_console.print("[red]error[/red] --executor ray needs --ray-address or "
                              "TASKALIGN_RAY_ADDRESS")
            raise typer.Exit(2)
        w: LocalWorker | RayWorker = RayWorker(
            session_factory(engine), address, slots=slots or 1,
            stale_after=settings.job_stale_seconds)
    elif executor == "local":
        w = LocalWorker(session_factory(engine), settings.home, slots=slots,
                        stale_after=settings.job_stale_seconds)
    else:
        err_console.print("[red]error[/red] --executor is local or ray")
        raise typer.Exit(2)
    console.print(f"worker {w.id}: {w.slots} slot(s), polling {settings.resolved_database_url()}")
    w.run(stop)


@app.command("eval")
def evaluate(
    dataset: Annotated[str, typer.Option(help="e.g. pneumoniamnist, breastmnist, bccd_28")],
    encoder: Annotated[str | None, typer.Option(help="Local zoo encoder; omit for the "
                                                "random-init baseline only.")] = None,
    architecture: Annotated[str, typer.Option(help="Baseline architecture.")] = "resnet18",
    fractions: Annotated[str, typer.Option(help="Label fractions.")] = "0.01,0.1,1",
    seeds: Annotated[str, typer.Option(help="Label-subset seeds.")] = "0,1,2",
    inits: Annotated[str, typer.Option(help="Random-init baseline seeds.")] = "0,1,2",
    protocols: Annotated[str, typer.Option(help="linear_probe,knn,fine_tune")]
    = "linear_probe,knn",
    fine_tune_epochs: Annotated[int, typer.Option()] = 10,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Linear probe, kNN and fine-tuning at label fractions against random inits, under
    protocol v2: penalty, k and checkpoint chosen on a scaled validation subset, test
    opened once, paired bootstrap interval of the difference."""

    from zoo.datasets.readers import DataError, load_dataset
    from zoo.training.build import EvalPlan, random_inits
    from zoo.training.build import evaluate as evaluate_v2

    try:
        ds = load_dataset(dataset)
    except DataError as e:
        err_console.print(f"[red]error[/red] {e}")
        raise typer.Exit(2) from None
    frac = [float(f) for f in fractions.split(",")]
    init_seeds = [int(s) for s in inits.split(",")]
    plan = EvalPlan(fractions=frac, seeds=[int(s) for s in seeds.split(",")],
                    protocols=protocols.split(","), fine_tune_fractions=frac,
                    fine_tune_epochs=fine_tune_epochs, inits=init_seeds)
    ssl = []
    if encoder:
        from zoo import load_encoder

        ssl.append(load_encoder(encoder))
    baselines = random_inits(
        {"name": architecture,
         "args": {"widths": [16, 32, 64, 128]} if architecture.startswith("resnet") else {}},
        ds, init_seeds)
    results = evaluate_v2(ssl, baselines, ds, plan, {"ssl": [0], "random_init": init_seeds},
                          err_console.print)
    if as_json:
        typer.echo(json.dumps({"data": results, "count": len(results)}))
        return
    table = Table(title=f"{dataset} (test split, protocol v2)")
    for col in ("protocol", "labels", "metric", "mean", "s.d.", "runs", "majority",
                "SSL - inits, 95 %"):
        table.add_column(col)
    for r in results:
        ci = r.get("difference_ci95")
        table.add_row(r["protocol"], f"{r['label_fraction']:.0%}", r["metric"],
                      f"{r['value']:.3f}", "" if r["spread"] is None else f"{r['spread']:.3f}",
                      str(r["runs"]), f"{r['majority_rate']:.3f}",
                      f"{ci[0]:+.3f} .. {ci[1]:+.3f}" if ci else "")
    console.print(table)


if __name__ == "__main__":
    app()
