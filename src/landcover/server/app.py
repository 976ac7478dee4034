"""The HTTP service: :func:`create_app` builds the FastAPI application of ``landcover serve``.

Routes (JSON unless said otherwise; writes need the token, see :mod:`.security`):

- ``GET /``: the web page (models, jobs with live progress, a map of a job's imagery and classes);
- ``GET /api``: the service's version and limits;
- ``GET|POST /api/models``, ``GET|DELETE /api/models/{name}``: list, install (JSON ``{"path", "name"}`` for a
  package under the data root, or the ``.dlpk`` bytes as the body with ``?name=``), show, uninstall;
- ``GET|POST /api/jobs``, ``GET /api/jobs/{id}``, ``POST /api/jobs/{id}/cancel``, ``GET /api/jobs/{id}/log``;
- a finished job's layers: ``/api/jobs/{id}/cog`` (and ``/probabilities``), ``/tiles/{z}/{x}/{y}.png``,
  ``/imagery/{z}/{x}/{y}.png``, ``/tilejson.json?layer=classes|imagery``, ``/WMTSCapabilities.xml``,
  ``/point?lon=&lat=``.

Every refusal is a 4xx answer ``{"error": "<one line naming the problem>"}``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import LandcoverError
from . import catalog, tiles
from .jobs import CLASSES_FILE, PROBABILITIES_FILE, Runner, job_folder
from .security import ApiError, BodyLimit, DataRoots, check_name, check_token
from .store import ACTIVE, FINISHED, JobRow, Store
from .submit import JobRequest, validate

STATIC = Path(__file__).parent / "static"
#: JSON request bodies larger than this are refused (a job request is a few hundred bytes)
JSON_LIMIT = 64 * 1024


@dataclass
class ServeConfig:
    """What ``landcover serve`` was started with."""

    home: Path
    token: str
    data_roots: list[Path] = field(default_factory=list)
    db: str | None = None
    scheduler: str | None = None
    workers: int | None = None
    max_jobs: int = 1
    max_queued: int = 100
    max_upload_mb: int = 1024

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{self.home / 'landcover.db'}"


class Service:
    """The state routes share: config, store, runner, data roots and the loaded packages of installed models."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.home = config.home
        self.models_dir = self.home / "models"
        self.models_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "jobs").mkdir(exist_ok=True)
        self.roots = DataRoots.of(config.data_roots)
        self.store = Store(config.db_url)
        self.runner = Runner(self.store, self.home, config.max_jobs, config.scheduler, config.workers)
        self._packages: dict[str, object] = {}
        self._lock = threading.Lock()
        for leftover in self.models_dir.glob(".staging-*.partial"):  # an install the kill interrupted
            shutil.rmtree(leftover, ignore_errors=True)

    def package(self, name: str):
        """The loaded package of an installed model (cached), or a 404."""
        row = self.store.model(name)
        if row is None:
            raise ApiError(404, f"model {name!r} is not installed (GET /api/models lists them)")
        with self._lock:
            pkg = self._packages.get(name)
        if pkg is None:
            from ..package import load_package

            pkg = load_package(row.path)
            with self._lock:
                self._packages[name] = pkg
        return pkg

    def forget(self, name: str) -> None:
        with self._lock:
            self._packages.pop(name, None)

    def finished_job(self, job_id: int) -> JobRow:
        row = self.job(job_id)
        if row.state != FINISHED:
            raise ApiError(409, f"job {job_id} is {row.state}; its layers exist once it has finished")
        return row

    def job(self, job_id: int) -> JobRow:
        row = self.store.job(job_id)
        if row is None:
            raise ApiError(404, f"job {job_id} does not exist (GET /api/jobs lists them)")
        return row

    def cog(self, job_id: int) -> Path:
        self.finished_job(job_id)
        return job_folder(self.home, job_id) / CLASSES_FILE


def create_app(config: ServeConfig) -> FastAPI:
    """The service's application (the job runner starts and stops with it)."""
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        service.runner.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.runner.stop)

    app = FastAPI(title="landcover serve", version=__version__, lifespan=lifespan, docs_url="/api/docs",
                  redoc_url=None, openapi_url="/api/openapi.json")
    app.state.service = service
    app.add_middleware(BodyLimit, limit=JSON_LIMIT, upload_limit=config.max_upload_mb << 20,
                       upload_prefixes=("/api/models",))
    _error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def writer(authorization: str | None = Header(None), x_landcover_token: str | None = Header(None)) -> None:
        check_token(config.token, authorization, x_landcover_token)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api")
    def about():
        return {"service": "landcover serve", "version": __version__, "max_jobs": config.max_jobs,
                "max_queued": config.max_queued, "max_upload_mb": config.max_upload_mb,
                "cluster": bool(service.runner.scheduler), "writes_need_token": True}

    _model_routes(app, service, writer)
    _job_routes(app, service, writer)
    _layer_routes(app, service)
    return app


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(LandcoverError)
    async def landcover_error(_request, exc: LandcoverError):
        return JSONResponse({"error": str(exc)}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "the request body is not valid JSON"}, status_code=400)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid')}{more}"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)


# --- models ------------------------------------------------------------------------------------------------

def _model_routes(app: FastAPI, service: Service, writer) -> None:
    @app.get("/api/models")
    def list_models():
        return {"models": [{"name": m.name, "installed_at": m.installed_at.isoformat() + "Z", **m.info}
                           for m in service.store.models()]}

    @app.get("/api/models/{name}")
    def show_model(name: str):
        row = service.store.model(check_name(name))
        if row is None:
            raise ApiError(404, f"model {name!r} is not installed (GET /api/models lists them)")
        return {"name": row.name, "installed_at": row.installed_at.isoformat() + "Z", **row.info}

    @app.post("/api/models", status_code=201, dependencies=[Depends(writer)])
    async def install_model(request: Request, name: str | None = Query(None, max_length=64)):
        staging = catalog.staging_dir(service.models_dir)
        try:
            if request.headers.get("content-type", "").startswith("application/json"):
                body = await _json_body(request)
                path = body.get("path")
                name = body.get("name") or name
                source = await run_in_threadpool(service.roots.resolve, path, "path")
                await run_in_threadpool(catalog.check_package_files, source, service.roots)
                name = check_name(name or catalog.default_name(source))
                _refuse_duplicate(service, name)
                copied = await run_in_threadpool(catalog.copy_package, source, staging)
            else:
                name = check_name(name or "")  # an upload has no file name to take one from
                _refuse_duplicate(service, name)
                copied = staging / f"{name}.dlpk"
                await _receive_file(request, copied)
            installed, info = await run_in_threadpool(catalog.install, staging, copied, service.models_dir, name)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        if not service.store.add_model(name, str(installed), info):
            shutil.rmtree(installed.parent, ignore_errors=True)
            raise ApiError(409, f"model {name!r} is already installed; uninstall it first or choose another name")
        return {"name": name, **info}

    @app.delete("/api/models/{name}", dependencies=[Depends(writer)])
    def uninstall_model(name: str):
        row = service.store.model(check_name(name))
        if row is None:
            raise ApiError(404, f"model {name!r} is not installed (GET /api/models lists them)")
        if name in service.store.models_in_use():
            raise ApiError(409, f"model {name!r} has queued or running jobs; cancel them first")
        service.store.remove_model(name)
        service.forget(name)
        shutil.rmtree(service.models_dir / name, ignore_errors=True)
        return {"name": name, "uninstalled": True}


def _refuse_duplicate(service: Service, name: str) -> None:
    if service.store.model(name) is not None:
        raise ApiError(409, f"model {name!r} is already installed; uninstall it first or choose another name")


async def _json_body(request: Request) -> dict:
    import json

    try:
        body = json.loads(await request.body())
    except ValueError:
        raise ApiError(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("path"), str):
        raise ApiError(422, "give {\"path\": \"<package under the data root>\", \"name\": \"<optional name>\"}")
    return body


async def _receive_file(request: Request, dst: Path) -> None:
    """Stream the request body into ``dst`` (the size limit is the middleware's)."""
    size = 0
    with open(dst, "wb") as f:
        async for chunk in request.stream():
            size += len(chunk)
            f.write(chunk)
    if size == 0:
        raise ApiError(400, "the upload is empty: send the .dlpk file as the request body")


# --- jobs --------------------------------------------------------------------------------------------------

def _job_routes(app: FastAPI, service: Service, writer) -> None:
    @app.get("/api/jobs")
    def list_jobs(state: str | None = Query(None, max_length=16), limit: int = Query(100, ge=1, le=1000)):
        states = tuple(state.split(",")) if state else None
        return {"jobs": [j.as_dict() for j in service.store.jobs(states, limit)]}

    @app.post("/api/jobs", status_code=201, dependencies=[Depends(writer)])
    def submit(req: JobRequest):
        pkg = service.package(check_name(req.model))
        if service.store.count(ACTIVE) >= service.config.max_queued:
            raise ApiError(429, f"{service.config.max_queued} jobs are queued or running already (the service's "
                                "--max-queued); try again when some have finished")
        request, imagery = validate(req, service.roots, pkg)
        request["display"] = imagery
        classes = [{"value": c.value, "name": c.name, "color": list(c.color)} for c in pkg.classes]
        request["rgb"] = [b + 1 for b in pkg.extract_bands[:3]] if len(pkg.extract_bands) >= 3 else [1, 1, 1]
        row = service.store.add_job(req.model, req.owner or "anonymous", request, classes)
        service.runner.wake()
        return row.as_dict()

    @app.get("/api/jobs/{job_id}")
    def show_job(job_id: int):
        return service.job(job_id).as_dict()

    @app.post("/api/jobs/{job_id}/cancel", dependencies=[Depends(writer)])
    def cancel(job_id: int):
        row = service.job(job_id)
        if not service.runner.cancel(job_id):
            raise ApiError(409, f"job {job_id} is {service.job(job_id).state}; only queued or running jobs can be "
                                "cancelled")
        return service.job(row.id).as_dict()

    @app.get("/api/jobs/{job_id}/log")
    def job_log(job_id: int):
        service.job(job_id)
        path = job_folder(service.home, job_id) / "worker.log"
        if not path.is_file():
            return Response("", media_type="text/plain")
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            return Response(f.read(), media_type="text/plain")


# --- layers ------------------------------------------------------------------------------------------------

PNG_HEADERS = {"Cache-Control": "public, max-age=3600"}


def _layer_routes(app: FastAPI, service: Service) -> None:
    @app.get("/api/jobs/{job_id}/cog")
    def download(job_id: int):
        return FileResponse(service.cog(job_id), media_type="image/tiff", filename=f"landcover-job{job_id}.tif")

    @app.get("/api/jobs/{job_id}/probabilities")
    def download_probabilities(job_id: int):
        service.finished_job(job_id)
        path = job_folder(service.home, job_id) / PROBABILITIES_FILE
        if not path.is_file():
            raise ApiError(404, f"job {job_id} was submitted without probabilities")
        return FileResponse(path, media_type="image/tiff", filename=f"landcover-job{job_id}-probabilities.tif")

    @app.get("/api/jobs/{job_id}/tiles/{z}/{x}/{y}.png")
    def class_tile(job_id: int, z: int, x: int, y: int):
        row = service.finished_job(job_id)
        cmap = {c["value"]: (*c["color"], 255) for c in row.classes}
        cmap[0] = (0, 0, 0, 0)
        png = tiles.class_tile(service.cog(job_id), cmap, z, x, y)
        return Response(png, media_type="image/png", headers=PNG_HEADERS)

    @app.get("/api/jobs/{job_id}/imagery/{z}/{x}/{y}.png")
    def imagery_tile(job_id: int, z: int, x: int, y: int):
        row = service.job(job_id)
        png = tiles.imagery_tile(_display_imagery(row), tuple(row.request["rgb"]), z, x, y)
        return Response(png, media_type="image/png", headers=PNG_HEADERS)

    @app.get("/api/jobs/{job_id}/point")
    def point(job_id: int, lon: float = Query(ge=-180, le=180), lat: float = Query(ge=-90, le=90)):
        row = service.finished_job(job_id)
        value = tiles.value_at(service.cog(job_id), lon, lat)
        cls = next((c for c in row.classes if c["value"] == value), None)
        return {"value": value, "name": cls["name"] if cls else None}

    @app.get("/api/jobs/{job_id}/tilejson.json")
    def tilejson(request: Request, job_id: int, layer: str = Query("classes", pattern="^(classes|imagery)$")):
        row = service.finished_job(job_id)
        base = str(request.base_url).rstrip("/")
        path = "tiles" if layer == "classes" else "imagery"
        doc = tiles.tilejson(f"landcover job {job_id} {layer}", f"{base}/api/jobs/{job_id}/{path}/{{z}}/{{x}}/{{y}}"
                             ".png", tiles.layer_info(service.cog(job_id)), f"model {row.model}")
        if layer == "classes":
            doc["classes"] = row.classes
        return doc

    @app.get("/api/jobs/{job_id}/WMTSCapabilities.xml")
    def wmts(request: Request, job_id: int):
        row = service.finished_job(job_id)
        base = str(request.base_url).rstrip("/") + f"/api/jobs/{job_id}"
        layers = [(f"job{job_id}-classes", f"landcover job {job_id}: classes ({row.model})",
                   f"{base}/tiles/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"),
                  (f"job{job_id}-imagery", f"landcover job {job_id}: imagery",
                   f"{base}/imagery/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png")]
        xml = tiles.wmts_capabilities(f"landcover job {job_id}", layers, tiles.layer_info(service.cog(job_id)))
        return Response(xml, media_type="application/xml")


def _display_imagery(row: JobRow):
    """The job's input imagery as validated at submission."""
    from ..sources import BandRef, Imagery

    d = row.request["display"]
    return Imagery(d["kind"], tuple(BandRef(p, int(b), n) for p, b, n in d["bands"]), tuple(d["tiles"]),
                   "imagery", bool(d.get("raw")))
