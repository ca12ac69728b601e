"""Streaming tool-call parsing: k2trt's incremental parser vs a re-scan-per-delta parser, in one run.

The input is a K2 completion whose one tool call carries ``--kib`` KiB of JSON arguments, tokenised with the tiny
K2 tokenizer and streamed one token per delta (a few characters each; control markers arrive as single tokens), as
an engine streams it. The baseline keeps the whole output and re-parses it with a regex on every delta, emitting the
argument text not yet sent — the approach of parsers that re-scan ``current_text`` per delta. Both must produce the
same arguments; the script prints seconds for each and the ratio, plus how k2trt's time scales with the size.

    python bench/bench_toolcall_parser.py            # 64 KiB (about a minute, nearly all of it the baseline)
    python bench/bench_toolcall_parser.py --kib 16 --json
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time

from k2trt.chat import vocab
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.chat.toolcalls import ToolCallArgs, ToolCallStream

WORDS = ("the model streams tool call arguments token by token while the gateway forwards each fragment "
         "天气 北京 😀 path /tmp/x.py value 42 true null").split()


def completion(kib: int, seed: int = 0) -> tuple[str, str]:
    """A K2 completion with one call whose JSON arguments are about ``kib`` KiB; returns (text, arguments)."""
    rng = random.Random(seed)
    words: list[str] = []
    size = 0
    while size < kib * 1024:
        w = rng.choice(WORDS)
        words.append(w)
        size += len(w.encode()) + 1
    args = json.dumps({"path": "/tmp/notes.md", "content": " ".join(words), "append": False}, ensure_ascii=False)
    text = (f"I'll write the file.{vocab.SECTION_BEGIN}{vocab.CALL_BEGIN}functions.write_file:0{vocab.ARG_BEGIN}"
            f"{args}{vocab.CALL_END}{vocab.SECTION_END}")
    return text, args


def token_deltas(text: str) -> list[str]:
    """``text`` as an engine would stream it: one token per delta, UTF-8 characters never split."""
    with tempfile.TemporaryDirectory() as d:
        vocab.write_tokenizer_files(d)
        tok = K2Tokenizer.from_dir(d)
    dec = tok.incremental_decoder()
    deltas = [dec.feed([i]) for i in tok.encode_with_specials(text)]
    return [x for x in deltas if x]


class RescanParser:
    """Baseline: keep the whole output, re-run the tool-call regex over all of it on every delta."""

    CALL = re.compile(r"<\|tool_call_begin\|>\s*(?P<id>[^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*"
                      r"(?P<args>.*?)\s*(?:<\|tool_call_end\|>|\Z)", re.S)

    def __init__(self) -> None:
        self.text = ""
        self.sent: list[int] = []

    def feed(self, delta: str) -> list[tuple[int, str]]:
        self.text += delta
        start = self.text.find(vocab.SECTION_BEGIN)
        if start < 0:
            return []
        out = []
        for k, m in enumerate(self.CALL.finditer(self.text, start)):
            args = m["args"]
            for marker in (vocab.CALL_END[:n] for n in range(len(vocab.CALL_END) - 1, 0, -1)):
                if args.endswith(marker):  # hold back a partial end marker
                    args = args[:-len(marker)]
                    break
            if k == len(self.sent):
                self.sent.append(0)
            if len(args) > self.sent[k]:
                out.append((k, args[self.sent[k]:]))
                self.sent[k] = len(args)
        return out


def run_ours(deltas: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    s = ToolCallStream()
    parts = []
    for d in deltas:
        for e in s.feed(d):
            if isinstance(e, ToolCallArgs):
                parts.append(e.fragment)
    s.finish()
    return time.perf_counter() - t0, "".join(parts)


def run_rescan(deltas: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    p = RescanParser()
    parts = [frag for d in deltas for _, frag in p.feed(d)]
    return time.perf_counter() - t0, "".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kib", type=int, default=64, help="KiB of tool-call arguments (default 64)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs of k2trt's parser (default 3)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)

    text, args = completion(a.kib)
    deltas = token_deltas(text)
    ours = min((run_ours(deltas) for _ in range(a.repeat)), key=lambda r: r[0])
    base = run_rescan(deltas)  # quadratic: one run takes about a minute at 64 KiB
    if ours[1] != args or base[1] != args:
        print("error: a parser produced wrong arguments", file=sys.stderr)
        return 1
    scaling = {}
    for kib in (a.kib // 4, a.kib, a.kib * 4):  # linear: time ∝ size
        if kib:
            d = token_deltas(completion(kib)[0])
            scaling[kib] = min(run_ours(d)[0] for _ in range(a.repeat))
    res = {"arguments_bytes": len(args.encode()), "deltas": len(deltas),
           "mean_delta_chars": round(len(text) / len(deltas), 2),
           "k2trt_s": round(ours[0], 4), "rescan_s": round(base[0], 4), "speedup": round(base[0] / ours[0], 1),
           "k2trt_us_per_delta": round(ours[0] / len(deltas) * 1e6, 2),
           "k2trt_scaling_s": {f"{k}KiB": round(v, 4) for k, v in scaling.items()}}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['arguments_bytes']:,} bytes of arguments in {res['deltas']:,} one-token deltas "
              f"({res['mean_delta_chars']} chars each)")
        print(f"  k2trt incremental parser : {res['k2trt_s']:.4f} s ({res['k2trt_us_per_delta']} µs/delta)")
        print(f"  re-scan per delta        : {res['rescan_s']:.4f} s")
        print(f"  ratio                    : {res['speedup']}x faster")
        print("  k2trt scaling            : " + ", ".join(f"{k} {v:.4f} s" for k, v in
                                                          res["k2trt_scaling_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
