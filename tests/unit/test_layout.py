"""k2trt.layout: the one Layout every package uses (recipes, planner, bundle argv, reference engine)."""

from __future__ import annotations

import pytest

from k2trt.errors import PlanError
from k2trt.layout import Layout
from k2trt.spec import preset


def test_layout_syntax() -> None:
    assert Layout.parse("tp16ep8") == Layout(16, 8)
    assert Layout.parse("TP16EP16ADP") == Layout(16, 16, adp=True)
    assert Layout.parse("tp4,ep2,adp") == Layout(4, 2, adp=True)
    assert Layout.parse("tp8pp2") == Layout(8, pp=2)
    assert Layout.parse("tp16mtp2") == Layout(16, None, 2)
    assert str(Layout.parse("tp16ep16adp")) == "tp16ep16adp" and str(Layout.parse("tp8")) == "tp8"
    for bad in ("ep8", "tp16ep", "tp16x", "tp0", "tp2tp4", ""):
        with pytest.raises(PlanError):
            Layout.parse(bad)


@pytest.mark.parametrize("text", ["tp2", "tp4,ep2", "tp4,ep4,adp", "tp8,ep4", "tp16ep8", "tp8pp2", "tp16mtp2adp"])
def test_every_spelling_round_trips(text: str) -> None:
    """Both spellings users write (the reference check's ``tp4,ep2,adp`` and the planner's ``tp4ep2adp``) parse to
    the same Layout, and what a Layout prints parses back to it (a canonical form: explicit moe_tp becomes ep)."""
    def sizes(x: Layout) -> tuple[int, ...]:
        m = x.mapping()
        return (m.tp, m.pp, m.ep, m.mtp, m.enable_attention_dp)

    lay = Layout.parse(text)
    for sep in ("", ","):
        assert sizes(Layout.parse(lay.text(sep))) == sizes(lay)
    assert Layout.parse("tp4,ep2,adp").text(",") == "tp4,ep2,adp" and Layout.parse("tp4ep2").name == "tp4ep2"


def test_unset_moe_sizes_resolve_as_tensorrt_llm_does() -> None:
    """The reference engine's old default (ep 1, moe_tp = tp) is TensorRT-LLM's resolution of an unset ep."""
    m = Layout.parse("tp4").mapping(spec=preset("tiny"))
    assert (m.ep, m.mtp, m.world_size) == (1, 4, 4)
    assert Layout.parse("tp8pp2").world_size == 16
    with pytest.raises(PlanError, match="not divisible"):
        Layout(4, 3).mapping()
    assert str(Layout(4, 3)) == "tp4ep3mtpNonepp1"  # an unresolvable layout still names itself in errors
