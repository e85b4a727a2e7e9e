"""Presets, manifests and target files are data from strangers: they never run code.

Each attack here did damage before the safe loader (issue 16): the victim file must stay
as it was and the module named in the file must never be imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from omegaconf import OmegaConf

from diffmix.config import ConfigError, instantiate, load_preset
from diffmix.safe_yaml import DataError, parse_yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = "${oc.create:{_target_: shutil.copyfile, src: a.txt, dst: victim.txt}}"
TRUNCATE = "${oc.create:{_target_: builtins.open, file: victim.txt, mode: w}}"


def _scene(tmp_path: Path) -> Path:
    """A victim file, an attacker's file and a module that leaves a mark if imported."""
    (tmp_path / "victim.txt").write_text("victim\n")
    (tmp_path / "a.txt").write_text("attacker\n")
    (tmp_path / "evilmod.py").write_text("open('PWNED', 'w').write('imported')\nx = 1\n")
    sf.write(str(tmp_path / "song.wav"), [[0.1, -0.1]] * 4410, 44100)
    return tmp_path


def _gain(value: str) -> str:
    return f"_target_: diffmix.effects.gain.Gain\nsample_rate: 44100\ngain_db: '{value}'\n"


ATTACKS = {
    "copy.yaml": _gain(COPY),
    "truncate.yaml": _gain(TRUNCATE),
    "nested.yaml": (
        "_target_: diffmix.effects.base.Chain\nsample_rate: 44100\neffects:\n"
        "  - _target_: builtins.open\n    file: victim.txt\n    mode: w\n"
    ),
    "value.yaml": (
        "_target_: diffmix.effects.base.Chain\nsample_rate: 44100\n"
        f"effects: ['{COPY}']\n"
    ),
    "evil.yaml": "_target_: evilmod.x\nsample_rate: 44100\n",
    "zen.yaml": "_target_: this.s\n",
    "system.yaml": "_target_: os.system\ncommand: 'echo pwned > victim.txt'\n",
    "args.yaml": (
        "_target_: diffmix.effects.gain.Gain\n_args_: [44100]\n"
    ),
}


def test_cli_render_of_hostile_presets_runs_nothing(tmp_path):
    # One subprocess runs the CLI's main on every attack, with the working folder first on
    # sys.path (as ``python -m diffmix.cli`` and torchrun put it), then reports what it
    # imported. A fresh interpreter, so nothing imported by the test run itself counts.
    scene = _scene(tmp_path)
    for name, text in ATTACKS.items():
        (scene / name).write_text(text)
    script = (
        "import sys\n"
        "sys.path.insert(0, '')\n"
        "from diffmix.cli import main\n"
        f"codes = [main(['render', f'preset={{p}}', 'input=song.wav', 'out=o']) for p in {list(ATTACKS)!r}]\n"
        "print(codes, 'evilmod' in sys.modules, 'this' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], cwd=scene, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.stdout.splitlines()[-1] == f"{[2] * len(ATTACKS)} False False", out.stderr
    errors = out.stderr.strip().splitlines()
    assert len(errors) == len(ATTACKS), out.stderr
    for name, line in zip(ATTACKS, errors, strict=True):
        assert line.startswith(f"diffmix render: error: preset {name}: "), line
    assert "Beautiful is better than ugly" not in out.stdout + out.stderr
    assert (scene / "victim.txt").read_text() == "victim\n"
    assert not (scene / "PWNED").exists() and not (scene / "o").exists()


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_load_preset_of_hostile_file_refuses_before_acting(tmp_path, monkeypatch, name):
    scene = _scene(tmp_path)
    monkeypatch.chdir(scene)
    monkeypatch.syspath_prepend(str(scene))
    (scene / name).write_text(ATTACKS[name])
    before = set(sys.modules)
    with pytest.raises(ConfigError, match=rf"^preset {name}: "):
        load_preset(name)
    assert (scene / "victim.txt").read_text() == "victim\n"
    assert not (scene / "PWNED").exists()
    assert not {"evilmod", "this"} & (set(sys.modules) - before)


def test_job_config_interpolation_cannot_build_an_untrusted_target(tmp_path, monkeypatch):
    # Job configs keep Hydra, but ``${oc.create:...}`` is resolved before the check now.
    scene = _scene(tmp_path)
    monkeypatch.chdir(scene)
    monkeypatch.syspath_prepend(str(scene))
    cfg = OmegaConf.create({"node": {"_target_": "diffmix.effects.gain.Gain",
                                     "sample_rate": 44100, "gain_db": COPY}})
    with pytest.raises(ConfigError, match="shutil.copyfile' is not allowed"):
        instantiate(cfg.node)
    with pytest.raises(ConfigError, match="'evilmod.x' is not allowed"):
        instantiate({"_target_": "evilmod.x"})
    with pytest.raises(ConfigError, match="would be read as an interpolation"):
        instantiate(OmegaConf.create({"_target_": "diffmix.effects.gain.Gain",
                                      "sample_rate": 44100, "gain_db": "\\" + COPY}))
    assert (scene / "victim.txt").read_text() == "victim\n"
    assert not (scene / "PWNED").exists() and "evilmod" not in sys.modules


def test_yaml_bomb_is_refused_at_once(tmp_path):
    # Nine levels of anchors, ten aliases each: 10^9 leaves if expanded (issue 16: 57 s and
    # all the memory). Refused at the first alias, before anything is expanded.
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.thread_time()  # this thread's CPU time: a loaded machine's wall time is no measure
    with pytest.raises(ConfigError, match=r"bomb.yaml: YAML aliases \(\*a0\) are not allowed"):
        load_preset(bomb)
    assert time.thread_time() - t0 < 1.0


def test_deep_nesting_and_size_are_capped(tmp_path):
    with pytest.raises(DataError, match="nested deeper than 32 levels"):
        parse_yaml("[" * 5000 + "]" * 5000, "deep")
    big = tmp_path / "big.yaml"
    with big.open("wb") as fh:
        fh.truncate(9 << 20)
    with pytest.raises(ConfigError, match=r"big.yaml: 9437184 bytes, more than the 8388608"):
        load_preset(big)


@pytest.mark.parametrize("rate", [2_000_000, 4.41e9, 0, 7999, 44100.5, "44100", True])
def test_preset_sample_rate_outside_supported_rates_is_refused_before_building(rate):
    node = {"_target_": "diffmix.effects.base.Chain", "sample_rate": 44100,
            "effects": [{"_target_": "diffmix.effects.reverb.Reverb", "sample_rate": rate}]}
    with pytest.raises(ConfigError, match=(
        r"^preset: effects\[0\]: sample_rate=.* is not a supported rate "
        r"\(an integer from 8000 to 192000 Hz\)$"
    )):
        load_preset(node)


def test_preset_counts_are_capped():
    node = {"_target_": "diffmix.console.Bus", "sample_rate": 44100, "effects": {},
            "items": 10**9}
    with pytest.raises(ConfigError, match=r"items=1000000000 must be an integer from 1 to 1024"):
        load_preset(node)


def test_load_preset_on_folder_int_list_and_binary(tmp_path):
    with pytest.raises(ConfigError, match=rf"^preset {tmp_path}: is a folder, not a file$"):
        load_preset(tmp_path)
    with pytest.raises(ConfigError, match=r"^preset: expected a file path or a mapping, got int$"):
        load_preset(3)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^preset: expected a file path or a mapping, got list$"):
        load_preset([1, 2])  # type: ignore[arg-type]
    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    with pytest.raises(ConfigError, match=rf"^preset {binary}: not UTF-8 text \(byte 0\)$"):
        load_preset(binary)


# --- paths taken from data stay under out= -----------------------------------------------


@pytest.mark.parametrize("bad_id", ["../../../x", "/some/where", "/", "..", ".", "a/b", "a\\b",
                                    ".hidden", "new\nline", "", "x" * 201])
def test_manifest_ids_that_would_escape_are_refused_in_one_line(tmp_path, bad_id):
    import json

    from diffmix.batch import read_manifest

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "ok", "input": "a.wav"}) + "\n"
                        + json.dumps({"id": bad_id, "input": "b.wav"}) + "\n")
    if bad_id == "":  # an empty id falls back to the input's stem, which is fine
        assert [it.id for it in read_manifest(manifest)] == ["ok", "b"]
        return
    with pytest.raises(ValueError, match=r"^manifest .*m.jsonl: row 2: id .* must name one folder") as info:
        read_manifest(manifest)
    assert "\n" not in str(info.value)


def test_clean_partials_never_leaves_its_folder(tmp_path):
    from diffmix.batch import clean_partials

    out, outside = tmp_path / "out", tmp_path / "elsewhere"
    (out / "items" / "a").mkdir(parents=True)
    outside.mkdir()
    stray = outside / ".x.abc.partial.wav"
    stray.write_text("not ours")
    ours = out / "items" / "a" / ".a_master.q1.partial.wav"
    ours.write_text("torn")
    (out / "items" / "a" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="is outside"):
        clean_partials(out / "items" / ".." / ".." / "elsewhere", recursive=True, within=out)
    with pytest.raises(ValueError, match="is outside"):
        clean_partials("/", recursive=True, within=out)
    assert clean_partials(out / "items" / "a", recursive=True, within=out) == [ours]
    assert stray.exists() and not ours.exists()


@pytest.mark.parametrize("name", ["../../../etc/passwd", "/etc/hostname", "spotify.yaml", "tidal"])
def test_manifest_target_names_a_spec_never_a_file(name):
    from hydra import compose, initialize_config_dir

    from diffmix.batch import Item
    from diffmix.cli import config_dir
    from diffmix.jobs.batch import item_target

    with initialize_config_dir(str(config_dir()), version_base="1.3"):
        cfg = compose("batch", overrides=["manifest=m.csv"])  # the named specs come through Hydra
    with pytest.raises(ValueError, match=rf"^x: unknown target '{name}'; choose one of \["):
        item_target(cfg, Item("x", "x.wav", {"target": name}))
    assert item_target(cfg, Item("x", "x.wav", {"target": "amazon"}))["true_peak_db"] == -2.0


def test_binary_manifest_names_the_file(tmp_path):
    from diffmix.batch import read_manifest

    for suffix in (".csv", ".jsonl"):
        manifest = tmp_path / f"m{suffix}"
        manifest.write_bytes(b"input\n\xff\xfe\x00garbage")
        with pytest.raises(ValueError, match=rf"^manifest {manifest}: not UTF-8 text \(byte 6\)$"):
            read_manifest(manifest)
