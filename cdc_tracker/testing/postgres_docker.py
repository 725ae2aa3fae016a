"""The Docker path of the throwaway server: PostgreSQL with wal2json in a container.

Chosen by ``cdc_tracker.testing.postgres.start_postgres`` when env
``CDC_TRACKER_TEST_DOCKER=1``. testcontainers is optional, so it is imported only
inside the functions that need it.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from cdc_tracker.errors import ConfigError
from cdc_tracker.testing._postgres_server import (
    BASE_SETTINGS,
    HOST,
    WAL2JSON_HINT,
    PostgresServer,
    StopMode,
    free_port,
    track,
)

_LOCAL_IMAGE = "cdc-tracker/postgres-wal2json:15"
_DOCKERFILE = (
    "FROM postgres:15\n"
    "RUN apt-get update && apt-get install -y --no-install-recommends"
    " postgresql-15-wal2json && rm -rf /var/lib/apt/lists/*\n"
)


def docker_answers() -> bool:
    """Whether testcontainers is installed and a Docker engine answers a ping."""
    try:
        from testcontainers.core.docker_client import DockerClient  # noqa: PLC0415

        DockerClient().client.ping()
    except Exception:  # any failure at all means no usable engine
        return False
    return True


@functools.cache
def _build_local_image() -> str:
    from testcontainers.core.image import DockerImage  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as context:
        (Path(context) / "Dockerfile").write_text(_DOCKERFILE)
        DockerImage(path=context, tag=_LOCAL_IMAGE, clean_up=False).build()
    return _LOCAL_IMAGE


class DockerPostgres(PostgresServer):
    """PostgreSQL with wal2json in a container, published on 127.0.0.1 only.

    The image is ``image``, else env ``CDC_TRACKER_TEST_IMAGE``, else one built once
    from postgres:15 plus the wal2json package (debezium/postgres:15 ships only
    decoderbufs). ``start()`` raises ``ConfigError`` if the image lacks wal2json.
    """

    password = "cdc"

    def __init__(
        self, *, image: str | None = None, settings: dict[str, str] | None = None
    ) -> None:
        self.image = image or os.environ.get("CDC_TRACKER_TEST_IMAGE") or None
        self._settings = {**BASE_SETTINGS, **(settings or {})}
        self._container: Any = None

    def start(self) -> DockerPostgres:
        if self._container is not None:
            return self
        from testcontainers.core.config import testcontainers_config  # noqa: PLC0415

        try:
            from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415
        except ImportError:  # testcontainers before 4.15 kept it at the top level
            from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        # Ryuk publishes a port on every interface; we remove our containers ourselves.
        testcontainers_config.ryuk_disabled = True
        image = self.image or _build_local_image()
        self.port = free_port()
        container = PostgresContainer(
            image, username=self.user, password=self.password, dbname="postgres"
        )
        # The image's entrypoint runs postgres with arguments that start with "-".
        options = [f"{name}={value}" for name, value in self._settings.items()]
        container.with_command([word for o in options for word in ("-c", o)])
        # Docker accepts (host_ip, port) though testcontainers types only a port;
        # its with_bind_ports would publish on every interface.
        container.ports["5432"] = (HOST, self.port)  # type: ignore[assignment]
        try:
            container.start()
        except BaseException:
            container.stop()
            raise
        self._container = container
        track(self, owned=True)
        self._check_wal2json(image)
        return self

    def stop(self, mode: StopMode = "fast") -> None:
        """Remove the container (``mode`` does not apply); idempotent."""
        container, self._container = self._container, None
        track(self, owned=False)
        if container is not None:
            container.stop()

    def discard(self) -> None:
        """Nothing to do: ``stop()`` already removed the container."""

    def _check_wal2json(self, image: str) -> None:
        try:
            self.execute(
                "SELECT 1 FROM pg_create_logical_replication_slot("
                "'cdc_tracker_probe', 'wal2json', true)"
            )
        except psycopg.Error:
            self.stop()
            raise ConfigError(
                f"image {image} has no wal2json", hint=WAL2JSON_HINT
            ) from None
