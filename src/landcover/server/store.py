"""The service's job store: installed models and classification jobs in a real database (SQLAlchemy).

SQLite in the service folder by default; any SQLAlchemy URL (``postgresql://…``) with ``--db``. One service
process owns a database: the job runner is the only writer of a job's state once it is queued.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from ..errors import LandcoverError

#: job states; a job moves queued -> running -> finished | failed | cancelled (running -> queued on a restart)
QUEUED, RUNNING, FINISHED, FAILED, CANCELLED = "queued", "running", "finished", "failed", "cancelled"
ACTIVE = (QUEUED, RUNNING)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    """An installed model package: its name, where its installed copy lies, and what it is (for listing)."""

    __tablename__ = "models"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    installed_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    info: Mapped[dict] = mapped_column(JSON)


class JobRow(Base):
    """A classification job: what was asked (``request``, validated), its state and progress, and its result."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64), default="anonymous")
    state: Mapped[str] = mapped_column(String(16), default=QUEUED, index=True)
    request: Mapped[dict] = mapped_column(JSON)
    classes: Mapped[list] = mapped_column(JSON)
    submitted_at: Mapped[dt.datetime] = mapped_column(DateTime, default=now)
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    blocks_done: Mapped[int] = mapped_column(Integer, default=0)
    blocks_total: Mapped[int] = mapped_column(Integer, default=0)
    mp_per_s: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def as_dict(self) -> dict[str, Any]:
        """The job as the API shows it."""
        def iso(t):
            return t.isoformat() + "Z" if t else None

        req = self.request
        return {
            "id": self.id, "model": self.model, "owner": self.owner, "state": self.state,
            "imagery": req.get("imagery"), "options": req.get("options", {}),
            "submitted_at": iso(self.submitted_at), "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at), "attempts": self.attempts,
            "progress": {"blocks_done": self.blocks_done, "blocks_total": self.blocks_total,
                         "mp_per_s": round(self.mp_per_s, 3)},
            "error": self.error, "classes": self.classes,
        }


class Store:
    """The database: sessions, and the few queries the service makes."""

    def __init__(self, url: str):
        try:
            kwargs: dict[str, Any] = {}
            if url.startswith("sqlite"):
                # the app's worker threads and the runner share the engine; SQLite waits up to 30 s on a lock
                kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
            self.engine = create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                event.listen(self.engine, "connect", _sqlite_pragmas)
            Base.metadata.create_all(self.engine)
        except (ArgumentError, OperationalError, ImportError, ValueError) as exc:
            raise LandcoverError(f"--db {_hide_password(url)}: cannot open the database "
                                 f"({str(exc).splitlines()[0][:160]})") from None
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed at the end of the block (rolled back on an exception)."""
        with self._sessions() as s, s.begin():
            yield s

    # --- models ---------------------------------------------------------------------------------------------

    def models(self) -> list[ModelRow]:
        with self.session() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.name)))

    def model(self, name: str) -> ModelRow | None:
        with self.session() as s:
            return s.get(ModelRow, name)

    def add_model(self, name: str, path: str, info: dict) -> bool:
        """Record an installed model; False when the name is taken (the caller removes its copy)."""
        try:
            with self.session() as s:
                s.add(ModelRow(name=name, path=path, info=info))
        except IntegrityError:
            return False
        return True

    def remove_model(self, name: str) -> None:
        with self.session() as s:
            row = s.get(ModelRow, name)
            if row is not None:
                s.delete(row)

    # --- jobs -----------------------------------------------------------------------------------------------

    def add_job(self, model: str, owner: str, request: dict, classes: list) -> JobRow:
        with self.session() as s:
            row = JobRow(model=model, owner=owner, request=request, classes=classes, state=QUEUED)
            s.add(row)
            s.flush()
            return row

    def job(self, job_id: int) -> JobRow | None:
        with self.session() as s:
            return s.get(JobRow, job_id)

    def jobs(self, states: tuple[str, ...] | None = None, limit: int = 200) -> list[JobRow]:
        """The most recent jobs first (``states``: only those)."""
        with self.session() as s:
            q = select(JobRow).order_by(JobRow.id.desc()).limit(limit)
            if states:
                q = q.where(JobRow.state.in_(states))
            return list(s.scalars(q))

    def count(self, states: tuple[str, ...]) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(JobRow.id)).where(JobRow.state.in_(states))) or 0)

    def update_job(self, job_id: int, only_if: tuple[str, ...] | None = None, **fields) -> bool:
        """Set ``fields`` on the job (when its state is one of ``only_if``); whether it was updated."""
        with self.session() as s:
            row = s.get(JobRow, job_id, with_for_update=True)
            if row is None or (only_if is not None and row.state not in only_if):
                return False
            for key, value in fields.items():
                setattr(row, key, value)
            return True

    def models_in_use(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(JobRow.model).where(JobRow.state.in_(ACTIVE))))


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL: readers (the page polling jobs) do not block the runner's writes
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _hide_password(url: str) -> str:
    """A database URL for a message, without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "(unreadable URL)"
