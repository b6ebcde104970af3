"""A real single-node Apache Kafka broker (KRaft) for tests and local runs (docs/design.md §9).

The broker runs from the official jars named in ``tests/kafka/pom.xml``, resolved once with Maven into
``tests/kafka/lib``. :class:`KafkaBroker` writes ``server.properties`` into its data directory, formats
the storage with ``kafka.tools.StorageTool``, starts ``kafka.Kafka`` in its own process group on free
loopback ports, waits until an admin client answers and stops it with SIGTERM (SIGKILL after a grace
period). The same broker can be stopped and started again on the same data directory and ports, which
is how tests take the broker away in the middle of a run.

Command line (``make kafka-up`` / ``make kafka-down``)::

    python -m tests.kafka.broker up       # prints the bootstrap address; state in .kafka/state.json
    python -m tests.kafka.broker status   # exit status 0 when running
    python -m tests.kafka.broker down
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import fcntl
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

__all__ = ["KafkaBroker", "KafkaHarnessError", "ensure_jars", "free_port", "main"]

KAFKA_DIR = Path(__file__).resolve().parent
REPO_ROOT = KAFKA_DIR.parent.parent
POM = KAFKA_DIR / "pom.xml"
LIB_DIR = KAFKA_DIR / "lib"
# Where `up` keeps its state and data; STREAMLEARN_KAFKA_STATE_DIR moves it (tests of the CLI do).
STATE_DIR = Path(os.environ.get("STREAMLEARN_KAFKA_STATE_DIR", REPO_ROOT / ".kafka"))
STATE_FILE = STATE_DIR / "state.json"
_LOCK_DIR = REPO_ROOT / ".kafka"  # ignored by git; on the same file system as LIB_DIR

_INSTALL_JAVA = "install a Java 17+ runtime, e.g. `sudo apt-get install openjdk-17-jre-headless`"
_INSTALL_MAVEN = "install Maven, e.g. `sudo apt-get install maven`"
_PR_SET_PDEATHSIG = 1


class KafkaHarnessError(RuntimeError):
    """The test broker cannot be prepared, started or stopped; the message says why and what to do."""


# --------------------------------------------------------------------------- jars


def _kafka_version() -> str:
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if not found:
        raise KafkaHarnessError(f"{POM} has no <kafka.version> property")
    return found.group(1).strip()


def ensure_jars(lib_dir: Path = LIB_DIR) -> Path:
    """Resolve the broker jars with Maven unless ``lib_dir`` already holds the pinned version.

    A file lock keeps concurrent test sessions from downloading into the same folder at once; the
    jars land in a sibling temporary folder that is renamed into place, so a half download is never used.
    """
    version = _kafka_version()
    marker = lib_dir / f"kafka_2.13-{version}.jar"
    if marker.exists():
        return lib_dir
    _LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(_LOCK_DIR / "lib.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return lib_dir
        mvn = shutil.which("mvn")
        if mvn is None:
            raise KafkaHarnessError(
                f"the Kafka jars are missing from {lib_dir} and `mvn` is not on PATH: {_INSTALL_MAVEN}"
            )
        staging = Path(tempfile.mkdtemp(prefix="lib-", dir=_LOCK_DIR))
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not (staging / marker.name).exists():
            shutil.rmtree(staging, ignore_errors=True)
            out = (done.stdout + done.stderr)[-3000:]
            raise KafkaHarnessError(
                f"`{' '.join(cmd)}` failed (exit {done.returncode}); Maven Central must be reachable:\n{out}"
            )
        shutil.rmtree(lib_dir, ignore_errors=True)
        staging.rename(lib_dir)
    return lib_dir


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = (
        str(Path(home) / "bin" / "java")
        if home and (Path(home) / "bin" / "java").exists()
        else shutil.which("java")
    )
    if java is None:
        raise KafkaHarnessError(f"`java` is not on PATH (and JAVA_HOME is not set): {_INSTALL_JAVA}")
    return java


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(exclude: tuple[int, ...] = ()) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    Ports of outgoing connections come from the ephemeral range, so a port below it cannot be taken by
    some client's connection between now and the broker's bind, nor while the broker is stopped.
    """
    rng = random.Random()
    high = _ephemeral_low()
    for _ in range(200):
        port = rng.randrange(max(1024, high - 12000), high)
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise KafkaHarnessError("no free TCP port found on 127.0.0.1")


# --------------------------------------------------------------------------- broker

_LOG4J2 = """\
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


def _server_properties(data: Path, port: int, controller_port: int) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data / "logs"),
        "metadata.log.dir": str(data / "metadata"),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        # one partition for the internal topics: a fresh group coordinator is ready at once
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        # tests kill consumers with SIGKILL: let their sessions expire in seconds
        "group.min.session.timeout.ms": "1000",
        "log.segment.bytes": str(1 << 20),
        "log.retention.check.interval.ms": "60000",
        "log.cleaner.dedupe.buffer.size": str(1 << 21),
        "log.cleaner.threads": "1",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "background.threads": "2",
        "log.flush.interval.messages": "1",  # durable across a SIGKILL in restart tests
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


_FATAL_MARKERS = ("Address already in use", "Exiting Kafka due to fatal exception", "Fatal error during")


def _short_bootstrap(client_class, ms: int = 2000) -> dict:
    # kafka-python >= 3 waits up to bootstrap_timeout_ms (30 s) in constructors; 2.x has no such setting
    return {"bootstrap_timeout_ms": ms} if "bootstrap_timeout_ms" in client_class.DEFAULT_CONFIG else {}


def _die_with_parent_hook():
    """A ``preexec_fn`` asking the kernel to SIGTERM the child when its parent dies (Linux), or None.

    The broker of a test session must not outlive the session, even when pytest is killed hard. libc is
    resolved here, in the parent: after fork, with kafka-python's threads about, the child must only call.
    """
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


def _tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"({path} does not exist)"
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * lines * 4))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class KafkaBroker:
    """One single-node KRaft broker on loopback.

    Parameters
    ----------
    data_dir
        Where config, storage and logs live; a fresh temporary directory (removed by :meth:`close`) when None.
    port, controller_port
        Loopback ports of the client and controller listeners; free ports when None. Kept across restarts.
    heap
        JVM maximum heap, e.g. ``"512m"``.
    die_with_parent
        Ask the kernel to SIGTERM the broker when the starting process dies (test sessions); False for
        ``make kafka-up``, whose broker outlives the command.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike | None = None,
        port: int | None = None,
        controller_port: int | None = None,
        heap: str = "512m",
        die_with_parent: bool = True,
    ):
        self._owns_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="streamlearn-kafka-"))
        )
        self._auto_ports = port is None and controller_port is None
        self.port = port or free_port()
        self.controller_port = controller_port or free_port(exclude=(self.port,))
        if self.controller_port == self.port:
            raise ValueError(f"controller_port must differ from port, both are {port}")
        self.heap = heap
        self.die_with_parent = die_with_parent
        self._proc: subprocess.Popen | None = None
        self._topic_seq = itertools.count()
        self._admin = None
        self._log_start = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def bootstrap(self) -> str:
        """The ``host:port`` for ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker's own log (log4j2)."""
        return self.data_dir / "server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _java_cmd(self, main_class: str, *args: str, heap: str) -> list[str]:
        lib = ensure_jars()
        return [
            _java(),
            f"-Xmx{heap}",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.data_dir}",
            "-cp",
            f"{lib}/*",
            main_class,
            *args,
        ]

    def _format(self) -> None:
        if (self.data_dir / "metadata" / "meta.properties").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path))
        self.config_path.write_text(_server_properties(self.data_dir, self.port, self.controller_port))
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the tool's argument parser takes a leading '-' for an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        cmd = self._java_cmd(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(self.config_path), heap="256m"
        )
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise KafkaHarnessError(
                f"formatting {self.data_dir} failed (exit {done.returncode}):\n"
                f"{(done.stdout + done.stderr)[-3000:]}"
            )

    def start(self, timeout: float = 60.0) -> KafkaBroker:
        """Format the storage on first use, start the broker and wait until it answers."""
        if self.is_running():
            return self
        for attempt in range(3):
            try:
                return self._start_once(timeout)
            except KafkaHarnessError as exc:
                # Another process may bind a chosen port first; choose others, but only before the first
                # successful start (afterwards the ports are part of the broker's identity).
                if not (self._auto_ports and "Address already in use" in str(exc) and attempt < 2):
                    raise
                for sub in ("metadata", "logs"):
                    shutil.rmtree(self.data_dir / sub, ignore_errors=True)
                self.port = free_port()
                self.controller_port = free_port(exclude=(self.port,))
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> KafkaBroker:
        self._format()
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        stdout = open(self.data_dir / "stdout.log", "ab")
        try:
            self._proc = subprocess.Popen(
                self._java_cmd("kafka.Kafka", str(self.config_path), heap=self.heap),
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook() if self.die_with_parent else None,
            )
        finally:
            stdout.close()
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop(grace=5.0)
            raise
        self._auto_ports = False
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until the broker serves metadata with itself registered; raise with the log tail if not."""
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise KafkaHarnessError(
                    f"the broker exited with status {self._proc.returncode}\n{self.log_tail()}"
                )
            if self._fatal_logged():
                # a broker that failed to start can take half a minute to shut itself down
                raise KafkaHarnessError(f"the broker on {self.bootstrap} failed to start\n{self.log_tail()}")
            if self._port_open():
                try:
                    # short timeouts: whatever listens may not be our broker (yet)
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap,
                        request_timeout_ms=5000,
                        client_id="streamlearn-harness",
                        **_short_bootstrap(KafkaAdminClient),
                    )
                    try:
                        if admin.describe_cluster().get("brokers"):
                            return
                    finally:
                        admin.close()
                except KafkaError as exc:
                    last = exc
            time.sleep(0.1)
        raise KafkaHarnessError(
            f"the broker on {self.bootstrap} did not answer within {timeout:.0f} s "
            f"(last error: {last!r})\n{self.log_tail()}"
        )

    def _fatal_logged(self) -> bool:
        """Whether this start's part of the log (the file is appended across restarts) shows a fatal error."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return False
        return any(marker in text for marker in _FATAL_MARKERS)

    def _port_open(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self, grace: float = 15.0) -> None:
        """SIGTERM the broker's process group, SIGKILL after ``grace`` seconds; a no-op when stopped."""
        self._close_admin()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        _terminate_group(proc.pid, grace, wait=proc.wait)

    def restart(self, timeout: float = 60.0) -> KafkaBroker:
        """Stop and start again with the same data directory and ports."""
        self.stop()
        return self.start(timeout)

    def ensure_running(self) -> None:
        """Start the broker again if a test left it stopped."""
        if not self.is_running():
            self.start()

    def close(self) -> None:
        """Stop the broker and remove its data directory if this object created it."""
        self.stop()
        if self._owns_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker log and of the JVM's own output, for error messages."""
        return (
            f"--- {self.log_path} ---\n{_tail(self.log_path, lines)}\n"
            f"--- {self.data_dir / 'stdout.log'} ---\n{_tail(self.data_dir / 'stdout.log', lines)}"
        )

    # ------------------------------------------------------------------ clients

    def admin(self):
        """A shared ``KafkaAdminClient`` (closed by :meth:`stop`)."""
        if self._admin is None:
            from kafka import KafkaAdminClient

            self._admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="streamlearn-harness")
        return self._admin

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()

    def create_topic(self, partitions: int = 1, name: str | None = None, configs: dict | None = None) -> str:
        """Create a topic (a unique name unless given) and wait until every partition has a leader."""
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        name = name or f"t{os.getpid()}-{next(self._topic_seq)}-{uuid.uuid4().hex[:6]}"
        spec = {"num_partitions": partitions, "replication_factor": 1, "configs": configs or {}}
        self.admin().create_topics({name: spec}, timeout_ms=10000, wait_for_metadata=True)
        return name

    topic_factory = create_topic

    def producer(self, **kwargs):
        """A ``KafkaProducer`` on this broker (``acks="all"`` unless overridden); the caller closes it."""
        from kafka import KafkaProducer

        return KafkaProducer(bootstrap_servers=self.bootstrap, **{"acks": "all", "linger_ms": 0, **kwargs})

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"KafkaBroker({self.bootstrap}, {state}, data_dir={str(self.data_dir)!r})"


def _terminate_group(pid: int, grace: float, wait=None) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if wait is not None:
            try:
                wait(timeout=0.1)
                return
            except subprocess.TimeoutExpired:
                continue
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if wait is not None:
        wait()


# --------------------------------------------------------------------------- CLI


def _read_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _is_broker(pid: int) -> bool:
    # A stale state file may name a pid that the system has since given to another process.
    try:
        return b"kafka.Kafka" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running_state() -> dict | None:
    state = _read_state()
    return state if state is not None and _is_broker(int(state["pid"])) else None


def _up(args) -> int:
    state = _running_state()
    if state is not None:
        print(state["bootstrap"])
        return 0
    data = STATE_DIR / "data"
    shutil.rmtree(data, ignore_errors=True)
    broker = KafkaBroker(data_dir=data, port=args.port, heap=args.heap, die_with_parent=False)
    broker.start(timeout=args.timeout)
    state = {
        "pid": broker.pid,
        "bootstrap": broker.bootstrap,
        "port": broker.port,
        "controller_port": broker.controller_port,
        "data_dir": str(data),
        "log": str(broker.log_path),
    }
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")
    print(broker.bootstrap)
    return 0


def _down(args) -> int:
    state = _read_state()
    if state is None:
        print("no broker started by `kafka-up` (no .kafka/state.json)")
        return 0
    if _is_broker(int(state["pid"])):
        _terminate_group(int(state["pid"]), grace=15.0)
        print(f"stopped the broker on {state['bootstrap']} (pid {state['pid']})")
    else:
        print(f"the broker on {state['bootstrap']} was not running")
    STATE_FILE.unlink(missing_ok=True)
    if not args.keep_data:
        shutil.rmtree(state["data_dir"], ignore_errors=True)
    return 0


def _status(args) -> int:
    state = _running_state()
    if state is None:
        print("stopped")
        return 1
    print(f"running {state['bootstrap']} pid {state['pid']} data {state['data_dir']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.kafka.broker", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a broker in the background and print its bootstrap address")
    up.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    up.add_argument("--heap", default="512m")
    up.add_argument("--timeout", type=float, default=90.0)
    down = sub.add_parser("down", help="stop the broker started by `up`")
    down.add_argument("--keep-data", action="store_true")
    sub.add_parser("status", help="exit 0 when the broker started by `up` runs")
    args = parser.parse_args(argv)
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        return {"up": _up, "down": _down, "status": _status}[args.command](args)
    except KafkaHarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
