"""Run under mpirun by tests/test_transports.py: exercise one transport and print a JSON result per rank.

usage: mpirun -np N python tests/mpi_transport_check.py STORE_PATH TRANSPORT SCENARIO
"""

from __future__ import annotations

import json
import random
import sys
from datetime import timedelta

import pairwise_scenarios  # next to this script, which is what sys.path[0] is
import torch
import torch.distributed as dist
from mpi4py import MPI

from bench.core.codec import Codec, CodecConfig
from bench.core.comm import make_comm
from bench.core.topology import build_topology


def main() -> None:
    store_path, transport, scenario = sys.argv[1:4]
    rank, size = MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", store=dist.FileStore(store_path, size), rank=rank, world_size=size, timeout=timedelta(seconds=60)
    )
    comm = make_comm(transport, rank, size, build_topology("complete", size), 60)
    out: dict = {"rank": rank, "transport": comm.transport}
    if scenario == "read":
        # Deterministic schedule: publish rank-valued models, fence, everyone reads its successor.
        comm.start_cell(None, 0)
        comm.publish(torch.arange(10, dtype=torch.float32) + 100 * rank, stamp=rank + 1)
        comm.set_step(rank + 5)  # the live model moved on 4 steps past the copy it published
        comm.fence()
        peer = (rank + 1) % size
        got, stamp = comm.read(peer, "model", torch.zeros(10))
        comm.fence()
        comm.finish_cell()
        out.update(peer=peer, got=got.tolist(), stamp=stamp, stats=comm.stats.snapshot())
        out.update(staleness_sum=comm.stats.staleness_sum, staleness_reads=comm.stats.staleness_reads)
    elif scenario in ("average", "pushpull"):  # atomic pairwise averages, or SwarmSGD's pull-push interaction
        for bits in (32, 8):
            codec = None if bits == 32 else Codec(CodecConfig(bits=8, eps=0.01))
            comm.start_cell(codec, 0)
            live = torch.randn(3000, generator=torch.Generator().manual_seed(rank)) * 0.1
            initial = live.clone().double()
            comm.expose(live)
            if scenario == "pushpull":
                comm.publish(live, stamp=0)
            comm.fence()
            rng = random.Random(rank)
            peak = float(live.abs().max())
            for i in range(100):
                with comm.exclusive():  # where a training step would run
                    peak = max(peak, float(live.abs().max()))
                if scenario == "pushpull":
                    comm.pull_push(rng.choice(comm.neighbors()), "model")
                    comm.publish(live, stamp=i + 1)
                else:
                    comm.average_with(rng.choice(comm.neighbors()), "model")
            comm.fence()
            comm.finish_cell()
            with comm.exclusive():
                final = live.clone().double()
            total, init_total = final.clone(), initial.clone()
            comm.allreduce_sum(total, "eval")
            comm.allreduce_sum(init_total, "eval")
            spread = float((final - init_total / size).abs().max())
            out[str(bits)] = {
                "drift": float((total - init_total).abs().max()),
                "spread": spread,
                "failures": comm.decode_failures,
                "peak": peak,  # the largest |coordinate| this node's model reached during the averages
                "stats": comm.stats.snapshot(),
            }
    elif scenario == "radius":  # pairwise averages just outside the lattice's radius (tests/pairwise_scenarios.py)
        out["one"] = pairwise_scenarios.one_average(comm)
        out["many"] = pairwise_scenarios.many_averages(comm)
        if comm.transport == "rma":
            out["full"] = pairwise_scenarios.full_inbox(comm)
    elif scenario == "allreduce":
        # Collectives run on torch.distributed on both transports: the asynchronous allreduce of buffer slices
        # (AllReduce SGD's buckets) equals the flat one, with one ring volume counted per slice.
        comm.start_cell(None, 0)
        buf = torch.arange(30, dtype=torch.float32) * (rank + 1)
        flat = buf.clone()
        comm.allreduce_mean(flat, "grad")
        handles = [comm.allreduce_mean_async(p, "grad") for p in (buf[20:], buf[5:20], buf[:5])]
        for h in handles:
            h.wait()
        out.update(flat=flat.tolist(), sliced=buf.tolist(), stats=comm.stats.snapshot())
    elif scenario == "mail":
        # Directed messages (the mailbox): each rank sends three messages to its successor, of both dtypes, before
        # receiving its predecessor's; they arrive once each, in order. Both transports carry them over gloo.
        comm.start_cell(None, 0)
        succ, pred = (rank + 1) % size, (rank - 1) % size
        for k in range(3):
            comm.send(succ, torch.full((4,), float(10 * rank + k)), "model")
        comm.send(succ, torch.arange(5, dtype=torch.uint8) + rank, "grad")
        got = [comm.recv(pred, "model").tolist() for _ in range(3)]
        raw = comm.recv(pred, "grad")
        comm.fence()
        comm.finish_cell()
        out.update(got=got, raw=raw.tolist(), raw_dtype=str(raw.dtype), stats=comm.stats.snapshot())
    comm.close()
    dist.destroy_process_group()
    # One file per rank: mpirun forwards stdout in chunks, so lines of different ranks can interleave.
    with open(f"{store_path}.rank{rank}.json", "w", encoding="utf-8") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
