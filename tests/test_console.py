"""The console: routing, batching across tracks, presets, parameter selection."""

from __future__ import annotations

import pytest
import torch
from contract import noise

from diffmix.config import load_preset
from diffmix.console import Bus, Console, as_stereo_stems
from diffmix.effects import Gain, Pan, Width
from diffmix.functional.gain import db_to_amp, pan

SR = 44100


def make_console(tracks=3, **kw):
    return Console(
        SR, tracks,
        strip={"input": Gain(SR), "pan": Pan(SR), "width": Width(SR), "fader": Gain(SR)},
        master={"gain": Gain(SR)},
        **kw,
    ).double()


def test_console_equals_per_track_reference():
    console = make_console()
    gains = torch.tensor([-6.0, 0.0, 3.0], dtype=torch.float64)
    pans = torch.tensor([-0.5, 0.0, 0.9], dtype=torch.float64)
    console.load_values({"strip.fader.gain_db": gains, "strip.pan.pan": pans, "master.gain.gain_db": [-2.0]})
    stems = noise(3, 2, 512).unsqueeze(0)
    expected = sum(
        pan(stems[:, i], SR, pan=float(pans[i])) * db_to_amp(gains[i]) for i in range(3)
    ) * db_to_amp(torch.tensor(-2.0, dtype=torch.float64))
    torch.testing.assert_close(console(stems), expected, rtol=1e-12, atol=1e-12)


def test_groups_and_sends_route_as_documented():
    console = make_console(
        groups={"drums": ["kick", "snare"]},
        group_strip={"bus": Gain(SR, gain_db=-6.0)},
        sends={"fx": Gain(SR, gain_db=0.0)},
        track_names=["kick", "snare", "bass"],
    )
    console.load_values({"sends.fx.send_db": [-80.0, -80.0, 0.0], "sends.fx.return_db": [-6.0]})
    stems = noise(3, 2, 256).unsqueeze(0)
    tracks = [pan(stems[:, i], SR, pan=0.0) for i in range(3)]
    half = db_to_amp(torch.tensor(-6.0, dtype=torch.float64))
    leak = db_to_amp(torch.tensor(-80.0, dtype=torch.float64))
    expected = (
        (tracks[0] + tracks[1]) * half
        + tracks[2]
        + half * (tracks[2] + leak * (tracks[0] + tracks[1]))
    )
    torch.testing.assert_close(console(stems), expected, rtol=1e-10, atol=1e-10)


def test_songs_batch_equals_songs_alone():
    console = make_console(songs=2)
    values = torch.tensor([-3.0, 1.0, 2.0, -9.0, 0.5, 4.0], dtype=torch.float64)
    console.load_values({"strip.fader.gain_db": values})
    stems = noise(6, 2, 256).view(2, 3, 2, 256)
    both = console(stems)
    for s in range(2):
        alone = make_console()
        alone.load_values({"strip.fader.gain_db": values[3 * s : 3 * s + 3]})
        torch.testing.assert_close(both[s : s + 1], alone(stems[s : s + 1]), rtol=1e-12, atol=1e-12)


def test_mono_stems_use_the_mono_pan_law():
    mono = noise(1, 1, 300)[0]
    stereo = noise(1, 2, 300, seed=1)[0]
    stems, flags = as_stereo_stems([mono, stereo])
    assert flags == [True, False]
    console = make_console(tracks=2, mono=flags)
    console.load_values({"strip.pan.pan": [1.0, 0.0]})
    out = console(stems.double())
    expected = pan(mono.unsqueeze(0).double(), SR, pan=1.0) + stereo.unsqueeze(0).double()
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_preset_round_trip_is_bit_exact(tmp_path):
    console = make_console(groups={"g": [0, 1]}, group_strip={"bus": Gain(SR)}, sends={"fx": Width(SR)})
    console.load_values({"strip.fader.gain_db": [-1.5, 2.25, 0.1], "sends.fx.send_db": [-20.0, -30.0, -40.0]})
    loaded = load_preset(console.preset()).double()
    stems = noise(3, 2, 256).unsqueeze(0)
    with torch.no_grad():
        assert torch.equal(console(stems), loaded(stems))


@pytest.mark.parametrize("offset", [7, -5])
@pytest.mark.parametrize("routed", [False, True])  # the one-product path, or sends
def test_offset_moves_the_mix_on_its_timeline_and_survives_the_preset(offset, routed):
    extra = {"sends": {"fx": Width(SR)}} if routed else {}
    plain, moved = make_console(**extra), make_console(offset_samples=offset, **extra)
    for c in (plain, moved):
        c.load_values({"strip.fader.gain_db": [-1.0, 2.0, 0.5], "strip.pan.pan": [-0.4, 0.1, 0.7]})
    stems = noise(3, 2, 256).unsqueeze(0)
    with torch.no_grad():
        ref, out = plain(stems), moved(stems)
        again = load_preset(moved.preset()).double()(stems)
    k = abs(offset)
    if offset > 0:  # later: silence first, the end cut
        assert torch.equal(out[..., :k], torch.zeros_like(out[..., :k]))
        torch.testing.assert_close(out[..., k:], ref[..., :-k], rtol=0, atol=1e-12)
    else:  # earlier: the start cut, silence last
        assert torch.equal(out[..., -k:], torch.zeros_like(out[..., -k:]))
        torch.testing.assert_close(out[..., :-k], ref[..., k:], rtol=0, atol=1e-12)
    assert moved.preset()["offset_samples"] == offset and torch.equal(again, out)


def test_select_turns_gradients_on_only_for_matching_parameters():
    console = make_console()
    chosen = console.select(["strip.fader.*", "master.*"])
    assert len(chosen) == 2
    stems = noise(3, 2, 128).unsqueeze(0)
    console(stems).square().sum().backward()
    values = console.named_values()
    assert values["strip.fader.gain_db"].raw.grad is not None
    assert values["strip.pan.pan"].raw.grad is None


def test_a_bus_runs_any_range_of_its_effects_as_the_effects_by_hand():
    # Bus.forward(start=, until=) is how the refine stages render a strip from one stage on
    # (they had each looped over the effects by hand): the same modules in the same order.
    console = make_console()
    console.load_values({"strip.input.gain_db": [1.0, -2.0, 0.5], "strip.pan.pan": [-0.4, 0.1, 0.7],
                         "strip.width.width": [0.5, 1.5, 1.0], "strip.fader.gain_db": [-3.0, 2.0, 0.0]})
    bus, names = console.strip, list(console.strip.effects)
    x = noise(3, 2, 256)
    for i, start in enumerate([None, *names]):
        for until in [None, *names]:
            j = names.index(until) if until is not None else len(names)
            want = x
            for name in names[max(0, i - 1) if start is not None else 0 : j]:
                want = bus.effects[name](want)
            with torch.no_grad():
                assert torch.equal(bus(x, until=until, start=start), want.detach()), (start, until)
    with pytest.raises(ValueError, match="Bus: no effect named 'nope'"):
        bus(x, start="nope")


def test_amount_scales_the_change():
    bus = Bus(SR, {"gain": Gain(SR, gain_db=0.0)}, items=1)
    bus.load_values({"gain.gain_db": [-10.0]})
    bus.set_amount("gain", 0.3)
    assert float(bus.named_values()["gain.gain_db"].value()) == pytest.approx(-3.0, abs=1e-5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups": {"a": [0], "b": [0]}}, "more than one group"),
        ({"groups": {"a": ["nope"]}}, "unknown track 'nope'"),
        ({"groups": {"a": [7]}}, "out of range"),
        ({"track_names": ["a"]}, "1 track names for 3 tracks"),
        ({"offset_samples": 2.5}, "offset_samples must be a whole number"),
    ],
)
def test_bad_console_configs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_console(**kwargs)


def test_wrong_stem_shapes_are_errors():
    console = make_console()
    with pytest.raises(ValueError, match="built for 1 song"):
        console(torch.zeros(1, 2, 2, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(batch, tracks, channels, time\)"):
        console(torch.zeros(3, 2, 64, dtype=torch.float64))


def test_prior_is_zero_at_start_and_grows_with_the_change():
    console = make_console()
    console.select(["strip.fader.*"])
    initial = {k: p.exact() for k, p in console.named_values().items()}
    assert float(console.prior(initial).detach()) == 0.0
    console.load_values({"strip.fader.gain_db": [10.4, 0.0, 0.0]})
    console.select(["strip.fader.*"])
    assert float(console.prior(initial).detach()) == pytest.approx((10.4 / 104.0) ** 2 / 3, rel=1e-6)


def test_shared_prior_function_matches_console_prior():
    from diffmix.console import prior

    console = make_console()
    console.select(["strip.pan.*"])
    initial = {k: p.exact() for k, p in console.named_values().items()}
    console.load_values({"strip.pan.pan": [0.5, 0.0, -0.5]})
    console.select(["strip.pan.*"])
    got = float(prior(console.named_values(), initial).detach())
    assert got == pytest.approx((0.25**2 * 2) / 3, rel=1e-6)


@pytest.mark.parametrize("mono", [None, [True, False, False]])
def test_folded_pan_width_fader_equal_the_effects_in_series(mono):
    # The console folds the strip's trailing channel matrices into the track sum; the
    # mix and every gradient must equal running the effects one by one and summing.
    console = make_console(mono=mono)
    console.load_values({
        "strip.input.gain_db": torch.tensor([-3.0, 1.0, 4.0], dtype=torch.float64),
        "strip.pan.pan": torch.tensor([-0.7, 0.2, 1.0], dtype=torch.float64),
        "strip.width.width": torch.tensor([0.0, 1.6, 3.0], dtype=torch.float64),
        "strip.fader.gain_db": torch.tensor([-6.0, 0.0, 2.5], dtype=torch.float64),
    })
    stems = noise(3, 2, 256).unsqueeze(0)
    if mono:
        stems[:, 0, 1] = stems[:, 0, 0]
    params = console.select(["strip.*"])
    folded = console(stems)
    grads = torch.autograd.grad(folded.square().sum(), params)
    tracks = stems[0]
    for fx in console.strip.effects.values():
        tracks = fx(tracks)
    serial = console.master(tracks.sum(0, keepdim=True))
    expected = torch.autograd.grad(serial.square().sum(), params)
    assert folded.abs().max() > 0.1
    torch.testing.assert_close(folded, serial, rtol=1e-12, atol=1e-12)
    for got, want in zip(grads, expected, strict=True):
        assert want.abs().max() > 0
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
