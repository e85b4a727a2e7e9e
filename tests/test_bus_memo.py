"""diffmix.bus_memo: a bus keeps its renders of one input, and they equal fresh ones."""

from __future__ import annotations

import torch

from diffmix.bus_memo import remember_prefixes
from diffmix.console import Bus
from diffmix.effects import Compressor, Gain, HighPass, ParametricEQ, Width
from tests.seeds import drawn_seed


def make_bus(items: int = 3) -> Bus:
    return Bus(44100, {
        "input": Gain(44100),
        "hpf": HighPass(44100, freq_hz=40.0, mode="fft"),
        "eq": ParametricEQ(44100, bands=["low_shelf", "peak"], freq_hz=[150.0, 2000.0], mode="fft"),
        "comp": Compressor(44100, threshold_db=-20.0, ratio=3.0),
        "width": Width(44100),
    }, items=items)


def fresh(bus: Bus, x: torch.Tensor, **kw) -> torch.Tensor:
    with torch.no_grad():
        return bus(x, **kw)


def test_kept_renders_equal_fresh_ones_through_value_changes():
    seed = drawn_seed(2**31)
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    bus = make_bus()
    x = torch.randn(3, 2, 30000, generator=g) * 0.2
    changes = [
        {},
        {"comp.ratio": torch.rand(3, generator=g, dtype=torch.float64) * 4 + 1},
        {"eq.gain_db": torch.randn(3, 2, generator=g, dtype=torch.float64) * 4},
        {},
        {"input.gain_db": torch.randn(3, generator=g, dtype=torch.float64) * 3},
        {"width.width": torch.rand(3, generator=g, dtype=torch.float64) * 1.5},
    ]
    with remember_prefixes(bus):
        for change in changes:
            bus.load_values(change)
            with torch.no_grad():
                got = bus(x[..., :], until="width")
                whole = bus(x)
            bus._memo, memo = None, bus._memo
            assert torch.equal(got, fresh(bus, x, until="width"))
            assert torch.equal(whole, fresh(bus, x))
            bus._memo = memo
    assert bus._memo is None


def test_same_values_give_the_kept_tensor_and_a_change_in_place_is_seen():
    bus = make_bus(2)
    x = torch.randn(2, 2, 20000) * 0.2
    with remember_prefixes(bus), torch.no_grad():
        a = bus(x, until="width")
        b = bus(x[:, :, :], until="width")  # another view of the same input
        assert b is a
        want = a.clone()
        a.mul_(0.0)  # a caller's in-place change: not served again
        c = bus(x, until="width")
        assert c is not a and torch.equal(c, want)
        x.add_(0.1)  # the input changed in place: a new render
        d = bus(x, until="width")
    assert not torch.equal(d, want)
    assert torch.equal(d, fresh(bus, x, until="width"))


def test_no_memo_with_a_gradient_or_from_a_later_effect():
    bus = make_bus(2)
    x = torch.randn(2, 2, 20000) * 0.2
    with remember_prefixes(bus):
        y1, y2 = bus(x), bus(x)
        assert y1.requires_grad and y1 is not y2
        with torch.no_grad():
            pre = bus(x, until="comp")
            assert bus(pre, start="comp") is not bus(pre, start="comp")


def test_master_keeps_only_the_strips_kept_outputs_and_the_split_master_is_the_same():
    from diffmix.console import Console
    from diffmix.effects import Pan
    from diffmix.mixing.wiring import _keyed_master, _keyed_master_fixed

    seed = drawn_seed(2**31)
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    sr = 44100
    console = Console(sr, 3, strip={
        "input": Gain(sr), "eq": ParametricEQ(sr, bands=["peak"], freq_hz=[800.0], gain_db=[3.0], mode="fft"),
        "comp": Compressor(sr, threshold_db=-25.0, ratio=4.0), "width": Width(sr), "pan": Pan(sr),
        "fader": Gain(sr),
    }, master={
        "eq": ParametricEQ(sr, bands=["low_shelf", "high_shelf"], freq_hz=[100.0, 8000.0],
                           gain_db=[2.0, -3.0], mode="fft"),
        "comp": Compressor(sr, threshold_db=-20.0, ratio=3.0), "gain": Gain(sr, gain_db=-1.0),
    })
    stems = torch.randn(1, 3, 2, 40000, generator=g) * 0.2
    other = torch.randn(1, 2, 40000, generator=g) * 0.2
    with torch.no_grad():
        y = console.strip(stems[0], until="width")
        key = console(stems)
        want = _keyed_master(console, torch.cat([y, other]), key)
        assert torch.equal(_keyed_master_fixed(console, y, other, key), want)
        with remember_prefixes(console.strip), remember_prefixes(console.master, inputs=1, of=console.strip):
            kept = console.strip(stems[0], until="width")
            assert torch.equal(kept, y)
            first = console.master(kept, until="comp")
            assert console.master(kept, until="comp") is first  # a kept strip output: kept
            assert console.master(other, until="comp") is not console.master(other, until="comp")
            assert torch.equal(_keyed_master_fixed(console, kept, other, key), want)
            assert torch.equal(_keyed_master_fixed(console, kept, other, key), want)


def test_renders_past_the_byte_budget_are_not_kept_and_still_right():
    bus = make_bus(2)
    x = torch.randn(2, 2, 20000) * 0.2
    one = 2 * 2 * 20000 * 4  # bytes of one output
    with remember_prefixes(bus, max_bytes=2 * one), torch.no_grad():
        a = bus(x, until="width")  # gain and high-pass kept, the EQ and compressor not
        assert bus._memo._bytes() == 2 * one
        b = bus(x, until="width")
        assert b is not a and torch.equal(a, b)
        assert bus(x, until="eq") is bus(x, until="eq")  # the kept high-pass output
        y = torch.randn(2, 2, 20000) * 0.2
        c = bus(y, until="width")  # another input: the first one's outputs make room
        assert torch.equal(c, fresh(bus, y, until="width")) and bus._memo._bytes() <= 2 * one


def test_inputs_of_other_lengths_take_turns():
    bus = make_bus(2)
    x = torch.randn(2, 2, 30000) * 0.2
    with remember_prefixes(bus, inputs=2), torch.no_grad():
        a = bus(x, until="width")
        parts = [bus(x[..., s : s + 10000], until="width") for s in (0, 10000, 20000)]
        assert torch.equal(torch.cat(parts, -1), torch.cat([fresh(bus, x[..., s : s + 10000], until="width")
                                                            for s in (0, 10000, 20000)], -1))
        bus(x[..., 20000:30000], until="width")  # the newer of the two kept inputs: its entry again
        b = bus(x, until="width")  # dropped (two inputs at most): rendered again, the same
        assert torch.equal(a, b)
