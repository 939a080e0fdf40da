"""Real servers for the tests: started on 127.0.0.1, on free ports, in throw-away folders.

Each class starts one server process and stops it; the fixtures in `conftest.py` decide
their lifetime. Nothing here is a mock: MariaDB comes from the Debian binaries, the HTTP
servers are the real apps run by their real servers.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> None:
    """Poll `check()` until it returns truthy, or fail with a message naming `what`."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - a server that is still starting raises anything
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {last_error!r}")


def http_ok(url: str) -> bool:
    """True when `url` answers 2xx."""
    return requests.get(url, timeout=2).ok


class ServerProcess:
    """A subprocess serving HTTP, ready when `ready_url` answers 2xx; its output goes to a log file."""

    def __init__(self, args: list[str], ready_url: str, log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, timeout: float = 90.0):  # fmt: skip
        self.args, self.ready_url, self.log_path = args, ready_url, log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd, self.timeout = cwd, timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> "ServerProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                        cwd=self.cwd, start_new_session=True)  # fmt: skip
        try:
            wait_until(self._ready, self.timeout, what=f"{self.args[0]} at {self.ready_url}")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\n--- log ---\n{self.log_path.read_text()[-4000:]}") from None
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"exited with {self.process.returncode}: {self.log_path.read_text()[-4000:]}")
        return http_ok(self.ready_url)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class MariaDB:
    """A MariaDB server from the Debian binaries on a throw-away data dir and a free port."""

    USER, PASSWORD = "readmission", "test-only-password"
    DATABASES = ("raw_data_db", "clean_data_db", "mlflow_db")

    def __init__(self, root: Path):
        self.root = root
        self.datadir = root / "data"
        self.socket = root / "mysqld.sock"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def binary(*names: str) -> str:
        for name in names:
            found = shutil.which(name) or (Path("/usr/sbin") / name if (Path("/usr/sbin") / name).exists() else None)
            if found:
                return str(found)
        raise FileNotFoundError(f"none of {names} found: `make test` installs mariadb-server")

    def start(self) -> "MariaDB":
        if not self.datadir.exists():
            self.datadir.mkdir(parents=True)
            subprocess.run(
                [self.binary("mariadb-install-db", "mysql_install_db"), "--no-defaults", f"--datadir={self.datadir}",
                 "--user=root", "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, capture_output=True,
            )  # fmt: skip
            self._launch()
            self._sql(
                f"CREATE USER IF NOT EXISTS '{self.USER}'@'%' IDENTIFIED BY '{self.PASSWORD}';"
                + "".join(f"CREATE DATABASE IF NOT EXISTS {db}; GRANT ALL ON {db}.* TO '{self.USER}'@'%';"
                          for db in self.DATABASES)  # fmt: skip
                + "FLUSH PRIVILEGES;"
            )
        else:
            self._launch()
        return self

    def _launch(self) -> None:
        log = (self.root / "mariadb.log").open("ab")
        self.process = subprocess.Popen(
            [self.binary("mariadbd", "mysqld"), "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
             f"--pid-file={self.root / 'mysqld.pid'}", "--skip-name-resolve", "--innodb-buffer-pool-size=128M",
             "--max-allowed-packet=4M", "--innodb-flush-log-at-trx-commit=2", "--skip-log-bin"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        wait_until(self._accepts, 60, what="MariaDB to accept connections")

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError((self.root / "mariadb.log").read_text()[-3000:])
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return self.socket.exists()

    def _sql(self, statements: str) -> None:
        subprocess.run([self.binary("mariadb", "mysql"), "--no-defaults", f"--socket={self.socket}", "-uroot",
                        "-e", statements], check=True, capture_output=True)  # fmt: skip

    def url(self, database: str) -> str:
        """SQLAlchemy URL of `database` for the test user."""
        return f"mysql+pymysql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def reset(self, *databases: str) -> None:
        """Drop and recreate databases, so a test starts from nothing."""
        names = databases or self.DATABASES
        self._sql("".join(f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};" for db in names))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
