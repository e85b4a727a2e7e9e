"""Presets and safe instantiation."""

from __future__ import annotations

import pytest
import torch
from contract import noise

from diffmix.config import ConfigError, instantiate, load_preset, save_preset
from diffmix.effects import Chain, Gain, Pan, Parallel, Width


def test_chain_preset_round_trips_bit_exactly(tmp_path):
    chain = Chain(
        48000,
        [Gain(48000, gain_db=-3.3), Parallel(48000, [Pan(48000, pan=0.21), Width(48000)], mix=0.4)],
        mix=0.9,
    )
    x = noise(2, 2, 300, dtype=torch.float32)
    save_preset(chain, tmp_path / "chain.yaml")
    loaded = load_preset(tmp_path / "chain.yaml")
    assert isinstance(loaded, Chain) and isinstance(loaded[1], Parallel)
    with torch.no_grad():
        assert torch.equal(chain(x), loaded(x))
        assert torch.equal(chain.double()(x.double()), loaded.double()(x.double()))


def test_preset_with_unknown_parameter_names_effect_and_key():
    node = {"_target_": "diffmix.effects.gain.Gain", "sample_rate": 44100, "gian_db": 1.0}
    with pytest.raises(ConfigError, match=r"Gain has no parameter\(s\) \['gian_db'\]"):
        load_preset(node)


def test_preset_with_value_out_of_range_names_the_range():
    node = {"_target_": "diffmix.effects.gain.Pan", "sample_rate": 44100, "pan": 3.0}
    with pytest.raises(ConfigError, match=r"^preset: Pan: pan=3 is outside its range \[-1, 1\]$"):
        load_preset(node)


@pytest.mark.parametrize(
    "target", ["os.system", "subprocess.run", "builtins.eval", "diffmix.config.yaml.load"]
)
def test_untrusted_targets_are_refused(target):
    with pytest.raises(ConfigError, match="is not allowed"):
        instantiate({"_target_": target, "x": 1})


def test_nested_untrusted_target_is_refused():
    node = {
        "_target_": "diffmix.effects.base.Chain",
        "sample_rate": 44100,
        "effects": [{"_target_": "os.system", "command": "echo pwned"}],
    }
    with pytest.raises(ConfigError, match=r"config.effects\[0\]: _target_ 'os.system'"):
        instantiate(node)


def test_torch_optimisers_are_allowed():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = instantiate({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.1})(params)
    assert isinstance(opt, torch.optim.Adam)


def test_missing_and_corrupt_presets(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_preset(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_preset(bad)
