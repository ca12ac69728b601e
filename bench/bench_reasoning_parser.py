"""Streaming reasoning + tool-call parsing: k2trt's incremental parsers vs a re-scan-per-delta parser, in one run.

The input is a K2.6 completion as the engine streams it after a prompt that opened ``<think>``: ``--kib`` KiB of
reasoning, ``</think>``, a sentence of content, and one tool call with ``--kib`` KiB of JSON arguments — tokenised
with the tiny K2.6 tokenizer (think and tool-call markers are single control tokens) and fed one token per delta.
k2trt's path is the gateway's: ``ReasoningStream`` → ``ToolCallStream``, each delta scanned once. The baseline keeps
the whole output and, on every delta, re-splits it at the reasoning end and re-runs the tool-call regex, emitting the
reasoning, content and argument text not yet sent — the approach of parsers that re-parse ``current_text`` per
delta. Both must produce the same reasoning, content and arguments; the script prints seconds for each, the ratio,
and how k2trt's time scales with the size.

    python bench/bench_reasoning_parser.py             # 32 KiB + 32 KiB (about a minute, nearly all the baseline)
    python bench/bench_reasoning_parser.py --kib 8 --json
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
from k2trt.chat.reasoning import THINK_CLOSE, ReasoningDelta, ReasoningStream
from k2trt.chat.thinking import write_family_files
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.chat.toolcalls import ContentDelta, ToolCallArgs, ToolCallStream

WORDS = ("first I compare the options then check the file path /tmp/x.py and the value 42 so the call "
         "needs 天气 北京 😀 arguments true null maybe").split()
CONTENT = "I'll write the notes now."


def _words(kib: int, rng: random.Random) -> str:
    out, size = [], 0
    while size < kib * 1024:
        w = rng.choice(WORDS)
        out.append(w)
        size += len(w.encode()) + 1
    return " ".join(out)


def completion(kib: int, seed: int = 0) -> tuple[str, str, str]:
    """(streamed text, reasoning, arguments): ``kib`` KiB of each."""
    rng = random.Random(seed)
    reasoning = _words(kib, rng)
    args = json.dumps({"path": "/tmp/notes.md", "content": _words(kib, rng), "append": False}, ensure_ascii=False)
    text = (f"{reasoning}{THINK_CLOSE}{CONTENT}{vocab.SECTION_BEGIN}{vocab.CALL_BEGIN}functions.write_file:0"
            f"{vocab.ARG_BEGIN}{args}{vocab.CALL_END}{vocab.SECTION_END}")
    return text, reasoning, args


def token_deltas(text: str) -> list[str]:
    """``text`` as the engine streams it: one token per delta, UTF-8 characters never split."""
    with tempfile.TemporaryDirectory() as d:
        vocab.write_tokenizer_files(d)
        write_family_files(d, "k2.6")
        tok = K2Tokenizer.from_dir(d)
    dec = tok.incremental_decoder()
    return [x for x in (dec.feed([i]) for i in tok.encode_with_specials(text)) if x]


class RescanParser:
    """Baseline: keep the whole output; on every delta re-split reasoning at the earliest end marker and re-run the
    tool-call regex over the content, emitting what was not sent yet (partial markers held back)."""

    END = re.compile(re.escape(THINK_CLOSE) + "|" + re.escape(vocab.SECTION_BEGIN))
    CALL = re.compile(r"<\|tool_call_begin\|>\s*(?P<id>[^<]+:\d+)\s*<\|tool_call_argument_begin\|>\s*"
                      r"(?P<args>.*?)\s*(?:<\|tool_call_end\|>|\Z)", re.S)
    MARKERS = (THINK_CLOSE, vocab.SECTION_BEGIN, vocab.CALL_END)

    def __init__(self) -> None:
        self.text = ""
        self.sent = {"reasoning": 0, "content": 0}
        self.args_sent: list[int] = []

    def _hold(self, s: str) -> str:
        for m in self.MARKERS:
            for n in range(len(m) - 1, 0, -1):
                if s.endswith(m[:n]):
                    return s[:-n]
        return s

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self.text += delta
        out = []
        m = self.END.search(self.text)
        reasoning = self.text[:m.start()] if m else self._hold(self.text)
        rest = self.text[m.end() if m and m.group() == THINK_CLOSE else m.start():] if m else ""
        sec = rest.find(vocab.SECTION_BEGIN)
        content = rest[:sec] if sec >= 0 else self._hold(rest)
        for kind, val in (("reasoning", reasoning), ("content", content)):
            if len(val) > self.sent[kind]:
                out.append((kind, val[self.sent[kind]:]))
                self.sent[kind] = len(val)
        if sec >= 0:
            for k, c in enumerate(self.CALL.finditer(rest, sec)):
                args = self._hold(c["args"])
                if k == len(self.args_sent):
                    self.args_sent.append(0)
                if len(args) > self.args_sent[k]:
                    out.append(("args", args[self.args_sent[k]:]))
                    self.args_sent[k] = len(args)
        return out


def run_ours(deltas: list[str]) -> tuple[float, tuple[str, str, str]]:
    t0 = time.perf_counter()
    rs, ts = ReasoningStream(opened=True), ToolCallStream()
    parts: dict[str, list[str]] = {"reasoning": [], "content": [], "args": []}

    def tools(events: list) -> None:
        for e in events:
            if isinstance(e, ContentDelta):
                parts["content"].append(e.text)
            elif isinstance(e, ToolCallArgs):
                parts["args"].append(e.fragment)

    for d in deltas:
        for ev in rs.feed(d):
            if isinstance(ev, ReasoningDelta):
                parts["reasoning"].append(ev.text)
            else:
                tools(ts.feed(ev.text))
    for ev in rs.finish()[:-1]:
        tools(ts.feed(ev.text))
    tools(ts.finish())
    dt = time.perf_counter() - t0
    return dt, ("".join(parts["reasoning"]), "".join(parts["content"]), "".join(parts["args"]))


def run_rescan(deltas: list[str]) -> tuple[float, tuple[str, str, str]]:
    t0 = time.perf_counter()
    p = RescanParser()
    parts: dict[str, list[str]] = {"reasoning": [], "content": [], "args": []}
    for d in deltas:
        for kind, text in p.feed(d):
            parts[kind].append(text)
    return time.perf_counter() - t0, ("".join(parts["reasoning"]), "".join(parts["content"]), "".join(parts["args"]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kib", type=int, default=32, help="KiB of reasoning and KiB of tool-call arguments (32)")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs of k2trt's parsers (default 3)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)

    text, reasoning, args = completion(a.kib)
    deltas = token_deltas(text)
    ours = min((run_ours(deltas) for _ in range(a.repeat)), key=lambda r: r[0])
    base = run_rescan(deltas)  # quadratic in the output length
    want = (reasoning, CONTENT, args)
    if ours[1] != want or base[1] != want:
        print("error: a parser produced a wrong split", file=sys.stderr)
        return 1
    scaling = {}
    for kib in (a.kib // 4, a.kib, a.kib * 4):  # linear: time ∝ size
        if kib:
            d = token_deltas(completion(kib)[0])
            scaling[kib] = min(run_ours(d)[0] for _ in range(a.repeat))
    res = {"reasoning_bytes": len(reasoning.encode()), "arguments_bytes": len(args.encode()), "deltas": len(deltas),
           "mean_delta_chars": round(len(text) / len(deltas), 2), "k2trt_s": round(ours[0], 4),
           "rescan_s": round(base[0], 4), "speedup": round(base[0] / ours[0], 1),
           "k2trt_us_per_delta": round(ours[0] / len(deltas) * 1e6, 2),
           "k2trt_scaling_s": {f"{k}+{k}KiB": round(v, 4) for k, v in scaling.items()}}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['reasoning_bytes']:,} bytes of reasoning + {res['arguments_bytes']:,} bytes of arguments in "
              f"{res['deltas']:,} one-token deltas ({res['mean_delta_chars']} chars each)")
        print(f"  k2trt reasoning → tool-call parsers : {res['k2trt_s']:.4f} s "
              f"({res['k2trt_us_per_delta']} µs/delta)")
        print(f"  re-scan per delta                   : {res['rescan_s']:.4f} s")
        print(f"  ratio                               : {res['speedup']}x faster")
        print("  k2trt scaling                       : " + ", ".join(f"{k} {v:.4f} s" for k, v in
                                                                     res["k2trt_scaling_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
