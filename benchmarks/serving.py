"""Serving: requests/s and latency of ``/v1/score`` and ``/v1/decide`` beside the transport and the model call.

A state directory is written by a replay of the bundled stream (``ftrl``, ``neural``,
``diag_linucb``); a ``streamlearn serve`` replica of it runs as its own process, and this process
is the client: ``--clients`` threads, each on one keep-alive connection, send the same request for
``--seconds`` per case and round; ``--rounds`` rounds run every case of one size and client count
in turn, and a row reports the medians of its rounds (its share of the noop: the median of the
shares within each round). Each case is measured beside, in the same run:

- the **transport ceiling**: ``POST /v1/noop`` on the same server, a body of the same size, a fixed
  answer;
- the **model floor**: the same request scored in-process (``ModelView.score``), no HTTP.

Then a **hot swap under load**: while 8 clients score, the replay writes a newer snapshot into the
state directory; the replica swaps it in, and every request must still succeed.

The client and the server share the machine's cores (2 on the reference machine), so the
figures are a lower bound of what a server with cores of its own answers.

Usage: ``python benchmarks/serving.py [--seconds S] [--rounds R] [--clients 1,8,32] [--candidates 10,100]``;
writes ``benchmarks/results/serving.json``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, compile_project, percentiles, save, table

LEARNERS = ("ftrl", "neural", "diag_linucb")
STREAM = ROOT / "examples" / "stream.jsonl.gz"


def _cli() -> list[str]:
    script = Path(sys.executable).parent / "streamlearn"
    return [str(script)] if script.exists() else [sys.executable, "-m", "consumers.cli"]


def _replay(state: Path, limit: int, skip: int = 0) -> None:
    cmd = [*_cli(), "replay", str(STREAM), "--state-dir", str(state), "--limit", str(limit), "--no-progress"]
    cmd += ["--dead-letter", str(state.parent / "dead.jsonl")]
    for kind in LEARNERS:
        cmd += ["--learner", kind]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _body(model: str, m: int, decide: bool = False) -> bytes:
    body = {
        "model": model,
        "user_id": "u42",
        "features": {"device": "ios", "hour": 20},
        "candidates": [{"item_id": f"i{j}", "features": {"price": float(j % 17)}} for j in range(m)],
    }
    if decide:
        body["k"] = 1
    return orjson.dumps(body)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(self, state: Path):
        self.port = _free_port()
        cmd = [*_cli(), "serve", "--state-dir", str(state), "--port", str(self.port), "--poll", "0.2"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve did not start: {self.proc.stderr.read().decode()}")
            time.sleep(0.1)

    def cpu_s(self) -> float:
        """CPU seconds the replica process has used (user + system, all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def load(replica: Replica, path: str, body: bytes, clients: int, seconds: float) -> dict:
    """``clients`` threads on keep-alive connections sending ``body`` for ``seconds``; with the
    replica's CPU time per request (what the server spent, apart from the client's share)."""
    port = replica.port
    cpu_before = replica.cpu_s()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients
    versions: list[set] = [set() for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        headers = {"Content-Type": "application/json"}
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            try:
                conn.request("POST", path, body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):
                failures[i] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            latencies[i].append(time.perf_counter() - t)
            if resp.status != 200:
                failures[i] += 1
            elif path != "/v1/noop":
                versions[i].add(orjson.loads(data)["version"]["snapshot_seq"])
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    flat = [x for lat in latencies for x in lat]
    cpu = replica.cpu_s() - cpu_before
    return {
        "requests": len(flat),
        "server_cpu_us_per_request": 1e6 * cpu / max(len(flat), 1),
        "requests_per_s": len(flat) / wall,
        "failed": sum(failures),
        "versions": sorted(set().union(*versions)),
        "latencies": flat,
        **percentiles(flat),
    }


def _pooled(rounds: list[dict], noops: list[dict] | None = None) -> dict:
    """One case's rounds as one row: medians of requests/s and server CPU, latency percentiles
    of every request, and (beside ``noops``, the same rounds' transport) the median of the
    per-round shares of the noop's requests/s."""
    out = {
        "requests": sum(r["requests"] for r in rounds),
        "requests_per_s": statistics.median(r["requests_per_s"] for r in rounds),
        "server_cpu_us_per_request": statistics.median(r["server_cpu_us_per_request"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "rounds": len(rounds),
        **percentiles([x for r in rounds for x in r["latencies"]]),
    }
    if noops is not None:
        out["of_transport"] = statistics.median(
            r["requests_per_s"] / n["requests_per_s"] for r, n in zip(rounds, noops)
        )
    return out


def in_process(state: Path, model: str, m: int, n: int = 300) -> dict:
    """The floor: the same request scored by the snapshot's model in this process."""
    from consumers.commands.serve import view_from_snapshot
    from pipeline.serving.requests import parse_request
    from state.snapshot import SnapshotStore

    manifest, bundles = SnapshotStore(state).latest_valid()
    view = view_from_snapshot(manifest, bundles)
    req = parse_request(orjson.loads(_body(model, m)))
    for _ in range(20):
        view.score(req)
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        view.score(req)
        samples.append(time.perf_counter() - t)
    return {"calls_per_s": n / sum(samples), **percentiles(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="load per case and round (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case in turn (default 3)")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients (default 1,8,32)")
    parser.add_argument("--candidates", default="10,100", help="candidates per request (default 10,100)")
    parser.add_argument("--events", type=int, default=40_000, help="events the served model has learned")
    args = parser.parse_args()
    clients = [int(x) for x in args.clients.split(",")]
    sizes = [int(x) for x in args.candidates.split(",")]
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="streamlearn-serving-"))
    try:
        state = work / "state"
        print(f"replaying {args.events:,} events into {state} ...", file=sys.stderr)
        _replay(state, args.events)
        floors = {(model, m): in_process(state, model, m) for model in LEARNERS for m in sizes}
        replica = Replica(state)
        rows = []
        try:
            cases = [(model, path) for model in LEARNERS for path in ("/v1/score", "/v1/decide")]
            for m in sizes:
                for c in clients:
                    # rounds of every case in turn, so that each share of the noop compares runs
                    # of the same minute: this shared machine's speed drifts by 10-30% over minutes
                    noops: list[dict] = []
                    runs: dict[tuple[str, str], list[dict]] = {case: [] for case in cases}
                    for _ in range(args.rounds):
                        noops.append(load(replica, "/v1/noop", _body("ftrl", m), c, args.seconds))
                        for model, path in cases:
                            body = _body(model, m, path.endswith("decide"))
                            runs[(model, path)].append(load(replica, path, body, c, args.seconds))
                    noop = _pooled(noops)
                    rows.append(
                        {"endpoint": "noop (transport)", "model": "-", "candidates": m, "clients": c, **noop}
                    )
                    print(f"noop m={m} c={c}: {noop['requests_per_s']:,.0f}/s", file=sys.stderr)
                    for model, path in cases:
                        got = _pooled(runs[(model, path)], noops)
                        floor = floors[(model, m)]
                        rows.append(
                            {
                                "endpoint": path,
                                "model": model,
                                "candidates": m,
                                "clients": c,
                                **got,
                                "p99_over_in_process": got["p99_ms"] / floor["p99_ms"],
                                "in_process_p50_ms": floor["p50_ms"],
                                "in_process_p99_ms": floor["p99_ms"],
                            }
                        )
                        print(
                            f"{path} {model} m={m} c={c}: {got['requests_per_s']:,.0f}/s "
                            f"({got['of_transport']:.0%} of noop), p99 {got['p99_ms']:.2f} ms",
                            file=sys.stderr,
                        )
            # hot swap under load: a newer snapshot arrives while 8 clients score. The load goes
            # on in 2 s spells until 2 s after the replay is done (it runs on the cores the
            # clients keep busy, so its length varies), then the new snapshot has been served
            replay = threading.Thread(target=_replay, args=(state, 10_000))  # 10,000 records more
            spells: list[dict] = [load(replica, "/v1/score", _body("ftrl", 100), 8, 1.0)]
            replay.start()
            while replay.is_alive():
                spells.append(load(replica, "/v1/score", _body("ftrl", 100), 8, 2.0))
            replay.join()
            time.sleep(1.0)  # the replica polls every 0.2 s
            spells.append(load(replica, "/v1/score", _body("ftrl", 100), 8, 2.0))
            swap = {
                "requests": sum(x["requests"] for x in spells),
                "failed": sum(x["failed"] for x in spells),
                "versions_seen": sorted(set().union(*(x["versions"] for x in spells))),
            }
        finally:
            replica.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    columns = [
        ("endpoint", "endpoint"),
        ("model", "model"),
        ("candidates", "candidates"),
        ("clients", "clients"),
        ("requests_per_s", "requests/s"),
        ("of_transport", "of noop"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("in_process_p99_ms", "in-process p99 ms"),
        ("server_cpu_us_per_request", "server CPU µs/req"),
        ("failed", "failed"),
    ]
    print(table(rows, columns))
    print(
        f"\nhot swap under 8 clients: {swap['requests']:,} requests, {swap['failed']} failed, "
        f"snapshots served {swap['versions_seen']}"
    )
    path = save(
        "serving",
        {"rows": rows, "hot_swap": swap, "in_process": {f"{k[0]}:{k[1]}": v for k, v in floors.items()}},
    )
    print(f"saved {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
