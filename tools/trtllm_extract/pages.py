"""TensorRT-LLM's published documentation pages as extraction inputs.

Each release's documentation (the ``gh-pages`` branch of NVIDIA/TensorRT-LLM, one folder per release) carries two
pages built from that release's own code: ``_modules/tensorrt_llm/llmapi/llm_args.html`` (Sphinx *viewcode*: the
module's source, syntax-highlighted) and ``commands/trtllm-serve/trtllm-serve.html`` (*sphinx-click*: every option of
the ``trtllm-serve`` click commands). ``viewcode_source`` recovers the Python text from the first;
``click_options`` reads the options from the second.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any


class _Viewcode(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0  # inside <pre> of the highlight block
        self.skip = 0  # inside an <a class="viewcode-back"> ([docs] link)
        self.out: list[str] = []
        self.done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "pre" and not self.done:
            self.depth += 1
        elif tag == "a" and "viewcode-back" in (a.get("class") or ""):
            self.skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre" and self.depth:
            self.depth -= 1
            self.done = self.depth == 0
        elif tag == "a" and self.skip:
            self.skip -= 1

    def handle_data(self, data: str) -> None:
        if self.depth and not self.skip:
            self.out.append(data)


def viewcode_source(page: str) -> str:
    """The Python source shown on a Sphinx viewcode page (the ``[docs]`` back-links removed).

    Example: ``viewcode_source(Path("llm_args.html").read_text())`` → the text of ``llm_args.py``.
    """
    p = _Viewcode()
    p.feed(page)
    text = "".join(p.out)
    # viewcode puts each [docs] link on a line of its own before a def/class; an emptied line stays behind
    return re.sub(r"\n[ \t]*\n(?=[ \t]*(?:@|def |class |async def ))", "\n\n", text)


_OPT = re.compile(r'<dt class="sig sig-object std" id="([^"]+)">(.*?)</dt>\s*<dd>(.*?)</dd>\s*(?=<dt class="sig|</dl>)',
                  re.S)
_TAGS = re.compile(r"<[^>]+>")
_HEADERLINK = re.compile(r'<a class="headerlink"[^>]*>.*?</a>', re.S)


def _text(fragment: str) -> str:
    return html.unescape(_TAGS.sub("", _HEADERLINK.sub("", fragment))).strip()


def _command(anchor: str, option: str) -> str:
    """The command part of a sphinx-click anchor (``cmdoption-trtllm-serve-serve-tp_size`` → ``…-serve-serve``)."""
    bare = option.lstrip("-")
    for spelling in (bare, bare.replace("_", "-")):
        if anchor.endswith("-" + spelling):
            return anchor[: -len(spelling) - 1]
    return anchor


def click_options(page: str) -> dict[str, Any]:
    """``{command: {option: {"aliases", "default", "choices", "flag", "deprecated"}}}`` from a sphinx-click page.

    The option's first spelling is the key; further ``--a, --b`` spellings are its aliases (the same facts
    ``cli_source.click_options_from_source`` reads from ``serve.py``).
    """
    out: dict[str, Any] = {}
    for anchor, sig, body in _OPT.findall(page):
        parts = [s.strip() for s in _text(sig).split(",")]
        names = [p.split()[0] for p in parts if p.startswith("-")]
        if not names:
            continue
        metavar = next((p.split(None, 1)[1] for p in parts if len(p.split(None, 1)) == 2), None)
        command = _command(anchor, names[0]).removeprefix("cmdoption-")
        body_text = _text(body)
        default = re.search(r"Default:\s*\n?\s*(.+)", body_text)
        choices = re.search(r"Options:\s*\n?\s*(.+)", body_text)
        first = body_text.split("\n")[0] if body_text else ""
        out.setdefault(command, {})[names[0]] = {
            "aliases": names[1:], "flag": metavar is None,
            "default": default.group(1).strip() if default else (False if metavar is None else None),
            "choices": [c.strip() for c in choices.group(1).split("|")] if choices else None,
            "deprecated": "deprecat" in first.lower()}
    return out
