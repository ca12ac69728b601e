"""Train the tiny K2 on the synthetic chat corpus: deterministic, resumable, quantisation-aware at the end.

One run = ``TrainConfig`` (everything that decides the weights) + a work directory (the resumable state and the
logs) + an output directory (the checkpoint). The steps:

1. Corpus: ``build_corpus`` draws ``examples`` training conversations (``corpus.py``), renders them with K2's
   template through ``render.encode`` (ids + loss mask on the assistant's own tokens) and hashes the result.
2. Batches: a fixed schedule from the seed — per epoch the sequences are shuffled, sorted by length within
   windows of 256 and packed into batches of at most ``batch_tokens`` padded tokens (right padding: causal
   attention never looks at it and it carries no loss), and the batches shuffled.
3. Steps: the reference ``Transformer`` (``attn_impl="sdpa"``), BF16 autocast on CPU, AdamW (β 0.9/0.95, decay on
   matrices only), a loss on every token (the assistant's own weigh 1, the rest ``context_weight``), warm-up,
   constant rate, linear decay over the last ``decay_steps``, gradient clipping, and after every step K2's
   bias-based router balancing. The last ``fp8_steps`` run with the weights the checkpoint will store
   (``TrainableK2.quantize_in_loop``).
4. Export: block FP8 through ``checkpoint.synth`` + ``training.json`` (config, corpus identity, the first
   ``repro_steps`` losses, timings, hardware, loss curve, and the held-out gates when evaluated).

Determinism: nothing is random but the seeded initialisation and batch schedule, and the thread count is fixed
(``threads``, 1 by default), so a run — and a run killed and resumed from its last saved state, which holds the
weights, the optimizer, the router biases and the step — ends with bit-identical weights on the same machine.
A run still short of its decay may be resumed with another ``steps``: it then ends exactly as a fresh run of that
length (the learning rate before the decay does not depend on ``steps``, nor do the first batches).
``reproduce`` re-runs the first steps for the test that checks a committed checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from k2trt.checkpoint import files
from k2trt.errors import ConfigError
from k2trt.fsio import atomic_open, atomic_write_json
from k2trt.train.config import METADATA_FILE, STATE_FILE, TOKENIZER_SEED, RunOptions, TrainConfig
from k2trt.train.corpus import KINDS, THINKING_MIX
from k2trt.train.render import Corpus, build_corpus, corpus_digest, tiny_spec, workdir_tokenizer
from k2trt.train.weights import TrainableK2

def heldout_digest(cfg: TrainConfig, tokenizer: Any) -> str:
    from k2trt.train.evaluate import heldout_examples
    from k2trt.train.render import prompt_ids

    return corpus_digest([(prompt_ids(tokenizer, ex), []) for ex in heldout_examples(cfg.seed, cfg.heldout)])


def schedule(lengths: list[int], cfg: TrainConfig) -> list[list[int]]:
    """The batches of the whole run, in order: lists of sequence indices (module docstring, step 2)."""
    out: list[list[int]] = []
    epoch = 0
    while len(out) < cfg.steps:
        rng = random.Random(f"{cfg.seed}/batches/{epoch}")
        order = list(range(len(lengths)))
        rng.shuffle(order)
        batches: list[list[int]] = []
        for w in range(0, len(order), 256):
            window = sorted(order[w:w + 256], key=lambda i: (-lengths[i], i))
            cur: list[int] = []
            for i in window:
                if cur and lengths[cur[0]] * (len(cur) + 1) > cfg.batch_tokens:
                    batches.append(cur)
                    cur = []
                cur.append(i)
            if cur:
                batches.append(cur)
        rng.shuffle(batches)
        out += batches
        epoch += 1
    return out[:cfg.steps]


def make_batch(seqs: list[tuple[Any, Any]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``tokens [B, S]`` and loss ``mask [B, S]`` (True where the token is a target)."""
    width = max(len(ids) for ids, _ in seqs)
    tokens = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for b, (ids, m) in enumerate(seqs):
        tokens[b, :len(ids)] = torch.as_tensor(np.asarray(ids, dtype=np.int64))
        mask[b, :len(m)] = torch.as_tensor(np.asarray(bytearray(m), dtype=np.bool_))
    return tokens, mask


def _steady_heap() -> None:
    """Batches of ever-changing shapes fragment glibc's heap: a run's resident size grew by about 1 GB per 50
    steps. A fixed mmap threshold returns every large tensor to the kernel when it is freed (RSS stays flat)."""
    mallopt = getattr(files.libc(), "mallopt", None) if sys.platform.startswith("linux") else None
    if mallopt is not None:
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Warm-up, constant, then a linear decay over the last ``decay_steps`` (warmup-stable-decay)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    left = cfg.steps - step
    if left > cfg.decay_steps:
        return cfg.lr
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * (left - 1) / max(1, cfg.decay_steps - 1)


def _resumable(saved: TrainConfig, cfg: TrainConfig, step: int) -> bool:
    """Whether a state saved at ``step`` of ``saved``'s run continues into ``cfg``'s run exactly: the same
    configuration, or one whose ``steps`` differs while neither run has begun its decay by ``step``."""
    if saved == cfg:
        return True
    return dataclasses.replace(saved, steps=cfg.steps) == cfg and step <= min(saved.steps, cfg.steps) - max(
        cfg.decay_steps, cfg.fp8_steps)


@dataclass
class Run:
    """A training run in progress: the model, its optimizer and what has happened so far."""

    cfg: TrainConfig
    k2: TrainableK2
    opt: torch.optim.Optimizer
    corpus: Corpus
    batches: list[list[int]]
    pad_id: int
    step: int = 0
    losses: list[float] = field(default_factory=list)
    """The objective per step (targets weigh 1, context ``context_weight``)."""
    target_losses: list[float] = field(default_factory=list)
    """Mean loss on the target tokens alone, per step."""
    train_s: float = 0.0
    tokens_seen: int = 0
    resumed: int = 0
    loads: list[torch.Tensor] = field(default_factory=list)
    _valid: torch.Tensor | None = None

    @classmethod
    def start(cls, cfg: TrainConfig, tokenizer: Any, corpus: Corpus | None = None) -> "Run":
        torch.set_num_threads(cfg.threads)
        _steady_heap()
        corpus = corpus or build_corpus(cfg, tokenizer)
        k2 = TrainableK2(tiny_spec(), cfg.seed, circuit=cfg.copy_circuit)
        mats, flat = k2.trainable()
        opt = torch.optim.AdamW([{"params": mats, "weight_decay": cfg.weight_decay},
                                 {"params": flat, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8)
        batches = schedule([len(s[0]) for s in corpus.sequences], cfg)
        run = cls(cfg, k2, opt, corpus, batches, tokenizer.pad_id)
        for gate in k2.gates:
            gate.register_forward_hook(run._count_loads)
        return run

    def _count_loads(self, module: Any, args: Any, out: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self._valid is None:  # a forward pass outside training (evaluation, tests)
            return
        idx = out[1]                                                          # [M, K]
        self.loads.append(torch.bincount(idx[self._valid].flatten(), minlength=self.k2.spec.n_routed_experts))

    def train_step(self) -> float:
        """One optimizer step on batch ``self.step``; returns the objective (targets weigh 1, the rest
        ``context_weight``)."""
        cfg, k2 = self.cfg, self.k2
        if self.step >= cfg.steps - cfg.fp8_steps:
            k2.quantize_in_loop()
        tokens, mask = make_batch([self.corpus.sequences[i] for i in self.batches[self.step]], self.pad_id)
        self._valid = (tokens != self.pad_id).flatten()                       # real tokens [B*S]
        self.loads = []
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            logits = k2.model(tokens)                                         # [B, S, V] float32
        self._valid = None
        nxt, target = tokens[:, 1:], mask[:, 1:]                              # position t predicts token t+1
        ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), nxt.flatten(), reduction="none").view_as(nxt)
        w = torch.where(target, 1.0, cfg.context_weight) * (nxt != self.pad_id)
        loss = (ce * w).sum() / w.sum()
        self.target_losses.append(float(ce[target].mean().detach()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], cfg.grad_clip)
        self.opt.step()
        k2.balance_routers(self.loads, cfg.bias_rate)
        self.step += 1
        self.tokens_seen += tokens.numel()
        self.losses.append(float(loss.detach()))
        return self.losses[-1]

    # ---- resumable state ---------------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        state = {"config": dataclasses.asdict(self.cfg), "corpus": self.corpus.digest, "step": self.step,
                 "weights": self.k2.state(), "opt": self.opt.state_dict(), "losses": self.losses,
                 "target_losses": self.target_losses,
                 "train_s": self.train_s, "tokens_seen": self.tokens_seen, "resumed": self.resumed}
        with atomic_open(path, "wb") as f:
            torch.save(state, f)

    def restore(self, path: Path) -> None:
        state = torch.load(path, weights_only=True)
        saved = TrainConfig(**state["config"])
        if not _resumable(saved, self.cfg, state["step"]) or state["corpus"] != self.corpus.digest:
            raise ConfigError(f"{path} belongs to a run with another configuration or corpus (or one past the "
                              "start of its decay)", "pass another --workdir, or --restart to discard it")
        self.step = state["step"]
        self.k2.load_state(state["weights"])
        self.opt.load_state_dict(state["opt"])
        self.losses, self.train_s = list(state["losses"]), float(state["train_s"])
        self.target_losses = list(state["target_losses"])
        self.tokens_seen, self.resumed = int(state["tokens_seen"]), int(state["resumed"]) + 1


def train(cfg: TrainConfig, out_dir: str | Path, options: RunOptions = RunOptions(),
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Train the tiny K2 and write its checkpoint (module docstring); resumes from ``options.workdir``.

    Args:
        cfg: the run's configuration.
        out_dir: the checkpoint directory (replaced at the end).
        options: work directory, save interval, logging, whether to score the held-out gates.
        echo: progress lines (also appended to ``workdir/train.log``).
    Returns:
        The metadata written to ``out_dir/training.json``.
    Example:
        ``train(TrainConfig(), "k2trt/data/tiny-k2")``
    """
    work = Path(options.workdir)
    work.mkdir(parents=True, exist_ok=True)
    log = open(work / "train.log", "a", buffering=1)

    def say(line: str) -> None:
        echo(line)
        log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")

    tok = workdir_tokenizer(work)
    t0 = time.monotonic()
    run = Run.start(cfg, tok)
    say(f"corpus: {len(run.corpus.sequences)} sequences, {run.corpus.tokens:,} tokens ({run.corpus.targets:,} "
        f"targets), {run.corpus.dropped} over {cfg.max_len} tokens dropped, digest {run.corpus.digest[:16]} "
        f"({time.monotonic() - t0:.0f} s)")
    state = work / STATE_FILE
    if state.exists() and not options.restart:
        run.restore(state)
        say(f"resumed at step {run.step} from {state}")
    last_save = time.monotonic()
    while run.step < cfg.steps:
        t = time.monotonic()
        loss = run.train_step()
        run.train_s += time.monotonic() - t
        if run.step % options.log_every == 0 or run.step == cfg.steps:
            eta = run.train_s / run.step * (cfg.steps - run.step) if run.step else 0
            window, tw = run.losses[-options.log_every:], run.target_losses[-options.log_every:]
            say(f"step {run.step}/{cfg.steps} loss {sum(window) / len(window):.4f} (last {loss:.4f}) "
                f"target {sum(tw) / len(tw):.4f} "
                f"lr {lr_at(run.step - 1, cfg):.2e} {run.tokens_seen / max(run.train_s, 1e-9):.0f} tok/s "
                f"elapsed {run.train_s / 60:.1f} min eta {eta / 60:.1f} min"
                + (" [fp8]" if run.k2.quantized else ""))
        if time.monotonic() - last_save >= options.save_every_s:
            run.save(state)
            last_save = time.monotonic()
    run.save(state)
    out = run.k2.export(out_dir, tokenizer_seed=TOKENIZER_SEED)
    meta = metadata(run, tok)
    atomic_write_json(out / METADATA_FILE, meta)
    say(f"wrote {out} after {run.train_s / 60:.1f} min of training")
    if options.evaluate:
        from k2trt.train.evaluate import evaluate_checkpoint

        meta["eval"] = evaluate_checkpoint(out, cfg.seed, cfg.heldout, echo=say)
        atomic_write_json(out / METADATA_FILE, meta)
    log.close()
    return meta


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata(run: Run, tokenizer: Any) -> dict[str, Any]:
    """What ``training.json`` records about a finished run (module docstring, step 4)."""
    cfg, c = run.cfg, run.corpus
    every = max(1, cfg.steps // 50)
    curve = [[s + every, round(sum(run.losses[s:s + every]) / len(run.losses[s:s + every]), 4),
              round(sum(run.target_losses[s:s + every]) / len(run.target_losses[s:s + every]), 4)]
             for s in range(0, len(run.losses), every)]
    return {
        "format": "k2trt-tiny-training/1",
        "command": "k2trt train-tiny",
        "config": dataclasses.asdict(cfg),
        "model": {"preset": "tiny", "params": sum(p.numel() for p in run.k2.params.values()),
                  "checkpoint": "block FP8 (128x128, e4m3) like K2-Instruct"},
        "corpus": {"train_examples": c.examples, "train_sequences": len(c.sequences), "dropped_too_long": c.dropped,
                   "train_tokens": c.tokens, "target_tokens": c.targets, "digest": c.digest,
                   "heldout_examples": cfg.heldout, "heldout_digest": heldout_digest(cfg, tokenizer),
                   "kinds": KINDS, "thinking_mix": THINKING_MIX},
        "repro": {"threads": cfg.threads, "bf16": cfg.bf16, "first_losses": run.losses[:cfg.repro_steps]},
        "run": {"steps": run.step, "train_minutes": round(run.train_s / 60, 1), "tokens_seen": run.tokens_seen,
                "resumed": run.resumed, "threads": cfg.threads, "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        "loss": {"final": round(sum(run.losses[-every:]) / len(run.losses[-every:]), 4),
                 "final_targets": round(sum(run.target_losses[-every:]) / len(run.target_losses[-every:]), 4),
                 "curve": curve},
    }


def reproduce(cfg: TrainConfig, tokenizer: Any, steps: int) -> tuple[str, list[float]]:
    """The corpus digest and the losses of the first ``steps`` steps of ``cfg``'s run, recomputed from scratch."""
    run = Run.start(cfg, tokenizer)
    return run.corpus.digest, [run.train_step() for _ in range(steps)]
