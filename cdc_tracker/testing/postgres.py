"""Throwaway PostgreSQL servers with wal2json, for the test suite and the demo.

``ThrowawayPostgres`` runs a private server from the local binaries: a fresh data
directory under a unique temp dir, trust auth, superuser ``cdc``,
``wal_level=logical``, listening on 127.0.0.1 only, on a free port.
``start_postgres()`` returns either that or, when ``CDC_TRACKER_TEST_DOCKER=1`` and a
Docker engine answers, a container with the same surface. Both are disposable:
durability is switched off for speed.

Failures to find or start a server raise ``ConfigError`` (nothing usable installed) or
``SourceError`` (the server would not start or stop), with the tail of the server log.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import structlog

from cdc_tracker.errors import ConfigError, SourceError
from cdc_tracker.testing import postgres_docker
from cdc_tracker.testing._postgres_server import (
    BASE_SETTINGS,
    HOST,
    SUPERUSER,
    WAL2JSON_HINT,
    PostgresServer,
    StopMode,
    free_port,
    track,
)

__all__ = ["PostgresServer", "ThrowawayPostgres", "find_install", "start_postgres"]

log = structlog.get_logger(__name__)

SYSTEM_USER = "postgres"

_RESERVED = frozenset({"listen_addresses", "port", "unix_socket_directories"})
_SETTING_NAME = re.compile(r"[a-z_][a-z0-9_.]*")
_PORT_TAKEN = ("could not bind", "Address already in use")
_PORT_ATTEMPTS = 5
_TIMEOUT_S = 60
_LOG_TAIL_LINES = 20
_PG_CTL_NOT_RUNNING = 3
# $1 owner pid, $2 temp dir, $3 keep flag, then the stop command.
_WATCHDOG = (
    'owner=$1 root=$2 keep=$3; shift 3; while [ -d "/proc/$owner" ]; do sleep 1; done;'
    ' "$@"; [ "$keep" = 1 ] || rm -rf "$root"'
)


@dataclass(frozen=True)
class _Install:
    bindir: Path
    major: str
    pkglibdir: Path


def _newest_debian_bindir() -> Path | None:
    candidates = Path("/usr/lib/postgresql").glob("*/bin")
    versions = [path for path in candidates if path.parent.name.isdigit()]
    return max(versions, key=lambda path: int(path.parent.name), default=None)


def _output(*args: str | Path) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout.strip()


@functools.lru_cache(maxsize=4)
def find_install(bindir_override: str | None = None) -> _Install:
    """Locate the server binaries and check wal2json sits beside them.

    Order: ``bindir_override`` (the env ``CDC_TRACKER_PG_BINDIR``), ``pg_config
    --bindir``, the newest ``/usr/lib/postgresql/*/bin``. Raises ``ConfigError``.
    """
    bindir: Path | None = Path(bindir_override) if bindir_override else None
    if bindir is None and shutil.which("pg_config"):
        bindir = Path(_output("pg_config", "--bindir"))
    if bindir is None or not (bindir / "initdb").exists():
        bindir = _newest_debian_bindir()
    if bindir is None or not all((bindir / n).exists() for n in ("initdb", "pg_ctl")):
        raise ConfigError(
            f"no PostgreSQL server binaries found (looked in {bindir})",
            hint="apt-get install postgresql-15, or set CDC_TRACKER_PG_BINDIR",
        )
    major = _output(bindir / "postgres", "-V").split()[-1].split(".")[0]
    pg_config = bindir / "pg_config"
    pkglibdir = (
        Path(_output(pg_config, "--pkglibdir"))
        if pg_config.exists()
        else bindir.parent / "lib"
    )
    if not (pkglibdir / "wal2json.so").exists():
        raise ConfigError(
            f"wal2json is not installed for PostgreSQL {major}: "
            f"no wal2json.so in {pkglibdir}",
            hint=WAL2JSON_HINT.replace("15", major),
        )
    return _Install(bindir=bindir, major=major, pkglibdir=pkglibdir)


def _install() -> _Install:
    return find_install(os.environ.get("CDC_TRACKER_PG_BINDIR") or None)


def _runas_prefix() -> list[str]:
    """The prefix that runs a program as ``postgres`` when we are root.

    initdb and postgres refuse to run as root.
    """
    if os.geteuid() != 0:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", SYSTEM_USER, "--"]
    return [
        "setpriv",
        f"--reuid={SYSTEM_USER}",
        f"--regid={SYSTEM_USER}",
        "--init-groups",
    ]


def _conf_line(name: str, value: str) -> str:
    if not _SETTING_NAME.fullmatch(name):
        raise ConfigError(f"invalid server setting name {name!r}")
    return f"{name} = '{value.replace(chr(39), chr(39) * 2)}'\n"


class ThrowawayPostgres(PostgresServer):
    """A private PostgreSQL server with wal2json in a unique temp dir.

    ``start()`` runs initdb on first use and starts the server (about a second);
    ``stop()`` is idempotent; ``restart()`` keeps port and data. Leaving the ``with``
    block stops the server and deletes its directory unless ``keep=True``; so does an
    atexit hook for servers left running or merely stopped at interpreter exit.
    """

    def __init__(
        self,
        *,
        settings: dict[str, str] | None = None,
        port: int | None = None,
        keep: bool = False,
    ) -> None:
        extra = dict(settings or {})
        if reserved := _RESERVED & extra.keys():
            raise ConfigError(
                f"settings {sorted(reserved)} are fixed by ThrowawayPostgres"
            )
        self._settings = {**BASE_SETTINGS, **extra}
        self._fixed_port = port
        self.port = port or 0
        self.keep = keep
        self._root: Path | None = None
        self._running = False
        self._started_before = False
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def root(self) -> Path:
        """The temp dir holding the data dir, the socket and the log."""
        if self._root is None:
            raise ConfigError("this throwaway server was never started")
        return self._root

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def running(self) -> bool:
        return self._running

    def start(self) -> ThrowawayPostgres:
        """Start the server (initialising it first if new) and wait until it accepts
        connections. Raises ``ConfigError`` or ``SourceError`` with the log's tail."""
        if self._running:
            return self
        began = time.monotonic()
        try:
            self._start(_install())
        except BaseException:
            if not self._started_before:
                self.discard()
            raise
        self._running = self._started_before = True
        track(self, owned=True)
        self._watchdog = self._spawn_watchdog(_install())
        elapsed_ms = round((time.monotonic() - began) * 1000)
        log.info("throwaway postgres started", port=self.port, elapsed_ms=elapsed_ms)
        return self

    def _start(self, install: _Install) -> None:
        if self._root is None:
            self._initialise(install)
        may_move = self._fixed_port is None and not self._started_before
        for attempt in range(_PORT_ATTEMPTS):
            if may_move and (attempt or not self.port):
                self.port = free_port()
            tail = self._launch(install)
            if tail is None:
                break
            if not (may_move and any(sign in tail for sign in _PORT_TAKEN)):
                raise SourceError(f"throwaway postgres did not start:\n{tail}")
            log.debug("port taken, retrying", port=self.port)
        else:
            raise SourceError(f"no free port after {_PORT_ATTEMPTS} attempts")

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server and wait for it; does nothing if it is not running."""
        if not self._running:
            return
        install = _install()
        done = self._run(
            install, "pg_ctl", "-D", self.data_dir, "-m", mode,
            "-w", "-t", str(_TIMEOUT_S), "stop",
        )  # fmt: skip
        # A server killed from outside leaves a stale pid file: "not running" is fine.
        if (
            done.returncode != 0
            and self._run(install, "pg_ctl", "-D", self.data_dir, "status").returncode
            != _PG_CTL_NOT_RUNNING
        ):
            raise SourceError(f"throwaway postgres did not stop:\n{done.stderr}")
        self._running = False
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog = None
        log.info("throwaway postgres stopped", port=self.port, mode=mode)

    def restart(self, mode: Literal["fast", "immediate"] = "fast") -> None:
        """Stop and start again on the same port with the same data."""
        self.stop(mode)
        self.start()

    def discard(self) -> None:
        """Delete the temp dir unless ``keep``; does nothing while the server runs."""
        if self._running:
            return
        track(self, owned=False)
        if self._root is not None and not self.keep:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _initialise(self, install: _Install) -> None:
        root = Path(tempfile.mkdtemp(prefix="cdc-pg-"))
        self._root = root
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise ConfigError(
                    "running as root but there is no 'postgres' system user",
                    hint="apt-get install postgresql-15, or run as an ordinary user",
                ) from None
            os.chown(root, account.pw_uid, account.pw_gid)
        done = self._run(
            install, "initdb", "-D", self.data_dir, "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
        )  # fmt: skip
        if done.returncode != 0:
            raise SourceError(f"initdb failed in {root}:\n{done.stderr.strip()}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("include 'cdc_tracker.conf'\n")

    def _launch(self, install: _Install) -> str | None:
        """Write the settings and start; returns None on success, else the log tail."""
        settings = {
            **self._settings,
            "port": str(self.port),
            "listen_addresses": HOST,
            "unix_socket_directories": str(self.root),
        }
        text = "".join(_conf_line(name, value) for name, value in settings.items())
        (self.data_dir / "cdc_tracker.conf").write_text(text)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        done = self._run(
            install, "pg_ctl", "-D", self.data_dir, "-l", self.log_path,
            "-w", "-t", str(_TIMEOUT_S), "start",
        )  # fmt: skip
        if done.returncode == 0:
            return None
        with self.log_path.open("rb") as server_log:
            server_log.seek(offset)
            lines = server_log.read().decode(errors="replace").splitlines()
        return "\n".join([*lines[-_LOG_TAIL_LINES:], done.stderr.strip()])

    def _spawn_watchdog(self, install: _Install) -> subprocess.Popen[bytes]:
        """A detached shell that stops the server if this process dies unannounced
        (SIGKILL skips atexit), so no orphaned server outlives a killed test run."""
        pg_ctl = [str(install.bindir / "pg_ctl"), "-D", str(self.data_dir)]
        return subprocess.Popen(
            [
                "sh", "-c", _WATCHDOG, "cdc-pg-watchdog", str(os.getpid()),
                str(self.root), "1" if self.keep else "0",
                *_runas_prefix(), *pg_ctl, "-m", "immediate", "-w", "stop",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip

    def _run(
        self, install: _Install, program: str, *args: str | Path
    ) -> subprocess.CompletedProcess[str]:
        command = [*_runas_prefix(), str(install.bindir / program), *map(str, args)]
        try:
            return subprocess.run(
                command,
                cwd=self.root,
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S + 30,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SourceError(
                f"{program} timed out after {_TIMEOUT_S + 30} s"
            ) from None


def start_postgres(
    docker: bool | None = None, *, settings: dict[str, str] | None = None
) -> PostgresServer:
    """Start a throwaway server with wal2json and return it, running.

    ``docker=None`` means: a container when env ``CDC_TRACKER_TEST_DOCKER=1`` and an
    engine answers, else a local ``ThrowawayPostgres``. ``docker=True`` without an
    engine raises ``ConfigError``.
    """
    wanted = os.environ.get("CDC_TRACKER_TEST_DOCKER") == "1"
    if docker is None:
        docker = wanted and postgres_docker.docker_answers()
        if wanted and not docker:
            log.warning("docker engine unavailable, using local server")
    elif docker and not postgres_docker.docker_answers():
        raise ConfigError(
            "no Docker engine answers", hint="start Docker or pass docker=False"
        )
    if docker:
        return postgres_docker.DockerPostgres(settings=settings).start()
    return ThrowawayPostgres(settings=settings).start()


if __name__ == "__main__":
    import sys

    from cdc_tracker.testing._postgres_cli import main

    sys.exit(main())
