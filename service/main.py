"""Application factory."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI

from rules import default_engine, engine_from
from rules.engine import MEMO_BYTES
from zoo.storage import BlobStore

from . import errors
from .config import Settings, get_settings
from .db import make_engine, ping, session_factory
from .limits import BodySizeLimit
from .migrate import upgrade
from .responses import EVERY_ROUTE
from .routers import datasets, encoders, health, hf, jobs, knowledge, methods, recommendations
from .url_guard import RejectNulInUrl
from .users import load_tokens
from .web import install as web
from .zoo_state import ZooState

log = logging.getLogger("taskalign")

API_DESCRIPTION = """
TaskAlign turns the 2026 review of task-aligned self-supervised learning in medical imaging
into executable guidance: describe your task, modality, labels and data, and get ranked
pretext methods with hyperparameters, augmentations, warnings and the evidence behind them.
"""


def _register_seeds(zoo: ZooState) -> None:
    from zoo.training.build import register_seed_zoo

    try:
        added = register_seed_zoo(zoo.registry, log=log.warning)
        if added:
            log.info("registered %d seed encoders: %s", len(added), ", ".join(added))
    except Exception:  # a broken seed must not take the API down
        log.exception("seed zoo registration failed")
    zoo.invalidate()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Load the knowledge base now, so a bad rule file stops start-up with file and rule id.
    memo_bytes = int(settings.recommend_memo_mb * 1024 * 1024)
    if settings.rules_dir is None and memo_bytes == MEMO_BYTES:
        rules_engine = default_engine()  # shared with the CLI and jobs in this process
    else:
        rules_engine = engine_from(settings.rules_dir, memo_bytes)
    db_engine = make_engine(settings)
    upgrade(db_engine)  # Alembic: bring the schema to head before serving
    zoo = ZooState(session_factory(db_engine), BlobStore(settings.artifacts_dir))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ping(db_engine)  # creates the SQLite file, or fails start-up if the database is down
        if settings.seed_zoo:
            # ONNX export takes seconds per encoder: register in the background and serve now.
            threading.Thread(target=_register_seeds, args=(zoo,), daemon=True,
                             name="seed-zoo").start()
        stop = threading.Event()
        worker_thread = None
        if settings.worker:
            from .jobs.worker import LocalWorker

            worker = LocalWorker(zoo.registry.sessions, settings.home,
                                 stale_after=settings.job_stale_seconds)
            worker_thread = threading.Thread(target=worker.run, args=(stop,), daemon=True,
                                             name="job-worker")
            worker_thread.start()
        yield
        stop.set()
        if worker_thread is not None:  # let it hand its running job back before exiting
            worker_thread.join(timeout=20)
        db_engine.dispose()

    # /docs and /redoc are served by the web package from vendored files (no CDN).
    app = FastAPI(title="TaskAlign", version="0.1.0", description=API_DESCRIPTION,
                  lifespan=lifespan, responses=EVERY_ROUTE, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.rules_engine = rules_engine
    app.state.db_engine = db_engine
    app.state.zoo = zoo
    app.state.tokens = load_tokens(settings)
    errors.install(app)

    v1 = APIRouter(prefix="/v1")
    v1.include_router(recommendations.router)
    v1.include_router(methods.router)
    v1.include_router(knowledge.router)
    v1.include_router(encoders.router)
    v1.include_router(datasets.router)
    v1.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(v1)
    app.include_router(hf.router)
    web.install(app)
    # Added last = outermost: the size limit runs before anything reads the body.
    app.add_middleware(RejectNulInUrl)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes, overrides=[
        ("POST", "/v1/encoders", settings.max_upload_bytes),
        ("POST", "/v1/datasets", settings.max_upload_bytes),
        ("POST", "/datasets", settings.max_upload_bytes),  # the web page's upload form
        ("POST", "/v1/encoders/*/*/embed", settings.max_embed_bytes),
        ("POST", "/v1/encoders/*/*/predict", settings.max_embed_bytes),
    ])
    return app
