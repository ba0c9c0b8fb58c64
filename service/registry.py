"""The model registry: one row per registered model, in any database SQLAlchemy can reach.

Each scan gets a fresh `scan_id`. Workers update a row only while it still carries
their `scan_id`, so a rescan or a delete turns an older scan's writes into no-ops.
"""

from __future__ import annotations

import datetime
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import JSON, DateTime, Integer, String, Text, create_engine, delete, func, select, text, update
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

STATES = ("queued", "scanning", "ready", "failed")
PENDING_STATES = ("queued", "scanning")


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[str] = mapped_column(String(1024))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    verdict: Mapped[str | None] = mapped_column(String(16), nullable=True)
    statistics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    scan_id: Mapped[str] = mapped_column(String(32))
    scan_profile: Mapped[str] = mapped_column(String(16))
    scan_seed: Mapped[int] = mapped_column(Integer)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_planned: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime(timezone=True))
    scanned_at: Mapped[datetime.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


def _aware(value: datetime.datetime | None) -> datetime.datetime | None:
    # SQLite drops the zone; every stored time is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=datetime.timezone.utc)
    return value


@dataclass(frozen=True)
class ModelRecord:
    """A snapshot of one registry row."""

    name: str
    source: str
    fingerprint: str
    state: str
    verdict: str | None
    statistics: dict[str, Any] | None
    error: str | None
    scan_id: str
    scan_profile: str
    scan_seed: int
    progress_done: int
    progress_planned: int
    created_at: datetime.datetime
    updated_at: datetime.datetime
    scanned_at: datetime.datetime | None

    @classmethod
    def from_row(cls, row: ModelRow) -> ModelRecord:
        return cls(
            name=row.name, source=row.source, fingerprint=row.fingerprint, state=row.state, verdict=row.verdict,
            statistics=row.statistics, error=row.error, scan_id=row.scan_id, scan_profile=row.scan_profile,
            scan_seed=row.scan_seed, progress_done=row.progress_done or 0, progress_planned=row.progress_planned or 0,
            created_at=_aware(row.created_at) or utc_now(), updated_at=_aware(row.updated_at) or utc_now(),
            scanned_at=_aware(row.scanned_at),
        )


def new_scan_id() -> str:
    return uuid.uuid4().hex


class Registry:
    """Thread-safe access to the model table: every method runs in its own transaction."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        options: dict[str, Any] = {}
        if url.get_backend_name() == "sqlite":
            # The scan worker and the request threads share the engine.
            options["connect_args"] = {"check_same_thread": False}
            if url.database in (None, "", ":memory:"):
                options["poolclass"] = StaticPool
            else:
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        self._engine = create_engine(url, **options)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def open(self) -> None:
        Base.metadata.create_all(self._engine)

    def close(self) -> None:
        self._engine.dispose()

    def ping(self) -> bool:
        """Return True when the database runs a trivial query."""
        try:
            with self._engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:  # any driver error means "not ready"; the caller reports it
            return False
        return True

    def get(self, name: str) -> ModelRecord | None:
        with self._sessions() as session:
            row = session.get(ModelRow, name)
            return ModelRecord.from_row(row) if row is not None else None

    def all(self) -> list[ModelRecord]:
        with self._sessions() as session:
            rows = session.scalars(select(ModelRow).order_by(ModelRow.name)).all()
            return [ModelRecord.from_row(row) for row in rows]

    def with_fingerprint(self, fingerprint: str) -> list[ModelRecord]:
        """Return the models whose files have this fingerprint, sorted by name."""
        with self._sessions() as session:
            statement = select(ModelRow).where(ModelRow.fingerprint == fingerprint).order_by(ModelRow.name)
            return [ModelRecord.from_row(row) for row in session.scalars(statement).all()]

    def add(self, name: str, source: str, fingerprint: str, profile: str, seed: int) -> ModelRecord | None:
        """Insert a queued row; returns None when the name is taken (the caller re-reads it)."""
        now = utc_now()
        row = ModelRow(
            name=name, source=source, fingerprint=fingerprint, state="queued", verdict=None, statistics=None,
            error=None, scan_id=new_scan_id(), scan_profile=profile, scan_seed=seed, progress_done=0,
            progress_planned=0, created_at=now, updated_at=now, scanned_at=None,
        )
        try:
            with self._sessions.begin() as session:
                session.add(row)
        except IntegrityError:
            return None
        return ModelRecord.from_row(row)

    def delete(self, name: str) -> bool:
        with self._sessions.begin() as session:
            result = cast(CursorResult[Any], session.execute(delete(ModelRow).where(ModelRow.name == name)))
            return result.rowcount > 0

    def restart_scan(self, name: str, *, profile: str, seed: int, fingerprint: str | None = None) -> ModelRecord | None:
        """Queue a new scan: fresh scan_id, state queued, verdict and statistics cleared."""
        values: dict[str, Any] = {
            "scan_id": new_scan_id(), "state": "queued", "verdict": None, "statistics": None, "error": None,
            "progress_done": 0, "progress_planned": 0, "scan_profile": profile, "scan_seed": seed,
            "updated_at": utc_now(),
        }
        if fingerprint is not None:
            values["fingerprint"] = fingerprint
        with self._sessions.begin() as session:
            session.execute(update(ModelRow).where(ModelRow.name == name).values(**values))
        return self.get(name)

    def update_scan(self, name: str, scan_id: str, **values: Any) -> bool:
        """Update the row only if it still belongs to `scan_id`; returns whether it did."""
        values["updated_at"] = utc_now()
        with self._sessions.begin() as session:
            statement = update(ModelRow).where(ModelRow.name == name, ModelRow.scan_id == scan_id).values(**values)
            result = cast(CursorResult[Any], session.execute(statement))
            return result.rowcount > 0

    def count_by_state(self) -> dict[str, int]:
        with self._sessions() as session:
            rows = session.execute(select(ModelRow.state, func.count()).group_by(ModelRow.state)).all()
        return {state: int(count) for state, count in rows}
