"""K2's special-token layout and its tokenizer files: read (``load_ranks``, ``read_tokenizer_files``) and written
(the tiny tokenizer, ``write_tokenizer_files``, with k2trt's ``CHAT_TEMPLATE``).

K2's vocabulary is a byte-level BPE of ``n_ranks`` ranks (163,584 for the real model, ids ``0 … n_ranks-1``)
followed by 256 reserved ids for special tokens (kimi_formats.md §3.3). Seventeen of those are named; the rest are
``<|reserved_token_{id}|>``. The five tool-call markers are registered with ``special: false`` so that
``skip_special_tokens`` keeps them in the text that tool-call parsers read.

``write_tokenizer_files`` writes a *tiny* tokenizer in K2's exact file format — ``tiktoken.model`` (lines of
``base64(token_bytes) rank``), ``tokenizer_config.json`` and ``chat_template.jinja`` — holding a real byte-level BPE
learned from the small mixed-language corpus below, so prompts and tool-call JSON tokenise into plausible pieces.
Everything is deterministic: the same arguments give byte-identical files.

Pre-tokenisation uses K2's own ``pat_str`` (``PAT_STR``). Its ``&&[^\\p{Han}]`` class intersections are understood
by tiktoken's Rust regex but silently mis-parsed by Python's ``regex`` and unsupported by Oniguruma (the HF
``tokenizers`` library), so ``PAT_STR_PORTABLE`` rewrites them as ``(?:(?!\\p{Han})[…])``; a unit test checks that
both split text identically.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

from k2trt.errors import CheckpointError, ConfigError
from k2trt.fsio import atomic_write

NUM_RESERVED = 256
"""Special-token slots after the BPE ranks (``vocab_size = n_ranks + 256``)."""
K2_N_RANKS = 163_584
"""BPE ranks of the real K2 tokenizer."""

BOS, EOS, PAD, UNK = "[BOS]", "[EOS]", "[PAD]", "[UNK]"
IM_END, IM_USER, IM_ASSISTANT, IM_SYSTEM, IM_MIDDLE = (
    "<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|im_system|>", "<|im_middle|>")
SECTION_BEGIN, SECTION_END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CALL_BEGIN, ARG_BEGIN, CALL_END = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"

# (offset from n_ranks, token, special flag), kimi_formats.md §3.3. Unlisted offsets are reserved.
SPECIAL_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (0, BOS, True),
    (1, EOS, True),
    (2, IM_END, True),
    (3, IM_USER, True),
    (4, IM_ASSISTANT, True),
    (6, "<|start_header_id|>", True),
    (7, "<|end_header_id|>", True),
    (9, "[EOT]", True),
    (10, IM_SYSTEM, True),
    (11, SECTION_BEGIN, False),
    (12, SECTION_END, False),
    (13, CALL_BEGIN, False),
    (14, ARG_BEGIN, False),
    (15, CALL_END, False),
    (17, IM_MIDDLE, True),
    (254, UNK, True),
    (255, PAD, True),
)
ADDITIONAL_SPECIAL_TOKENS = ("<|im_end|>", "<|im_user|>", "<|im_assistant|>", "<|start_header_id|>",
                             "<|end_header_id|>", "[EOT]", "<|im_system|>", "<|im_middle|>")
"""The default ``additional_special_tokens`` of K2's tokenizer class (§3.1)."""

PAT_STR = "|".join([
    r"""[\p{Han}]+""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*"""
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
"""K2's pre-tokenisation pattern, verbatim (kimi_formats.md §3.2); for tiktoken only."""

_UPPER = r"(?:(?!\p{Han})[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])"
_LOWER = r"(?:(?!\p{Han})[\p{Ll}\p{Lm}\p{Lo}\p{M}])"
PAT_STR_PORTABLE = "|".join([
    r"""[\p{Han}]+""",
    rf"""[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    rf"""[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
"""``PAT_STR`` with class intersections rewritten as look-aheads, for Python ``regex`` and Oniguruma."""

DEFAULT_MODEL_MAX_LENGTH = int(1e30)  # what K2's tokenizer_config.json carries (effectively unbounded)

# The assistant's tool-call section (kimi_formats.md §4.4), one jinja macro that K2-Instruct's template and every
# thinking family's (``thinking.thinking_template``) include: one spelling of how a call is written.
TOOL_CALLS_MACRO = r"""{%- macro render_tool_calls(tool_calls) -%}
  {{- '<|tool_calls_section_begin|>' -}}
  {%- for tool_call in tool_calls -%}
    {%- set arguments = tool_call['function']['arguments'] -%}
    {{- '<|tool_call_begin|>' -}}
    {{- tool_call.get('id') or '' -}}
    {{- '<|tool_call_argument_begin|>' -}}
    {%- if arguments is string -%}
      {{- arguments -}}
    {%- else -%}
      {{- arguments | tojson -}}
    {%- endif -%}
    {{- '<|tool_call_end|>' -}}
  {%- endfor -%}
  {{- '<|tool_calls_section_end|>' -}}
{%- endmacro -%}
"""

# The chat_template.jinja k2trt writes: ``template.render`` in jinja, byte for byte. Every literal is inside
# {{- '…' -}} so that no template whitespace leaks under Transformers' settings (trim_blocks, lstrip_blocks).
CHAT_TEMPLATE = r"""{#- Kimi K2 chat template written by k2trt: the canonical structure of the official template. -#}
{%- macro render_content(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- elif content is not none and content is not mapping and content is iterable -%}
    {%- for part in content -%}
      {%- if part is mapping -%}
        {%- if part.get('type') == 'image' or 'image' in part or 'image_url' in part -%}
          {{- '<|media_start|>image<|media_content|><|media_pad|><|media_end|>' -}}
        {%- elif part.get('text') is not none -%}
          {{- part.get('text') -}}
        {%- endif -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
@TOOL_CALLS_MACRO@{%- if tools -%}
  {{- '<|im_system|>tool_declare<|im_middle|>' -}}
  {{- tools | tojson(separators=(',', ':')) -}}
  {{- '<|im_end|>' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>' -}}
  {%- endif -%}
  {%- set role = message['role'] -%}
  {%- if role == 'user' -%}
    {{- '<|im_user|>' -}}
  {%- elif role == 'assistant' -%}
    {{- '<|im_assistant|>' -}}
  {%- else -%}
    {{- '<|im_system|>' -}}
  {%- endif -%}
  {{- message.get('name') or role -}}
  {{- '<|im_middle|>' -}}
  {%- if role == 'tool' -%}
    {{- '## Return of ' -}}
    {{- message.get('tool_call_id') or '' -}}
    {{- '\n' -}}
  {%- endif -%}
  {{- render_content(message.get('content')) -}}
  {%- if role == 'assistant' and message.get('tool_calls') -%}
    {{- render_tool_calls(message['tool_calls']) -}}
  {%- endif -%}
  {{- '<|im_end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_assistant|>assistant<|im_middle|>' -}}
{%- endif -%}
""".replace("@TOOL_CALLS_MACRO@", TOOL_CALLS_MACRO)

# A small training corpus (written for this project): prose, code, JSON tool traffic and some CJK, so that the
# tiny BPE learns merges for the pieces a chat prompt and a tool call are made of.
CORPUS = r"""
You are Kimi, an AI assistant. The user asks a question and the assistant answers it, sometimes calling a tool.
What's the weather like in Beijing today? Let me check the weather for you. It is sunny, 25 degrees Celsius.
Please search the web for the latest news about large language models and summarize the results in three points.
The function returned an error: the file was not found. I'll try again with the correct path.
Tool results are returned to the model as system messages; each result names the call it answers.
Here is the plan: first read the configuration, then run the tests, and finally write the report.
The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX! don't, can't, won't, it's, we're, they've.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 16 32 64 100 128 256 512 1024 2048 4096 8192 65536 3.14159 2.71828 -1 1e-6.
Dates and times: 2025-07-11, 2025-09-05 12:30:00, Monday, Tuesday, January, February, March.
{"type": "function", "function": {"name": "get_weather", "description": "Get weather information",
 "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string",
 "description": "City name"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}}}}
{"type":"function","function":{"name":"search","parameters":{"type":"object","properties":{"query":{"type":"string"}}}}}
{"city": "Beijing"} {"city": "Shanghai", "unit": "celsius"} {"query": "kimi k2 tool calling", "limit": 10}
{"path": "/home/user/project/main.py", "content": "print('hello')", "overwrite": true, "mode": null}
{"weather": "Sunny", "temperature": 25, "humidity": 0.4, "wind": {"speed": 12, "direction": "NE"}}
{"results": [{"title": "Example", "url": "https://example.com/page?id=42", "score": 0.87}], "total": 1}
functions.get_weather:0 functions.search:1 functions.read_file:2 functions.run_shell:3 functions.write_file:4
## Return of functions.get_weather:0
def parse_arguments(text: str) -> dict:
    \"\"\"Parse the JSON arguments of a tool call.\"\"\"
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"bad arguments: {error}") from error


class ToolCall:
    def __init__(self, name, arguments, index=0):
        self.name = name
        self.arguments = arguments
        self.index = index

    def __repr__(self):
        return f"ToolCall(name={self.name!r}, index={self.index})"


for i in range(10):
    if i % 2 == 0:
        print(i, "even")
    else:
        print(i, "odd")
import os, sys, json
from pathlib import Path
result = [x * x for x in range(100) if x > 3]
const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" } });
if (response.status !== 200) { throw new Error(`request failed: ${response.status}`); }
SELECT name, count(*) FROM users WHERE created_at > '2025-01-01' GROUP BY name ORDER BY 2 DESC;
$ ls -la /tmp && cat README.md | grep -i "install" > out.txt
今天北京的天气怎么样？北京今天晴，气温二十五度。请帮我查询一下上海的天气。
我是一个人工智能助手，可以帮助你回答问题、写代码和调用工具。谢谢你的帮助！
人工智能模型可以调用函数来获取实时信息，例如天气、新闻和股票价格。
東京の天気はどうですか？今日は晴れです。ありがとうございます。
서울의 날씨는 어떻습니까? 오늘은 맑습니다. 감사합니다.
Ça va très bien, merci. Größe, Straße, naïve café, señor, Ελληνικά, русский язык.
Emoji are bytes too: 😀 👍 🚀 ✅ — and punctuation: “quotes”, ‘single’, … « » • ·
	Tabs	and  multiple   spaces,
Windows line endings\r\nand trailing spaces   
"""


@lru_cache(maxsize=8)
def learn_ranks(n_ranks: int = 1024, seed: int = 0) -> tuple[bytes, ...]:
    """Learn a byte-level BPE of exactly ``n_ranks`` tokens from ``CORPUS``.

    Args:
        n_ranks: total ranks, ``256`` single bytes plus ``n_ranks - 256`` merges.
        seed: breaks ties between equally frequent pairs (a different seed gives a different, equally valid
            vocabulary); the learning itself is deterministic.

    Returns:
        The token bytes in rank order (``tokens[r]`` has rank ``r``).

    Example:
        >>> learn_ranks(300)[:2]
        (b'\\x00', b'\\x01')
    """
    import regex  # installed with tiktoken's tooling; needed only to learn a vocabulary

    if n_ranks < 256:
        raise ConfigError(f"n_ranks={n_ranks} is below 256", "a byte-level BPE needs all 256 single bytes")
    words: dict[tuple[bytes, ...], int] = defaultdict(int)
    for piece in regex.findall(PAT_STR_PORTABLE, CORPUS):
        words[tuple(bytes([b]) for b in piece.encode())] += 1
    seqs = [list(w) for w in words]
    freqs = list(words.values())
    tokens: list[bytes] = [bytes([i]) for i in range(256)]
    known = set(tokens)
    salt = seed.to_bytes(8, "little", signed=True)

    def key(pair: tuple[bytes, bytes]) -> tuple[int, bytes, tuple[bytes, bytes]]:
        # min-heap order = highest count first, then the seeded tie-break (inverted so the largest digest wins)
        tie = hashlib.blake2b(salt + pair[0] + b"\x00" + pair[1], digest_size=8).digest()
        return (-counts[pair], bytes(255 - b for b in tie), pair)

    counts: dict[tuple[bytes, bytes], int] = defaultdict(int)
    where: dict[tuple[bytes, bytes], set[int]] = defaultdict(set)  # pair -> indexes of words holding it
    for wi, seq in enumerate(seqs):
        for pair in zip(seq, seq[1:]):
            counts[pair] += freqs[wi]
            where[pair].add(wi)
    heap = [key(p) for p in counts]
    heapq.heapify(heap)
    while len(tokens) < n_ranks:
        best = None
        while heap:  # lazy deletion: an entry is live only if its count is still current
            neg, _, pair = heapq.heappop(heap)
            if counts.get(pair, 0) > 0 and -neg == counts[pair]:
                best = pair
                break
        if best is None:
            raise ConfigError(f"n_ranks={n_ranks} is more than the built-in corpus can supply "
                              f"({len(tokens)} ranks)", "use a smaller n_ranks for the tiny tokenizer")
        merged = best[0] + best[1]
        if merged not in known:
            known.add(merged)
            tokens.append(merged)
        touched: set[tuple[bytes, bytes]] = set()
        for wi in sorted(where.pop(best)):
            seq, f = seqs[wi], freqs[wi]
            for pair in zip(seq, seq[1:]):  # remove this word's old pairs, merge, add the new ones
                counts[pair] -= f
                touched.add(pair)
            out: list[bytes] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == best[0] and seq[i + 1] == best[1]:
                    out.append(merged)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[wi] = out
            for pair in zip(out, out[1:]):
                counts[pair] += f
                where[pair].add(wi)
                touched.add(pair)
        counts.pop(best, None)
        for pair in touched:
            if counts.get(pair, 0) > 0:
                heapq.heappush(heap, key(pair))
    return tuple(tokens)


def special_token_names(n_ranks: int) -> dict[int, str]:
    """All 256 reserved ids → token string: the 17 named ones and ``<|reserved_token_{id}|>`` for the rest."""
    named = {n_ranks + off: tok for off, tok, _ in SPECIAL_TOKENS}
    return {i: named.get(i, f"<|reserved_token_{i}|>") for i in range(n_ranks, n_ranks + NUM_RESERVED)}


def tokenizer_config(n_ranks: int) -> dict[str, object]:
    """A ``tokenizer_config.json`` shaped like K2's (§3.1, §3.3), without ``chat_template`` (it ships as a file).

    ``auto_map`` is left out on purpose: it names Moonshot's remote-code module, which these files do not include.
    """
    decoder = {str(n_ranks + off): {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                                    "single_word": False, "special": special}
               for off, tok, special in SPECIAL_TOKENS}
    return {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": list(ADDITIONAL_SPECIAL_TOKENS),
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "extra_special_tokens": {},
        "model_max_length": DEFAULT_MODEL_MAX_LENGTH,
        "pad_token": PAD,
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": UNK,
    }


def load_ranks(path: str | Path) -> dict[bytes, int]:
    """Read a ``tiktoken.model`` file: lines of ``base64(token_bytes) rank``.

    Raises:
        CheckpointError: the file is missing or a line is malformed.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read {p}: {e.strerror}", "copy K2's tiktoken.model into the model "
                              "directory") from None
    ranks: dict[bytes, int] = {}
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            tok, rank = line.split()
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError:
            raise CheckpointError(f"{p}:{lineno} is not a 'base64 rank' line",
                                  "the file is corrupt; copy K2's tiktoken.model again") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise CheckpointError(f"{p}: ranks are not 0..{len(ranks) - 1} without gaps", "the file is corrupt")
    return ranks


def read_tokenizer_files(model_dir: str | Path) -> tuple[dict[bytes, int], dict[str, int], int]:
    """Read K2's tokenizer files: ``tiktoken.model`` and the special-token table of ``tokenizer_config.json``.

    The table follows K2's class: ids ``n_ranks … n_ranks+255`` take their names from ``added_tokens_decoder`` and
    are ``<|reserved_token_{id}|>`` otherwise.

    Args:
        model_dir: a model directory (real K2 or the tiny one ``write_tokenizer_files`` writes).
    Returns:
        (token bytes → rank, special token → id, ``model_max_length``).
    Raises:
        CheckpointError: a file is missing or malformed.
    """
    d = Path(model_dir)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory", "pass the model directory holding tiktoken.model")
    ranks = load_ranks(d / "tiktoken.model")
    cfg_path = d / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{cfg_path} is missing", "copy K2's tokenizer_config.json next to "
                              "tiktoken.model") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_path} is not valid JSON ({e.msg} at line {e.lineno})",
                              "fix or re-copy the file") from None
    n = len(ranks)
    names = special_token_names(n)
    for key, entry in (cfg.get("added_tokens_decoder") or {}).items():
        i = int(key)
        if not n <= i < n + NUM_RESERVED:
            raise CheckpointError(f"{cfg_path}: added token id {i} is outside the reserved range "
                                  f"{n}..{n + NUM_RESERVED - 1}",
                                  "tokenizer_config.json does not belong to this tiktoken.model")
        if entry.get("content"):
            names[i] = entry["content"]
    return ranks, {t: i for i, t in names.items()}, int(cfg.get("model_max_length", DEFAULT_MODEL_MAX_LENGTH))


def tiktoken_model_bytes(tokens: tuple[bytes, ...] | list[bytes]) -> bytes:
    """The ``tiktoken.model`` text for ``tokens`` in rank order: one ``base64(bytes) rank`` line each."""
    return "".join(f"{base64.b64encode(t).decode()} {r}\n" for r, t in enumerate(tokens)).encode()


def padded_ranks(n_ranks: int, seed: int = 0, learned: int = 1024) -> tuple[bytes, ...]:
    """``learned`` real BPE ranks followed by filler tokens up to ``n_ranks``: a full-size (163,584-rank) vocabulary
    for layout work (sparse K2 checkpoints). Fillers start with 0xF8, which never occurs in UTF-8, so encoding text
    never produces them."""
    base = learn_ranks(min(n_ranks, learned), seed)
    return base + tuple(b"\xf8" + i.to_bytes(3, "big") for i in range(n_ranks - len(base)))


def write_tokenizer_files(out_dir: str | Path, n_ranks: int = 1024, *, seed: int = 0,
                          hf_json: bool = False, pad: bool = False) -> list[Path]:
    """Write a tiny K2 tokenizer: ``tiktoken.model``, ``tokenizer_config.json`` and ``chat_template.jinja``.

    Args:
        out_dir: directory to write into (created if missing); each file is written atomically.
        n_ranks: BPE ranks; the vocabulary is ``n_ranks + 256`` with K2's special tokens at ``n_ranks + offset``.
        seed: tie-break seed for the BPE learner (see ``learn_ranks``).
        hf_json: also write the equivalent ``tokenizer.json`` (real K2 ships none; HF-only tools need it).
        pad: learn 1,024 ranks and pad with filler tokens up to ``n_ranks`` (see ``padded_ranks``).

    Returns:
        The paths written.

    Example:
        >>> write_tokenizer_files(tmp_path / "tok", n_ranks=1024)  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "tiktoken.model": tiktoken_model_bytes(padded_ranks(n_ranks, seed) if pad else learn_ranks(n_ranks, seed)),
        "tokenizer_config.json": (json.dumps(tokenizer_config(n_ranks), indent=2, ensure_ascii=False)
                                  + "\n").encode(),
        "chat_template.jinja": CHAT_TEMPLATE.encode(),
    }
    paths = [atomic_write(out / name, data) for name, data in files.items()]
    if hf_json:
        paths.append(write_hf_tokenizer_json(out, n_ranks, seed=seed))
    return paths


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte ↔ printable-character table used by byte-level BPE files (tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = list(bs)
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def hf_tokenizer_json(ranks: dict[bytes, int], specials: dict[int, tuple[str, bool]]) -> dict[str, object]:
    """A Hugging Face ``tokenizer.json`` equivalent to a tiktoken BPE (byte-level BPE + specials as added tokens).

    Merges are every split of each token into two tokens of the vocabulary, ordered by the rank of the merged
    token, so the HF BPE merges in tiktoken's order; ``ignore_merges`` makes a whole pre-token that is in the
    vocabulary one token, as tiktoken does.

    Args:
        ranks: token bytes → rank.
        specials: id → (token string, special flag), for all reserved ids.
    """
    b2u = _bytes_to_unicode()

    def s(t: bytes) -> str:
        return "".join(b2u[b] for b in t)

    merges: list[tuple[int, int, int, str]] = []
    for tok, rank in ranks.items():
        for i in range(1, len(tok)):
            left, right = tok[:i], tok[i:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], f"{s(left)} {s(right)}"))
    merges.sort()
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": sp} for i, (t, sp) in sorted(specials.items())]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT_STR_PORTABLE}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": {s(t): r for t, r in sorted(ranks.items(), key=lambda kv: kv[1])},
                  "merges": [m[3] for m in merges]},
    }


def write_hf_tokenizer_json(out_dir: str | Path, n_ranks: int = 1024, *, seed: int = 0,
                            model_dir: str | Path | None = None) -> Path:
    """Write ``tokenizer.json`` (HF ``tokenizers`` format) equivalent to the tiktoken tokenizer, for tools that
    read only HF tokenizers (aiperf counts tokens with it).

    Args:
        out_dir: directory to write ``tokenizer.json`` into.
        n_ranks, seed: the tiny tokenizer's arguments (as for ``write_tokenizer_files``).
        model_dir: convert this directory's ``tiktoken.model`` + ``tokenizer_config.json`` instead (e.g. real K2).

    Returns:
        The path written.
    """
    if model_dir is not None:
        ranks, named, _ = read_tokenizer_files(model_dir)
        flags = {t: sp for _, t, sp in SPECIAL_TOKENS}
        specials = {i: (t, flags.get(t, True)) for t, i in named.items()}
    else:
        ranks = {t: r for r, t in enumerate(learn_ranks(n_ranks, seed))}
        flags = {n_ranks + off: sp for off, _, sp in SPECIAL_TOKENS}
        specials = {i: (t, flags.get(i, True)) for i, t in special_token_names(n_ranks).items()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.json"
    return atomic_write(path, json.dumps(hf_tokenizer_json(ranks, specials), ensure_ascii=False).encode())
