"""``k2trt train-tiny``: train the tiny K2 on the synthetic chat corpus and write its block-FP8 checkpoint."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import dry_run_option, echo_json, json_option

# Defaults come from the one place that defines them (STYLE P2); importing it does not import torch.
from k2trt.train.config import DEFAULT_OUT, RunOptions, TrainConfig

_C, _R = TrainConfig(), RunOptions()


@click.command("train-tiny")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT,
              show_default=True, help="Checkpoint directory to write (replaced at the end of the run).")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=_R.workdir,
              show_default=True, help="Resumable state, train.log and the tokenizer the corpus is encoded with.")
@click.option("--seed", type=int, default=_C.seed, show_default=True, help="Corpus, initial weights and batches.")
@click.option("--examples", type=click.IntRange(min=1), default=_C.examples, show_default=True,
              help="Training conversations.")
@click.option("--steps", type=click.IntRange(min=1), default=_C.steps, show_default=True, help="Optimizer steps.")
@click.option("--batch-tokens", type=click.IntRange(min=64), default=_C.batch_tokens, show_default=True,
              help="Padded tokens per batch at most.")
@click.option("--fp8-steps", type=click.IntRange(min=0), default=_C.fp8_steps, show_default=True,
              help="Final steps computed with the block-FP8 weights the checkpoint stores.")
@click.option("--threads", type=click.IntRange(min=1), default=_C.threads, show_default=True,
              help="torch CPU threads; the weights depend on it, keep it fixed across a resumed run.")
@click.option("--heldout", type=click.IntRange(min=1), default=_C.heldout, show_default=True,
              help="Held-out conversations the gates score.")
@click.option("--eval/--no-eval", "evaluate", default=_R.evaluate, show_default=True,
              help="Score the held-out gates on the written checkpoint and record them in training.json.")
@click.option("--restart", is_flag=True, default=_R.restart, help="Discard a saved state in --workdir.")
@dry_run_option
@json_option
def train_tiny(out: Path, workdir: Path, seed: int, examples: int, steps: int, batch_tokens: int,
               fp8_steps: int, threads: int, heldout: int, evaluate: bool, restart: bool, dry_run: bool,
               as_json: bool) -> None:
    """Train the tiny K2 (CPU, deterministic under --seed and --threads) to chat, think and call tools.

    Resumable: rerun the same command after an interruption and it continues from the last saved state. The
    defaults reproduce the committed checkpoint (about 96 minutes on two cores); run long jobs under ``nice``."""
    cfg = dataclasses.replace(_C, seed=seed, examples=examples, steps=steps, batch_tokens=batch_tokens,
                              fp8_steps=fp8_steps, threads=threads, heldout=heldout)
    opts = dataclasses.replace(_R, workdir=workdir, restart=restart, evaluate=evaluate)
    if fp8_steps > steps:
        raise click.BadParameter(f"{fp8_steps} FP8 steps exceed --steps {steps}", param_hint="--fp8-steps")
    if dry_run:
        _emit(_plan(cfg, opts, out), as_json)
        return
    from k2trt.train.trainer import train

    meta = train(cfg, out, opts, echo=lambda line: click.echo(line, err=True))
    _emit({"checkpoint": str(out), **{k: meta[k] for k in ("run", "loss", "corpus", "eval") if k in meta}},
          as_json)


def _plan(cfg: TrainConfig, opts: RunOptions, out_dir: Path) -> dict[str, Any]:
    from k2trt.train.config import STATE_FILE
    from k2trt.train.render import build_corpus, workdir_tokenizer

    corpus = build_corpus(cfg, workdir_tokenizer(opts.workdir))
    state = opts.workdir / STATE_FILE
    return {"dry_run": True, "config": dataclasses.asdict(cfg), "out": str(out_dir), "workdir": str(opts.workdir),
            "resume": state.exists() and not opts.restart,
            "corpus": {"sequences": len(corpus.sequences), "tokens": corpus.tokens, "targets": corpus.targets,
                       "dropped_too_long": corpus.dropped, "digest": corpus.digest}}


def _emit(obj: dict[str, Any], as_json: bool) -> None:
    if as_json:
        echo_json(obj)
        return
    for key, value in obj.items():
        click.echo(f"{key}: {value}")
    sys.stdout.flush()
