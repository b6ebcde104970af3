"""The neural ranker's dense parameters: a gloo all-reduce beside the updates topic, N = 2 and 3.

docs/scaling.md chose the Kafka updates topic for every shared part, the neural ranker's dense
parameters included, over ``torch.distributed`` (gloo). This script measures that trade-off for
the default ranker (``neural`` with ``vocab = "double_hash"``), on this machine:

1. **gloo**: N processes (``torch.multiprocessing``, spawn) join one gloo group over loopback and
   all-reduce the ranker's parameters as one float32 tensor, as a data-parallel step would. Per
   step: wall time (median and p95 over the steps) and each rank's CPU time.
2. **topic**: the ranker's real delta (``ModelSync.take_delta`` after a batch of events: every
   parameter changed) goes through a real single-partition updates topic (``UpdatesLog``, the
   worker's own class) from one writer to N - 1 readers, who decode and add it
   (``ModelSync.receive``). Per delta: encoding, produce-and-acknowledge, each reader's fetch,
   decode and add, and the bytes.

A round is what one sync of the group costs each worker: under gloo one all-reduce (every rank gets
the sum); over the topic, one own delta encoded and sent plus N - 1 peers' deltas read and added.
Both are printed per worker, beside each other, with the bytes each worker moves.

Usage: ``python benchmarks/allreduce.py [--steps 20]``; writes ``benchmarks/results/allreduce.json``.
The gloo phase runs before the broker starts, so that neither loads the other.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _common import save, table

NEURAL = [{"kind": "neural", "params": {"vocab": "double_hash"}}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------- gloo
def _rank(rank: int, world: int, port: int, n_params: int, steps: int, out) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    tensor = torch.randn(n_params, dtype=torch.float32)
    for _ in range(3):  # connections and buffers
        dist.all_reduce(tensor)
    walls, cpus = [], []
    for _ in range(steps):
        dist.barrier()
        w, c = time.perf_counter(), time.process_time()
        dist.all_reduce(tensor)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    out.put((rank, walls, cpus))
    dist.destroy_process_group()


def gloo(world: int, n_params: int, steps: int) -> dict:
    import torch.multiprocessing as mp

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback: never an interface that routes nowhere
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world, port, n_params, steps, out), daemon=True)
        for r in range(world)
    ]
    for p in procs:
        p.start()
    results = {}
    deadline = time.monotonic() + 180
    while len(results) < world and time.monotonic() < deadline:
        try:
            rank, walls, cpus = out.get(timeout=5)
            results[rank] = (walls, cpus)
        except Exception:
            if any(p.exitcode not in (None, 0) for p in procs):
                break
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.kill()
    if len(results) < world:
        return {"engine": "gloo all-reduce", "workers": world, "error": "a rank did not finish in 180 s"}
    walls = np.array([results[r][0] for r in range(world)]).max(axis=0)  # a step ends for the slowest
    cpus = np.array([results[r][1] for r in range(world)]).mean(axis=0)  # gloo's own threads included
    moved = 2 * (world - 1) / world * n_params * 4  # ring all-reduce: sent (= received) per rank
    return {
        "engine": "gloo all-reduce",
        "workers": world,
        "round_ms_p50": float(np.median(walls) * 1000),
        "round_ms_p95": float(np.percentile(walls, 95) * 1000),
        "cpu_ms_per_worker": float(np.median(cpus) * 1000),
        "sent_mb_per_worker": moved / 1e6,
        "received_mb_per_worker": moved / 1e6,
    }


# --------------------------------------------------------------------------------------- topic
def neural_runner():
    from pipeline.config import load_config
    from pipeline.runner import Runner

    return Runner.from_config(load_config(overrides={"learners": NEURAL}, environ={}))


def sim_batches(n_batches: int, size: int) -> list[list[bytes]]:
    from pipeline.simulate import SimConfig, Simulator

    lines: list[bytes] = []
    for chunk in Simulator(SimConfig(seed=5, log_candidates=False)).json_chunks(n_batches * size):
        lines.extend(chunk.lines)
    return [lines[i * size : (i + 1) * size] for i in range(n_batches)]


def topic(bootstrap: str, world: int, steps: int, batches: list[list[bytes]]) -> dict:
    from consumers.kafka.updates import UpdatesLog
    from pipeline.group.delta import decode, encode
    from pipeline.group.sync import ModelSync
    from pipeline.runner import RawBatch

    name = f"bench-allreduce-{world}.updates"
    max_bytes = 32 << 20
    writer = UpdatesLog(bootstrap, name, max_bytes)
    readers = []
    for i in range(world - 1):
        runner = neural_runner()
        reader = UpdatesLog(bootstrap, name, max_bytes, writer=False)
        reader.seek(0)  # a reader without a position would start at the end
        readers.append((reader, ModelSync(runner, f"r{i}", "h")))
    runner = neural_runner()
    sync = ModelSync(runner, "w", "h")
    sync.claim("t:0", 0, {})
    timings = {k: [] for k in ("encode", "produce", "fetch", "decode", "add")}
    sizes = []
    end = 0
    for step in range(steps + 1):
        batch = batches[step]  # fresh events each time: repeated ids would be deduplicated
        end += len(batch)
        runner.process(RawBatch(values=batch, positions={"t:0": end}))
        t = time.thread_time()
        delta = sync.take_delta({"t:0": end}, {"t:0": {"applied": end}})
        data = encode(delta)
        encode_s = time.thread_time() - t
        t = time.perf_counter()
        writer.publish(data, key="w")
        writer.flush(30)
        produce_s = time.perf_counter() - t
        fetch_s, decode_s, add_s = [], [], []
        for log, peer in readers:
            t = time.perf_counter()
            got = []
            while not got:
                got = log.read(timeout_ms=1000, max_records=1)
            fetch_s.append(time.perf_counter() - t)
            (offset, value), t = got[0], time.thread_time()
            received = decode(value)
            decode_s.append(time.thread_time() - t)
            t = time.thread_time()
            assert peer.receive(offset, received) == "accepted"
            add_s.append(time.thread_time() - t)
        sync.receive(step, delta)
        if step == 0:
            continue  # the first: topic creation, connections
        sizes.append(len(data))
        timings["encode"].append(encode_s)
        timings["produce"].append(produce_s)
        timings["fetch"].append(max(fetch_s) if fetch_s else 0.0)
        timings["decode"].append(float(np.mean(decode_s)) if decode_s else 0.0)
        timings["add"].append(float(np.mean(add_s)) if add_s else 0.0)
    writer.close()
    for log, _ in readers:
        log.close()
    med = {k: float(np.median(v) * 1000) for k, v in timings.items()}
    peers = world - 1
    # a round: each worker encodes and sends its delta, then reads, decodes and adds its peers'
    cpu = med["encode"] + peers * (med["decode"] + med["add"])
    wall = med["encode"] + med["produce"] + med["fetch"] + peers * (med["decode"] + med["add"])
    size = float(np.median(sizes))
    return {
        "engine": "updates topic",
        "workers": world,
        "round_ms_p50": wall,
        "cpu_ms_per_worker": cpu,
        "sent_mb_per_worker": size / 1e6,
        "received_mb_per_worker": peers * size / 1e6,
        "delta_bytes": size,
        **{f"{k}_ms": v for k, v in med.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed rounds per engine and N (default 20)")
    parser.add_argument(
        "--batch", type=int, default=2000, help="events learned between two deltas (default 2000)"
    )
    args = parser.parse_args(argv)

    runner = neural_runner()
    learner = runner.learners[0]
    n_params = sum(p.numel() for p in learner._model.parameters())
    print(f"neural ranker: {n_params:,} parameters ({n_params * 4 / 1e6:.1f} MB as float32)", flush=True)

    rows = []
    for world in (2, 3):
        rows.append(gloo(world, n_params, args.steps))
        print(f"gloo, {world} workers: {rows[-1]}", flush=True)

    from tests.kafka.broker import KafkaBroker

    batches = sim_batches(args.steps + 1, args.batch)
    with KafkaBroker(heap="1g") as broker:
        for world in (2, 3):
            rows.append(topic(broker.bootstrap, world, args.steps, batches))
            print(f"topic, {world} workers: {rows[-1]}", flush=True)

    columns = [
        ("engine", "engine"),
        ("workers", "N"),
        ("round_ms_p50", "round, ms (p50)"),
        ("cpu_ms_per_worker", "CPU per worker, ms"),
        ("sent_mb_per_worker", "sent per worker, MB"),
        ("received_mb_per_worker", "received per worker, MB"),
    ]
    print(table(rows, columns))
    path = save("allreduce", {"parameters": n_params, "steps": args.steps, "batch": args.batch, "rows": rows})
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
