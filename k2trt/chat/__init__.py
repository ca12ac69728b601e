"""Kimi K2's chat front: tokenizer (tiktoken + K2's special tokens), chat-template renderers per family, tool-call
and reasoning parsers.

Owns every K2 control-token string. Imports no torch (it runs on login nodes and in the gateway); jinja2 is
imported only to check a model's own template.

- ``vocab``: special-token layout, ``PAT_STR``, the tokenizer files read (``load_ranks``, ``read_tokenizer_files``)
  and written (``write_tokenizer_files`` with ``CHAT_TEMPLATE``, ``write_hf_tokenizer_json``); imports no other
  chat module, the others import it.
- ``tokenizer``: ``K2Tokenizer`` (plain-text ``encode``, ``encode_with_specials``, ``IncrementalDecoder``).
- ``template``: ``render``, ``render_ids``, ``normalize_tool_call_ids``, ``render_with_jinja``, ``sort_tools``.
- ``toolcalls``: ``parse_tool_calls`` and the incremental ``ToolCallStream``.
- ``reasoning``: ``split_reasoning`` and the incremental ``ReasoningStream`` (``<think>`` … ``</think>``).
- ``tools_ts``: K2.5+'s TypeScript tool declaration (``declare_tools_ts``: what the tokenizer passes as
  ``tools_ts_str``).
- ``families``: the K2 chat families (K2-Instruct, K2-Thinking, K2.5, K2.6, K2.7-Code), their detection and sampling.
- ``thinking``: ``render``/``render_ids`` for every family, ``render_completion``, the thinking families' templates.
- ``check``: ``check_template`` behind ``k2trt chat check``.
"""

from __future__ import annotations

from k2trt.chat.reasoning import ReasoningDelta, ReasoningDone, ReasoningStream, split_reasoning
from k2trt.chat.template import (ChatFormatError, normalize_tool_call_ids, render, render_ids,
                                 render_with_jinja, sort_tools)
from k2trt.chat.tokenizer import IncrementalDecoder, K2Tokenizer
from k2trt.chat.toolcalls import (ContentDelta, StreamDone, ToolCall, ToolCallArgs, ToolCallEnd, ToolCallStart,
                                  ToolCallStream, parse_tool_calls)

__all__ = [
    "ChatFormatError", "ContentDelta", "IncrementalDecoder", "K2Tokenizer", "ReasoningDelta", "ReasoningDone",
    "ReasoningStream", "StreamDone", "ToolCall", "ToolCallArgs", "ToolCallEnd", "ToolCallStart", "ToolCallStream",
    "normalize_tool_call_ids", "parse_tool_calls", "render", "render_ids", "render_with_jinja", "sort_tools",
    "split_reasoning",
]
