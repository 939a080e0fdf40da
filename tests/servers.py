"""Real servers for the tests: started on 127.0.0.1, on free ports, in throw-away folders.

Each class starts one server process and stops it; the fixtures in `conftest.py` decide
their lifetime. Nothing here is a mock: MariaDB comes from the Debian binaries, the HTTP
servers are the real apps run by their real servers.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GaveUp(RuntimeError):
    """Raised by a check of `wait_until` when waiting longer cannot help (the server process has exited)."""


def wait_until(check, timeout: float = 60.0, interval: float = 0.2, what: str = "condition") -> None:
    """Poll `check()` until it returns truthy, or fail with a message naming `what`; `GaveUp` ends it at once."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except GaveUp:
            raise
        except Exception as exc:  # noqa: BLE001 - a server that is still starting raises anything
            last_error = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}: {last_error!r}")


def listening(port: int) -> bool:
    """True when something accepts connections on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def http_ok(url: str) -> bool:
    """True when `url` answers 2xx."""
    return requests.get(url, timeout=2).ok


class ServerProcess:
    """A subprocess serving HTTP, ready when `ready_url` answers 2xx; its output goes to a log file."""

    def __init__(
        self,
        args: list[str],
        ready_url: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 90.0,
    ):
        self.args, self.ready_url, self.log_path = args, ready_url, log_path
        self.env = {**os.environ, **(env or {})}
        self.cwd, self.timeout = cwd, timeout
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd, start_new_session=True
        )
        try:
            wait_until(self._ready, self.timeout, what=f"{self.args[0]} at {self.ready_url}")
        except TimeoutError as exc:
            self.stop()
            raise TimeoutError(f"{exc}\n--- log ---\n{self.log_path.read_text()[-4000:]}") from None
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise GaveUp(f"{self.args[0]} exited with {self.process.returncode}: {self.log_path.read_text()[-4000:]}")
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

    def start(self) -> MariaDB:
        if not self.datadir.exists():
            self.datadir.mkdir(parents=True)
            subprocess.run(
                [
                    self.binary("mariadb-install-db", "mysql_install_db"),
                    "--no-defaults",
                    f"--datadir={self.datadir}",
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ],
                check=True,
                capture_output=True,
            )
            self._launch()
            self.sql(
                f"CREATE USER IF NOT EXISTS '{self.USER}'@'%' IDENTIFIED BY '{self.PASSWORD}';"
                + "".join(
                    f"CREATE DATABASE IF NOT EXISTS {db}; GRANT ALL ON {db}.* TO '{self.USER}'@'%';"
                    for db in self.DATABASES
                )
                + "FLUSH PRIVILEGES;"
            )
        else:
            self._launch()
        return self

    def _launch(self) -> None:
        log = (self.root / "mariadb.log").open("ab")
        self.process = subprocess.Popen(
            [
                self.binary("mariadbd", "mysqld"),
                "--no-defaults",
                f"--datadir={self.datadir}",
                "--user=root",
                f"--port={self.port}",
                "--bind-address=127.0.0.1",
                f"--socket={self.socket}",
                f"--pid-file={self.root / 'mysqld.pid'}",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=128M",
                "--max-allowed-packet=4M",
                "--innodb-flush-log-at-trx-commit=2",
                "--skip-log-bin",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._accepts, 60, what="MariaDB to accept connections")

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            raise GaveUp((self.root / "mariadb.log").read_text()[-3000:])
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return self.socket.exists()

    def sql(self, statements: str) -> None:
        """Run `statements` as root, through the socket."""
        subprocess.run(
            [self.binary("mariadb", "mysql"), "--no-defaults", f"--socket={self.socket}", "-uroot", "-e", statements],
            check=True,
            capture_output=True,
        )

    def url(self, database: str, driver: str = "pymysql") -> str:
        """SQLAlchemy URL of `database` for the test user, through `driver` (pymysql or mysqldb: mysqlclient)."""
        return f"mysql+{driver}://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{database}"

    def create(self, database: str) -> str:
        """A fresh, empty database of the test user; its URL."""
        self.sql(
            f"DROP DATABASE IF EXISTS {database}; CREATE DATABASE {database};"
            f"GRANT ALL ON {database}.* TO '{self.USER}'@'%';"
        )
        return self.url(database)

    def reset(self, *databases: str) -> None:
        """Drop and recreate databases, so a test starts from nothing."""
        names = databases or self.DATABASES
        self.sql("".join(f"DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db};" for db in names))

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)


class AirflowAPI:
    """Airflow's REST API v2 as the UI calls it: a JWT from `/auth/token`, then bearer requests."""

    FINISHED = ("success", "failed")

    def __init__(self, url: str, username: str, password: str):
        self.url = url
        answer = requests.post(f"{url}/auth/token", json={"username": username, "password": password}, timeout=30)
        answer.raise_for_status()
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.session.request(method, f"{self.url}/api/v2{path}", timeout=30, **kwargs)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def trigger(self, dag_id: str, conf: dict) -> requests.Response:
        """POST a dag run as the UI's Trigger button does (no logical date, the params form as `conf`)."""
        return self.request("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})

    def runs(self, dag_id: str) -> list[dict]:
        return self.request("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> dict:
        """The dag run once it has finished (success or failed)."""
        found: dict = {}

        def finished() -> bool:
            found.update(self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}").json())
            return found.get("state") in self.FINISHED

        wait_until(finished, timeout, interval=2, what=f"run {run_id} of {dag_id} to finish")
        return found

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        answer = self.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {ti["task_id"]: ti["state"] for ti in answer["task_instances"]}


def start_airflow(
    settings, metadata_db: str, connections: dict[str, str], log_path: Path, env: dict[str, str] | None = None
) -> tuple[ServerProcess, AirflowAPI]:
    """`readmission airflow` (what `make airflow` runs) on `settings`, with `metadata_db` as Airflow's metadata
    database and `connections` (conn id -> SQLAlchemy MySQL URL) as Airflow connections; the process, and the
    REST API signed in with the login the command printed."""
    from readmission.config import settings_environment

    environment = {name: value for name, value in os.environ.items() if not name.startswith("AIRFLOW")}
    environment |= settings_environment(settings)
    environment |= {
        "PATH": "/usr/bin:/bin",  # the command puts the venv first itself
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": metadata_db,
        **{
            f"AIRFLOW_CONN_{conn_id.upper()}": re.sub(r"^mysql\+\w+://", "mysql://", url)
            for conn_id, url in connections.items()
        },
        **(env or {}),
    }
    url = f"http://127.0.0.1:{settings.airflow_port}"
    server = ServerProcess(
        [str(VENV_BIN / "readmission"), "airflow"],
        f"{url}/api/v2/monitor/health",
        log_path,
        env=environment,
        timeout=300,
    ).start()
    try:
        wait_until(lambda: "Ctrl-C stops everything" in log_path.read_text(), 60, what="the login to be printed")
        printed = re.search(r"Airflow UI\s+(\S+)\s+user (\S+), password (\S+)", log_path.read_text())
        if not printed or printed[1] != url:
            raise AssertionError(f"`readmission airflow` did not print its address and login:\n{log_path.read_text()}")
        return server, AirflowAPI(url, printed[2], printed[3])
    except BaseException:
        server.stop()
        raise


class PostgreSQL:
    """A PostgreSQL server from the Debian binaries (Airflow's metadata database), on a throw-away data dir and a
    free port. PostgreSQL refuses to run as root, so it runs as Debian's `postgres` user, in a folder of its own."""

    USER, PASSWORD, DATABASE = "airflow", "test-only-password", "airflow"

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="postgresql-"))
        shutil.chown(self.root, "postgres", "postgres")
        self.datadir = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @staticmethod
    def binary(name: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
        if not found:
            raise FileNotFoundError(f"no PostgreSQL {name} under /usr/lib/postgresql: `make test` installs postgresql")
        return str(found[-1])

    def _as_postgres(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, **kwargs)

    def start(self) -> PostgreSQL:
        self._as_postgres(
            self.binary("initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        log = (self.root / "postgresql.log").open("ab")
        self.process = subprocess.Popen(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                self.binary("postgres"),
                "-D",
                str(self.datadir),
                "-p",
                str(self.port),
                "-h",
                "127.0.0.1",
                "-k",
                str(self.root),
                "-c",
                "fsync=off",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self._accepts, 60, what="PostgreSQL to accept connections")
        self.sql(f"CREATE USER {self.USER} PASSWORD '{self.PASSWORD}'")
        self.sql(f"CREATE DATABASE {self.DATABASE} OWNER {self.USER}")
        return self

    def _accepts(self) -> bool:
        if self.process.poll() is not None:
            raise GaveUp((self.root / "postgresql.log").read_text()[-3000:])
        self._as_postgres(self.binary("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port))
        return True

    def sql(self, statement: str) -> str:
        """Run `statement` as the superuser; what psql prints."""
        done = self._as_postgres(
            "psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-At", "-c", statement, text=True
        )
        return done.stdout

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the metadata database, as Airflow's `sql_alchemy_conn` takes it."""
        return f"postgresql+psycopg2://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{self.DATABASE}"

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_API_DOCKERFILE = REPO_ROOT / "ec2_api" / "Dockerfile"


def start_data_api(
    dataset_path: str | Path, log_dir: Path, batch_size: int = 1_000, interval: float = 300.0, admin_token: str = ""
) -> tuple[ServerProcess, str]:
    """Start the data API on a free 127.0.0.1 port with its image's command (gunicorn, one worker, `ec2_api.app:app`).

    Returns the started server (call `.stop()` when done) and its base URL. The batch
    clock starts when it is ready, so with the default interval batch 1 stays current.
    """
    port = free_port()
    env = {"DATASET_PATH": str(dataset_path), "BATCH_SIZE": str(batch_size), "BATCH_INTERVAL_SECONDS": str(interval)}
    env["DATA_API_ADMIN_TOKEN"] = admin_token
    server = ServerProcess(
        run_locally(image_command(DATA_API_DOCKERFILE), DATA_API_DOCKERFILE, port),
        f"http://127.0.0.1:{port}/health",
        log_dir / f"data-api-{port}.log",
        env=env,
        cwd=REPO_ROOT,
    )
    return server.start(), f"http://127.0.0.1:{port}"


# --- service images: tests start a service with its Dockerfile's own command ---------------------


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of `dockerfile`, comments dropped and continued lines joined."""
    instructions, parts = [], []
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        parts.append(stripped.removesuffix("\\").strip())
        if not stripped.endswith("\\"):
            keyword, _, arguments = " ".join(parts).partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
            parts = []
    return instructions


def exec_form(arguments: str, what: str) -> list[str]:
    """The argv of an exec-form (JSON array) CMD/HEALTHCHECK argument; ValueError for the shell form."""
    import json

    try:
        argv = json.loads(arguments)
    except json.JSONDecodeError:
        argv = None
    if not isinstance(argv, list) or not all(isinstance(item, str) for item in argv):
        raise ValueError(f"{what} is not in exec form (a JSON array of strings): {arguments}")
    return argv


def image_command(dockerfile: Path) -> list[str]:
    """The argv of the image's (last) CMD."""
    commands = [arguments for keyword, arguments in dockerfile_instructions(dockerfile) if keyword == "CMD"]
    if not commands:
        raise ValueError(f"{dockerfile} has no CMD")
    return exec_form(commands[-1], f"the CMD of {dockerfile}")


def exposed_port(dockerfile: Path) -> int:
    """The first port the image EXPOSEs."""
    for keyword, arguments in dockerfile_instructions(dockerfile):
        if keyword == "EXPOSE":
            return int(arguments.split()[0].split("/")[0])
    raise ValueError(f"{dockerfile} EXPOSEs no port")


def run_locally(argv: list[str], dockerfile: Path, port: int) -> list[str]:
    """`argv` from the image, run from this checkout on 127.0.0.1:`port`: its program from the
    virtualenv, 0.0.0.0 as 127.0.0.1, the EXPOSEd port as `port` and the image's WORKDIR as the repository."""
    image_port = str(exposed_port(dockerfile))
    workdir = [arguments for keyword, arguments in dockerfile_instructions(dockerfile) if keyword == "WORKDIR"][-1]

    def local(token: str) -> str:
        if token == image_port:
            return str(port)
        if token == workdir or token.startswith(workdir + "/"):
            return str(REPO_ROOT) + token[len(workdir) :]
        return token.replace("0.0.0.0", "127.0.0.1").replace(f":{image_port}", f":{port}")

    program = VENV_BIN / argv[0]
    return [str(program) if program.exists() else argv[0], *map(local, argv[1:])]


# --- Prometheus and the Pushgateway (Debian packages) ----------------------------------------------


def installed(name: str) -> str:
    """The path of an installed program; FileNotFoundError naming the package step when it is missing."""
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found: `make test` installs it (APT_PACKAGES in the Makefile)")
    return found


class Pushgateway(ServerProcess):
    """The Prometheus Pushgateway (Debian `prometheus-pushgateway`) on a free port, metrics in memory only."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [installed("prometheus-pushgateway"), f"--web.listen-address=127.0.0.1:{self.port}"],
            f"{self.url}/-/ready",
            log_dir / f"pushgateway-{self.port}.log",
        )

    def metrics(self) -> str:
        """The Pushgateway's /metrics text: what Prometheus scrapes from it."""
        response = requests.get(f"{self.url}/metrics", timeout=5)
        response.raise_for_status()
        return response.text


class PrometheusServer(ServerProcess):
    """Prometheus (Debian `prometheus`) on `config`, a throw-away TSDB under `root` and a free port."""

    def __init__(self, config: Path, root: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [
                installed("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            f"{self.url}/-/ready",
            root / f"prometheus-{self.port}.log",
        )

    def query(self, expr: str) -> list[dict]:
        """The result of an instant PromQL query; ValueError with Prometheus' own message when it fails to parse."""
        response = requests.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise ValueError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]["result"]

    def targets(self) -> list[dict]:
        """The active scrape targets with their health."""
        return requests.get(f"{self.url}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]


# --- the inference API and the MLflow server ---------------------------------------------------------

INFERENCE_API_DOCKERFILE = REPO_ROOT / "fastapi" / "Dockerfile"


def start_inference_api(
    settings: dict[str, str], log_dir: Path, workers: int = 1, wait_for_model: bool = True
) -> tuple[ServerProcess, str]:
    """Start the inference API with its image's command (gunicorn, `workers` uvicorn workers) on a free port.

    `settings` are environment variables of `Settings` (MLFLOW_TRACKING_URI, MODEL_URI,
    RELOAD_TOKEN, MODEL_POLL_SECONDS...); DATA_DIR and PROMETHEUS_MULTIPROC_DIR default to
    folders under `log_dir`. Ready when `/ready` answers (a model is loaded), or only
    `/health` when `wait_for_model` is False. Returns the server (call `.stop()`) and its URL.
    """
    port = free_port()
    env = {
        "DATA_DIR": str(log_dir / "api-data"),
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"api-metrics-{port}"),
        **settings,
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_WORKERS": str(workers),
    }
    url = f"http://127.0.0.1:{port}"
    server = ServerProcess(
        run_locally(image_command(INFERENCE_API_DOCKERFILE), INFERENCE_API_DOCKERFILE, port),
        f"{url}/ready" if wait_for_model else f"{url}/health",
        log_dir / f"inference-api-{port}.log",
        env=env,
        cwd=REPO_ROOT,
        timeout=300,
    )
    return server.start(), url


class MlflowServer(ServerProcess):
    """The real `mlflow server` on a free port, its backend store and proxied artifacts under `root` by default."""

    def __init__(self, root: Path, backend_store_uri: str | None = None, artifacts_destination: str | None = None):
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                backend_store_uri or f"sqlite:///{root / 'mlflow.db'}",
                "--artifacts-destination",
                artifacts_destination or (root / "artifacts").as_uri(),
            ],
            f"{self.url}/health",
            root / f"mlflow-{self.port}.log",
            timeout=180,
        )


# --- S3 (moto standing in for MinIO) and the MLflow server of Dockerfile_mlflow ------------------------

MLFLOW_DOCKERFILE = REPO_ROOT / "Dockerfile_mlflow"
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class S3Server(ServerProcess):
    """moto's S3 server (the real `moto_server` process) on a free port, standing in for MinIO; state in memory."""

    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
            f"{self.url}/moto-api/",
            log_dir / f"moto-s3-{self.port}.log",
        )

    def client(self):
        """A boto3 S3 client of this server."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def keys(self, bucket: str, containing: str = "") -> list[str]:
        """The keys of `bucket` that contain `containing`."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [o["Key"] for page in pages for o in page.get("Contents", []) if containing in o["Key"]]


def create_database(mariadb: MariaDB, name: str) -> str:
    """Create database `name` for the test user unless it exists (`MariaDB.reset` leaves it alone); its URL."""
    mariadb.sql(f"CREATE DATABASE IF NOT EXISTS {name}; GRANT ALL ON {name}.* TO '{mariadb.USER}'@'%';")
    return mariadb.url(name)


def start_mlflow_image(
    backend_store_uri: str, artifacts_destination: str, s3_endpoint_url: str, log_dir: Path
) -> tuple[ServerProcess, str]:
    """Start the real `mlflow server` with Dockerfile_mlflow's own command on a free 127.0.0.1 port.

    That command (scripts/mlflow_server.sh) runs `mlflow db upgrade` on `backend_store_uri`,
    then serves with artifacts proxied to `artifacts_destination` (s3://bucket/prefix) at
    `s3_endpoint_url`, accepting only the Host headers 127.0.0.1:<port> and localhost:<port>.
    Returns the server (call `.stop()`) and its URL.
    """
    port = free_port()
    env = {
        **S3_TEST_CREDENTIALS,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_BACKEND_STORE_URI": backend_store_uri,
        "MLFLOW_ARTIFACTS_DESTINATION": artifacts_destination,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint_url,
        "MLFLOW_SERVER_ALLOWED_HOSTS": f"127.0.0.1:{port},localhost:{port}",
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
    }
    server = ServerProcess(
        run_locally(image_command(MLFLOW_DOCKERFILE), MLFLOW_DOCKERFILE, port),
        f"http://127.0.0.1:{port}/health",
        log_dir / f"mlflow-{port}.log",
        env=env,
        cwd=REPO_ROOT,
        timeout=240,
    )
    return server.start(), f"http://127.0.0.1:{port}"
