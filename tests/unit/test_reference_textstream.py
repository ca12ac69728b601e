"""The reference server's text side with the tiny K2's real tokenizer: UTF-8-safe deltas and stop strings."""

from __future__ import annotations

from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.reference.serve import TextStream


def test_deltas_never_split_a_character(tiny_ckpt) -> None:
    tok = K2Tokenizer.from_dir(tiny_ckpt)
    text = "héllo wörld — 日本語のテキスト 🙂"
    ids = tok.encode(text)
    split = [i for i in ids if not _is_utf8(tok.id_to_piece(i))]
    assert split, "no token ends inside a character: the test cannot fail"
    ts = TextStream(tok, [], skip_special_tokens=False)
    deltas = [ts.feed(i)[0] for i in ids] + [ts.finish()]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_stop_string_is_cut_and_its_prefix_held_back(tiny_ckpt) -> None:
    tok = K2Tokenizer.from_dir(tiny_ckpt)
    ids = tok.encode("hello world, hello moon")
    ts = TextStream(tok, ["lo m", "zzz"], skip_special_tokens=False)
    out, stopped = [], False
    for i in ids:
        d, stopped = ts.feed(i)
        out.append(d)
        # "lo" of "hello moon" is held back until " m" shows it is the stop string (emitting it would be wrong)
        assert "hello world, hel".startswith("".join(out))
        if stopped:
            break
    assert stopped and ts.stop_reason == "lo m"
    assert "".join(out) + ts.finish() == "hello world, hel"


def test_skip_special_tokens(tiny_ckpt) -> None:
    tok = K2Tokenizer.from_dir(tiny_ckpt)
    ids = tok.encode("a") + [tok.im_end_id] + tok.encode("b")
    kept = TextStream(tok, [], skip_special_tokens=False)
    dropped = TextStream(tok, [], skip_special_tokens=True)
    assert "".join(kept.feed(i)[0] for i in ids) == "a<|im_end|>b"
    assert "".join(dropped.feed(i)[0] for i in ids) == "ab"


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False
