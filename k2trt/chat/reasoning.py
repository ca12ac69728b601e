"""K2 reasoning parsing: one incremental parser that splits thinking-model output into reasoning and content.

Grammar (K2-Thinking, K2.5, K2.6, K2.7-Code; k2_family.md §2)::

    [content]<think>{reasoning}</think>{content}[<|tool_calls_section_begin|>…<|tool_calls_section_end|>]

``ReasoningStream.feed(delta)`` runs a two-state machine (reasoning ↔ content) over each delta once, with the
tool-call parser's design (``k2trt.chat.toolcalls``): only a suffix that could be the start of a marker (< 28
characters) is held back, so the work is linear in the output length and the result is the same for any split of
the text into deltas (a unit test splits every example at every position). ``split_reasoning(text)`` is
``feed(text)`` + ``finish()``. Content events are the tool-call parser's own ``ContentDelta``: the gateway feeds
them straight into a ``ToolCallStream``.

Decisions where vLLM, SGLang, TensorRT-LLM, Dynamo and llama.cpp disagree (the numbering of k2_family.md §2):

1. **Untagged output** is content. Whether the output starts inside reasoning is not guessed: the caller says so
   with ``opened=True`` when the prompt itself ended with ``<think>`` (K2.5/K2.6/K2.7-Code with thinking on).
   Guessing "reasoning" (vLLM, SGLang, Dynamo) would withhold every content delta of a model that answered
   without thinking until the end of the stream; a ``</think>`` that closes nothing is dropped (never leaked).
2. **Truncated inside reasoning** (``max_tokens`` hit before ``</think>``): the text is reasoning, content is
   ``""``; ``ReasoningDone.truncated`` says so. (TensorRT-LLM ``kimi_k25`` non-streaming alone returns it as
   content — a client would show half a thought as the answer.)
3. **Text before ``<think>``** is content, in place (Dynamo): nothing the model wrote is discarded
   (TensorRT-LLM ``kimi_k2``) or re-labelled as thought (vLLM, SGLang).
4. **``</think>`` after a tool section**: reasoning ends at the earliest marker (TensorRT-LLM, Dynamo, llama.cpp);
   the section and everything after it are content, and the late ``</think>`` is dropped. Splitting at
   ``</think>`` (vLLM, SGLang) swallows the calls into ``reasoning_content``, where no client looks for them.
5. **Markers that end reasoning**: ``</think>``, ``<|tool_calls_section_begin|>`` (and its singular spelling),
   and ``<|tool_call_begin|>`` (llama.cpp): a call written without its section wrapper would otherwise be lost
   inside reasoning; the tool-call parser accepts such a call. The tool marker itself goes to content.
6. **Whitespace** is kept byte for byte (vLLM's engine parser right-strips, Dynamo trims): reasoning + content
   is exactly the output without its think markers, so a client that sends ``reasoning_content`` back in the
   history reproduces the model's own tokens (prefix caching keeps working).
7. **Empty values** are ``""`` here; the HTTP layer decides the wire form (OpenAI: ``reasoning_content`` is
   ``null`` when there was no reasoning, as ``content`` is ``null`` for a tool-call-only answer).
8. **Several think blocks** (interleaved thinking): every block is reasoning (Dynamo); the blocks' texts are
   concatenated, and text between blocks is content. A ``<think>`` inside an open block is dropped.
9. **``<think>`` sharing a delta with text** (MTP / speculative decoding bundles): each delta is scanned whole,
   so nothing leaks (vLLM's standalone parser leaks the tag).
10. **Partial markers across deltas** are held back until the next delta decides them (TensorRT-LLM, Dynamo);
    a held prefix at the end of the output is released as text of the current state (SGLang leaks them early).
11. **Thinking off but the model writes ``<think>``** anyway: the block is still extracted (SGLang,
    TensorRT-LLM), so tags never reach ``content`` (vLLM leaves them there). ``thinking=False`` only forbids
    ``opened=True``.

Inside a tool-call section nothing is interpreted (``<think>`` in JSON arguments is argument text); a section end
outside one is passed on for the tool-call parser; a stray section end inside reasoning is dropped, so tool
markers never show up in ``reasoning_content`` (MoonshotAI/Kimi-K2 issue #89).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from k2trt.chat import vocab
from k2trt.chat.toolcalls import ContentDelta, _marker_at

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
"""The think markers (ids ``n_ranks + 22`` / ``+ 23`` in the thinking models' vocabulary, kimi_formats.md §3.3)."""

# marker -> kind: TO/TC think open/close, SB section begin (both spellings), SE section end, CB call begin
_MARKERS: dict[str, str] = {
    THINK_OPEN: "TO", THINK_CLOSE: "TC",
    vocab.SECTION_BEGIN: "SB", "<|tool_call_section_begin|>": "SB",
    vocab.SECTION_END: "SE", "<|tool_call_section_end|>": "SE",
    vocab.CALL_BEGIN: "CB",
}
_REASONING, _CONTENT = 0, 1


@dataclass(frozen=True)
class ReasoningDelta:
    """A piece of the model's reasoning (``reasoning_content``)."""
    text: str


@dataclass(frozen=True)
class ReasoningDone:
    """The end of the output, with the whole split."""
    reasoning: str
    content: str
    markers: int
    """Think markers the model wrote (``<think>``/``</think>``); each is one token of the completion."""
    truncated: bool
    """The output ended inside reasoning (no end marker followed)."""


Event = Union[ReasoningDelta, ContentDelta, ReasoningDone]


class ReasoningStream:
    """Incremental reasoning/content splitter (see the module docstring for the grammar and the decisions).

    Args:
        thinking: the request has thinking on (the default); ``False`` with ``opened=True`` is a contradiction.
        opened: the prompt already ended with ``<think>``, so the output starts inside reasoning.

    Example:
        >>> s = ReasoningStream(opened=True)
        >>> evs = s.feed("Let me think.</thi") + s.feed("nk>It is 4.") + s.finish()
        >>> [(type(e).__name__, getattr(e, "text", None)) for e in evs[:-1]]
        [('ReasoningDelta', 'Let me think.'), ('ContentDelta', 'It is 4.')]
    """

    def __init__(self, *, thinking: bool = True, opened: bool = False) -> None:
        if opened and not thinking:
            raise ValueError("opened=True means the prompt opened <think>, which contradicts thinking=False")
        self.thinking = thinking
        self._state = _REASONING if opened else _CONTENT
        self._in_section = False
        self._hold = ""
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._markers = 0
        self._out: list[Event] = []
        self._done = False

    @property
    def in_reasoning(self) -> bool:
        """Whether the text seen so far ends inside reasoning."""
        return self._state == _REASONING

    def feed(self, delta: str) -> list[Event]:
        """Parse the next piece of output; return the reasoning and content events it completes."""
        if self._done:
            raise RuntimeError("ReasoningStream.feed() after finish()")
        if not delta:
            return []
        buf = self._hold + delta if self._hold else delta
        self._hold = ""
        pos, n = 0, len(buf)
        while pos < n:
            i = buf.find("<", pos)
            marker = None
            while i != -1:
                if i + 1 < n and buf[i + 1] not in "|t/":  # fast path: no marker starts like this
                    i = buf.find("<", i + 1)
                    continue
                marker, partial = _marker_at(buf, i, _MARKERS)
                if marker or partial:
                    break
                i = buf.find("<", i + 1)
            if i == -1:
                self._text(buf[pos:])
                break
            if i > pos:
                self._text(buf[pos:i])
            if marker is None:  # a possible marker runs past the end of this delta: hold it back
                self._hold = buf[i:]
                break
            self._marker(_MARKERS[marker], marker)
            pos = i + len(marker)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[Event]:
        """End of output: release a held partial marker as text, return the last events ending with
        ``ReasoningDone``."""
        if self._done:
            raise RuntimeError("ReasoningStream.finish() called twice")
        if self._hold:
            held, self._hold = self._hold, ""
            self._text(held)
        self._done = True
        self._out.append(ReasoningDone("".join(self._reasoning), "".join(self._content), self._markers,
                                       self._state == _REASONING))
        out, self._out = self._out, []
        return out

    # --- scanning -----------------------------------------------------------------------------------------
    def _marker(self, kind: str, text: str) -> None:
        if self._state == _REASONING:
            if kind == "TC":
                self._markers += 1
                self._state = _CONTENT
            elif kind == "TO":  # the template opened the block and the model opened it again
                self._markers += 1
            elif kind in ("SB", "CB"):  # a tool call ends reasoning implicitly (decisions 4 and 5)
                self._state = _CONTENT
                self._in_section = True
                self._emit_content(text)
            # a stray section end inside reasoning is dropped
            return
        if self._in_section:
            if kind == "SE":
                self._in_section = False
            self._emit_content(text)  # think markers inside a section are argument text
        elif kind == "TO":
            self._markers += 1
            self._state = _REASONING
        elif kind == "TC":
            self._markers += 1  # closes nothing: dropped
        else:
            self._in_section = kind in ("SB", "CB")
            self._emit_content(text)

    def _text(self, t: str) -> None:
        if self._state == _REASONING:
            self._reasoning.append(t)
            last = self._out[-1] if self._out else None
            if isinstance(last, ReasoningDelta):
                self._out[-1] = ReasoningDelta(last.text + t)
            else:
                self._out.append(ReasoningDelta(t))
        else:
            self._emit_content(t)

    def _emit_content(self, t: str) -> None:
        self._content.append(t)
        last = self._out[-1] if self._out else None
        if isinstance(last, ContentDelta):
            self._out[-1] = ContentDelta(last.text + t)
        else:
            self._out.append(ContentDelta(t))


def split_reasoning(text: str, *, thinking: bool = True, opened: bool = False) -> tuple[str, str]:
    """Split a complete thinking-model output into ``(reasoning, content)`` (the streaming parser in one piece).

    Args:
        text: the model output after the generation prompt (think and tool-call markers included).
        thinking: the request had thinking on.
        opened: the prompt ended with ``<think>`` (the output starts inside reasoning).

    Returns:
        ``(reasoning, content)``; content keeps the tool-call markers for ``parse_tool_calls``. Both are ``""``
        when empty.

    Example:
        >>> split_reasoning("<think>2+2=4</think>The answer is 4.")
        ('2+2=4', 'The answer is 4.')
        >>> split_reasoning("cut off mid-thought", opened=True)
        ('cut off mid-thought', '')
    """
    s = ReasoningStream(thinking=thinking, opened=opened)
    s.feed(text)
    done = s.finish()[-1]
    assert isinstance(done, ReasoningDone)
    return done.reasoning, done.content
