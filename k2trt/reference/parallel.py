"""The reference K2 sharded across ranks exactly as TensorRT-LLM's ``Mapping`` shards it, over torch.distributed.

Each rank reads only its own slice of every tensor straight from the checkpoint (``k2trt.mapping.Mapping.shard`` →
``CheckpointReader.get(rows=, cols=)``: positional reads of those rows, columns cut from bounded row chunks); no
rank ever materialises a full copy of a sharded weight. Collectives use gloo (CPU), with a timeout so a dead peer ends the job instead of hanging it.
What is summed or gathered follows TensorRT-LLM's DeepseekV3 (trtllm.md §4–5, ``modeling_deepseekv3.py``):

- attention: q_b/kv_b column-split by heads, o_proj row-split → all-reduce; q_a/kv_a and the norms replicated;
- dense FFN over ``dense_tp = gcd(intermediate/128, tp)`` ranks and shared experts over ``shared_tp`` ranks: their
  outputs are scaled by ``part_tp / tp`` and summed over the whole TP group (TensorRT-LLM scales the shared experts
  this way; for the dense FFN, a sum of ``tp/dense_tp`` scaled replicas equals its sub-group all-reduce);
- MoE: experts split by ``moe_ep`` and each expert's FFN by ``moe_tp``; the routed + shared output is all-reduced;
- lm_head vocab-parallel → all-gather of the logits; the embedding is replicated;
- attention-DP: every rank holds all heads, the dense FFN, the shared experts and the lm_head, and runs its own
  rows of the batch; the MoE gathers every rank's tokens, each rank adds its experts' share, and the sum is
  all-reduced (TensorRT-LLM reduce-scatters; the sum is the same).

Run under mpirun (rank and world from ``OMPI_COMM_WORLD_*``; ``MASTER_ADDR``/``MASTER_PORT`` from the environment,
or chosen by rank 0 and broadcast over MPI). ``python -m k2trt.reference.parallel --check MODEL --layout tp4,ep2
--out DIR`` writes rank 0's logits and every rank's read log for the tests and ``k2trt verify --layout``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist

from k2trt.checkpoint.reader import CheckpointReader
from k2trt.errors import ConfigError, K2trtError, LaunchError
from k2trt.layout import Layout
from k2trt.mapping import Mapping
from k2trt.reference import DEFAULT_TIMEOUT_S
from k2trt.reference.model import AttnImpl, KVCache, Placement, Transformer, WeightFn
from k2trt.spec import ModelSpec



def reference_mapping(layout: Layout, spec: ModelSpec) -> Mapping:
    """The Mapping the reference engine shards ``spec`` by: TP (the world), MoE EP × TP and attention-DP, checked
    against the model. Raises ConfigError for pipeline stages, which the reference engine does not run."""
    if layout.pp != 1:
        raise ConfigError(f"layout {layout}: the reference engine does not run pipeline stages",
                          "drop pp<N> (tp is the whole world of the reference engine)")
    m = layout.mapping(spec=spec)
    m.check()
    return m


# ---- process group ---------------------------------------------------------------------------------------------

def env_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment: Open MPI, then torchrun/Slurm, else (0, 1, 0)."""
    env = os.environ
    for r, w, lr in (("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                     ("RANK", "WORLD_SIZE", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")):
        if r in env and w in env:
            return int(env[r]), int(env[w]), int(env.get(lr, "0"))
    return 0, 1, 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_distributed(rank: int, world: int, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """Join the gloo process group (no-op for a world of one).

    The rendezvous is ``MASTER_ADDR:MASTER_PORT``; when MASTER_PORT is unset, rank 0 picks a free port and
    broadcasts it with MPI (mpi4py), so a plain ``mpirun -np N`` works on one host.
    """
    if world == 1 or dist.is_initialized():
        return
    addr = os.environ.get("MASTER_ADDR", "127.0.0.1")
    port = os.environ.get("MASTER_PORT")
    if port is None:
        try:
            from mpi4py import MPI
        except ImportError as e:
            raise LaunchError(f"MASTER_PORT is unset and mpi4py is unavailable ({e})",
                              "pass -x MASTER_ADDR=… -x MASTER_PORT=… to mpirun") from None
        port = str(MPI.COMM_WORLD.bcast(free_port() if rank == 0 else None, root=0))
    try:
        dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # noqa: BLE001 - torch raises several types for an unreachable rendezvous
        raise LaunchError(f"rank {rank}/{world}: cannot join the process group at {addr}:{port} ({e})",
                          "check MASTER_ADDR/MASTER_PORT and that every rank was started") from None


class DistCollectives:
    """``model.Collectives`` over the default (TP = world) gloo group, plus the broadcasts the engine needs."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world = rank, world

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        y = x.contiguous().clone()
        dist.all_reduce(y)
        return y

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)

    def gather_rows(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's ``[n_r, ...]`` tensor (n_r may differ), in rank order."""
        n = torch.tensor([x.shape[0]], dtype=torch.long)
        counts = [torch.empty_like(n) for _ in range(self.world)]
        dist.all_gather(counts, n)
        top = int(max(c.item() for c in counts))
        padded = torch.zeros((top, *x.shape[1:]), dtype=x.dtype)
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return [p[: int(c.item())] for p, c in zip(parts, counts)]

    def gather_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        parts = self.gather_rows(x)
        return torch.cat(parts, dim=0), sum(p.shape[0] for p in parts[: self.rank])

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Rank 0's value of ``x`` on every rank (same shape and dtype everywhere)."""
        y = x.contiguous().clone()
        dist.broadcast(y, src=0)
        return y

    def broadcast_object(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


# ---- one rank's model --------------------------------------------------------------------------------------------

def placement_for(spec: ModelSpec, mapping: Mapping, rank: int) -> Placement:
    """What ``rank`` holds and which outputs it must complete with collectives."""
    tp = mapping.tp
    if tp == 1:
        return Placement()
    experts = tuple(mapping.experts(rank, spec.n_routed_experts))
    if mapping.enable_attention_dp:
        return Placement(experts=experts, moe_dp=True)

    def parts(role: str) -> int:  # into how many distinct slices Mapping cuts this FFN (dense_tp / shared_tp)
        t = next((t for t in spec.tensors() if t.role == role), None)
        return tp if t is None else mapping.shard(t, rank).parts

    part = 0 if spec.tie_word_embeddings else -(-spec.vocab_size // tp)
    return Placement(attn_partial=True, dense_partial=True, dense_scale=parts("dense_gate") / tp, experts=experts,
                     moe_partial=True, shared_scale=parts("shared_gate") / tp, lm_head_part=part)


def shard_weights(reader: CheckpointReader, spec: ModelSpec, mapping: Mapping, rank: int,
                  dtype: torch.dtype = torch.float32) -> WeightFn:
    """A weight function that reads exactly ``rank``'s shard of each tensor (Mapping.shard → CheckpointReader.get)."""
    inventory = {(t.role, t.layer, t.expert): t for t in spec.tensors() if t.scale_of is None}

    def get(role: str, layer: int | None, expert: int | None) -> torch.Tensor:
        t = inventory[(role, layer, expert)]
        s = mapping.shard(t, rank)
        if not s.held:
            raise ConfigError(f"rank {rank} was asked for {t.name}, which it does not hold")
        rows = s.ranges[0]
        cols = s.ranges[1] if len(s.ranges) > 1 else None
        return reader.get(role, layer, expert, rows=rows, cols=cols, dtype=dtype)

    return get


class DataParallel:
    """Attention-DP: each rank runs its own rows of the batch through ``local`` (MoE tokens are exchanged inside);
    the wrapper gathers every rank's logits so that every rank sees the whole batch's logits."""

    def __init__(self, local: Transformer, comm: DistCollectives) -> None:
        self.local, self.comm, self.spec = local, comm, local.spec

    def rows(self, batch: int) -> range:
        """This rank's rows: contiguous, as even as possible (a rank may have none)."""
        per, extra = divmod(batch, self.comm.world)
        r = self.comm.rank
        start = r * per + min(r, extra)
        return range(start, start + per + (1 if r < extra else 0))

    def new_cache(self, batch: int, pad: torch.Tensor | list[int] | None = None) -> KVCache:
        p = torch.zeros(batch, dtype=torch.long) if pad is None else torch.as_tensor(pad, dtype=torch.long)
        mine = self.rows(batch)
        cache = self.local.new_cache(max(len(mine), 1), p[mine.start:mine.stop] if len(mine) else None)
        return cache

    def __call__(self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
                 ) -> torch.Tensor:
        b = tokens.shape[0]
        cache = cache if cache is not None else self.new_cache(b)
        mine = self.rows(b)
        # a rank without rows still runs one dummy row: the MoE collectives need every rank at every layer
        local = tokens[mine.start:mine.stop] if len(mine) else torch.zeros_like(tokens[:1])
        logits = self.local(local, cache, last_only=last_only)              # [b_r, S, V]
        parts = self.comm.gather_rows(logits if len(mine) else logits[:0])
        return torch.cat(parts, dim=0)                                      # [B, S, V]


def build_rank_model(model_dir: str | Path, layout: Layout, rank: int, comm: DistCollectives | None, *,
                     attn_impl: AttnImpl = "absorb", dtype: torch.dtype = torch.float32
                     ) -> tuple[Any, CheckpointReader]:
    """``rank``'s shard of the model (a Transformer, or a DataParallel wrapper under attention-DP) and the reader
    that loaded it (its ``reads`` log shows what was read)."""
    spec = ModelSpec.from_config(model_dir)
    mapping = reference_mapping(layout, spec)
    reader = CheckpointReader(Path(model_dir))
    get = shard_weights(reader, spec, mapping, rank, dtype)
    model = Transformer(spec, get, attn_impl=attn_impl, placement=placement_for(spec, mapping, rank),
                        comm=comm).eval()
    reader.close()
    if layout.adp and layout.tp > 1:
        assert comm is not None
        return DataParallel(model, comm), reader
    return model, reader


# ---- launching -----------------------------------------------------------------------------------------------

def mpirun_command(np: int, argv: Sequence[str], *, env: dict[str, str] | None = None
                   ) -> tuple[list[str], dict[str, str]]:
    """(mpirun argv, its environment) for ``np`` ranks of ``argv`` on this machine, spelled by k2trt's launcher
    (``k2trt.launch.mpi``: Open MPI 4/5, slot placement, no binding, ``--allow-run-as-root`` as root) with
    ``--oversubscribe`` (more ranks than cores) and ``env`` exported to every rank."""
    import uuid

    from k2trt.launch.mpi import detect_mpi, launch_environ, mpirun_argv, resolve_mpirun
    from k2trt.launch.spec import HostSlots, LaunchSpec

    spec = LaunchSpec(engine="reference", argv=tuple(argv), world_size=np, hosts=(HostSlots("localhost", np),),
                      mpirun=resolve_mpirun() or "mpirun", env=dict(env or {}), oversubscribe=True)
    cmd = mpirun_argv(spec, detect_mpi(spec.mpirun), euid=os.geteuid(), environ=os.environ)
    return cmd, launch_environ(os.environ, spec, f"ref-{uuid.uuid4().hex[:12]}")


def check_prompts(vocab: int, seed: int, lengths: Sequence[int] = (5, 3, 9)) -> list[list[int]]:
    """The fixed prompts of a sharded check (every rank derives the same ones)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def padded_batch(prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, list[int]]:
    """Left-padded ``[B, S]`` token batch and the pad count of each row."""
    width = max(len(p) for p in prompts)
    pad = [width - len(p) for p in prompts]
    return torch.tensor([[0] * pad[i] + list(p) for i, p in enumerate(prompts)], dtype=torch.long), pad


def run_check(model_dir: Path, layout: Layout, out: Path, *, seed: int = 0, decode: int = 3,
              attn_impl: AttnImpl = "absorb", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
    """One rank of a sharded check: full-batch logits, then ``decode`` greedy tokens with the KV cache."""
    from k2trt.reference.generate import SamplingParams, generate

    rank, world, _ = env_rank()
    if world != layout.tp:
        raise LaunchError(f"layout {layout} needs {layout.tp} ranks but the job has {world}",
                          f"launch with mpirun -np {layout.tp}")
    init_distributed(rank, world, timeout_s)
    comm = DistCollectives(rank, world) if world > 1 else None
    model, reader = build_rank_model(model_dir, layout, rank, comm, attn_impl=attn_impl)
    spec = ModelSpec.from_config(model_dir)
    prompts = check_prompts(spec.vocab_size, seed)
    tokens, pad = padded_batch(prompts)
    logits = model(tokens, model.new_cache(len(prompts), pad))                # [B, S, V]
    agree = comm.broadcast if comm else None
    gen = generate(model, prompts, SamplingParams(max_tokens=decode), agree=agree) if decode else []
    out.mkdir(parents=True, exist_ok=True)
    log = {"rank": rank, "layout": str(layout), "bytes_read": reader.bytes_read,
           "reads": [[n, list(s)] for n, s in reader.reads]}
    (out / f"reads-{rank}.json").write_text(json.dumps(log))
    if rank == 0:
        torch.save({"tokens": tokens, "pad": pad, "logits": logits, "generated": [c.tokens for c in gen],
                    "prompts": prompts}, out / "logits.pt")
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _layout_arg(text: str) -> Layout:
    try:
        return Layout.parse(text)
    except K2trtError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m k2trt.reference.parallel`` (``check_argv`` writes it)."""
    ap = argparse.ArgumentParser(prog="python -m k2trt.reference.parallel",
                                 description="One rank of the sharded reference K2 (run under mpirun).")
    ap.add_argument("--check", metavar="MODEL_DIR", required=True, help="checkpoint directory")
    ap.add_argument("--layout", required=True, type=_layout_arg, help="tpN[,epM][,adp]")
    ap.add_argument("--out", required=True, help="directory for logits.pt and reads-RANK.json")
    ap.add_argument("--seed", type=int, default=0, help="seed of the check prompts")
    ap.add_argument("--decode", type=int, default=3, help="greedy tokens to decode after the prefill")
    ap.add_argument("--attn-impl", choices=["naive", "absorb"], default="absorb")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="collective timeout (s)")
    return ap


def check_argv(model_dir: str | Path, layout: Layout, out: str | Path, *, seed: int = 0,
               attn_impl: AttnImpl = "absorb", timeout_s: float = DEFAULT_TIMEOUT_S) -> list[str]:
    """The rank command of a sharded check, spelled for :func:`parser` (every rank runs it under mpirun).

    Args:
        model_dir: checkpoint directory.
        layout: the layout to shard by (no pipeline stages).
        out: where rank 0 writes ``logits.pt`` and every rank ``reads-RANK.json``.
        seed, attn_impl, timeout_s: the check's prompt seed, attention path and collective timeout.
    Returns:
        ``[python, "-m", "k2trt.reference.parallel", "--check", MODEL, "--layout", "tp4,ep2", …]`` with the
        interpreter running this code (it has k2trt and torch).
    Example:
        >>> check_argv("/m", Layout.parse("tp4ep2"), "/o")[3:7]
        ['--check', '/m', '--layout', 'tp4,ep2']
    """
    return [sys.executable, "-m", "k2trt.reference.parallel", "--check", str(model_dir), "--layout",
            layout.text(","), "--out", str(out), "--seed", str(seed), "--attn-impl", attn_impl,
            "--timeout", str(timeout_s)]


def main(argv: Sequence[str] | None = None) -> int:
    a = parser().parse_args(argv)
    torch.set_num_threads(1)  # many ranks share a few cores
    run_check(Path(a.check), a.layout, Path(a.out), seed=a.seed, decode=a.decode, attn_impl=a.attn_impl,
              timeout_s=a.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
