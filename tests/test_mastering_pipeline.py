"""The mastering package: its layering, one pipeline for in-memory and streamed masters,
the chunked gated meter, and the configs composed from the mastering group."""

from __future__ import annotations

import ast
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from jobs_helpers import ROOT, music, write

from diffmix.functional.loudness import GatedMeter, integrated_loudness, loudness_range, meter_unit
from tests.seeds import drawn_seed

PACKAGE = ROOT / "diffmix"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text(), str(path))


def _imports(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def test_the_config_stops_at_the_jobs():
    # Nothing under diffmix/ but cli.py and the jobs themselves imports diffmix.jobs; no
    # library module takes a Hydra config (no DictConfig in any signature) and only the
    # config bridge (config.py: safe instantiation) imports omegaconf or hydra.
    climbs, configs, hydra = [], [], []
    for name, tree in _modules():
        if name.startswith("jobs/") or name == "cli.py":
            continue
        imports = _imports(tree)
        climbs += [f"{name}: {i}" for i in imports if i == "diffmix.jobs" or i.startswith("diffmix.jobs.")]
        if name != "config.py":
            hydra += [f"{name}: {i}" for i in imports if i.split(".")[0] in ("omegaconf", "hydra")]
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs,
                        node.args.vararg, node.args.kwarg]
                notes = [a.annotation for a in args if a is not None and a.annotation is not None]
                if any("DictConfig" in ast.unparse(n) for n in notes):
                    configs.append(f"{name}: {node.name}")
    assert climbs == [], climbs
    assert configs == [], configs
    assert hydra == [], hydra


def test_the_rule_sees_a_climb():
    # The walk above must catch what it forbids.
    tree = ast.parse("from diffmix.jobs._common import summary\ndef f(cfg: DictConfig) -> None: ...\n")
    assert "diffmix.jobs._common" in _imports(tree)
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    assert "DictConfig" in ast.unparse(fn.args.args[0].annotation)


@pytest.mark.parametrize("seed", [drawn_seed(1 << 16)])
@pytest.mark.parametrize("sr", [44100, 48000])
def test_gated_meter_over_chunks_equals_the_whole_signal_meters(seed, sr):
    print("seed", seed)
    g = torch.Generator().manual_seed(seed)
    n = int(7.3 * sr)
    x = torch.randn(1, 2, n, generator=g, dtype=torch.float64)
    # A level that moves by 30 dB over the signal, so both gates and the range matter.
    x = x * torch.logspace(-2.5, -1.0, n, dtype=torch.float64)
    meter, w = GatedMeter(sr, 2), GatedMeter.warmup(sr)
    unit = meter.unit
    padded = torch.nn.functional.pad(x, (w, 0))
    start = 0
    while start < n:  # chunks of random whole numbers of meter units
        size = min(n - start, unit * int(torch.randint(1, 300, (1,), generator=g)))
        meter.add(padded[..., start : start + w + size], w, size)
        start += size
    assert abs(meter.integrated_lufs() - float(integrated_loudness(x, sr)[0])) <= 1e-9
    assert abs(meter.loudness_range() - float(loudness_range(x, sr)[0])) <= 1e-9
    assert meter.loudness_range() > 5.0  # the ramp gives a range to measure


def test_gated_meter_edges():
    sr = 48000
    meter, w = GatedMeter(sr, 2), GatedMeter.warmup(sr)
    meter.add(torch.zeros(1, 2, w + sr), w, sr)
    assert meter.integrated_lufs() == -math.inf and meter.loudness_range() == 0.0
    # Under one 400 ms block: everything as one block, as the whole-signal meters read it
    # (a sound 0.3 s long, cut on the meter's units, has a loudness, not an error).
    n = (3 * sr // 10) // meter_unit(sr) * meter_unit(sr)
    tone = (0.1 * torch.sin(torch.arange(n) * 0.07)).expand(1, 2, n)
    short = GatedMeter(sr, 2)
    short.add(torch.nn.functional.pad(tone, (w, 0)), w, n)
    whole = float(integrated_loudness(tone.double(), sr)[0])
    assert math.isfinite(whole) and abs(short.integrated_lufs() - whole) <= 1e-9
    assert abs(short.max_short_term_lufs() - whole) <= 1e-9 and short.loudness_range() == 0.0
    with pytest.raises(ValueError, match="need"):
        GatedMeter(sr, 2).add(torch.zeros(1, 2, 100), 10, 50)


def _cfg(*overrides):
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        return compose("master", overrides=list(overrides))


def test_a_quiet_input_needing_35_db_masters_streamed_and_in_memory_alike(tmp_path):
    from diffmix.jobs import master

    sr = 44100
    audio = music(6.0, sr, seed=5).astype(np.float64)
    x = torch.from_numpy(audio.T.copy()).unsqueeze(0)
    audio *= 10 ** ((-49.0 - float(integrated_loudness(x, sr)[0])) / 20)  # -49 LUFS: +35 dB to -14
    song = write(tmp_path / "quiet.wav", audio.astype(np.float32), sr)
    common = [f"input={song}", "fit.steps=0", "report=false", "progress=false",
              "delivery.bit_depth=float", "delivery.dither=false", "streaming.chunk_s=2.0"]
    reports, levels = {}, {}
    for mode in ("false", "true"):
        assert master.run(_cfg(*common, f"out={tmp_path / mode}", f"stream={mode}")) == 0
        reports[mode] = json.loads((tmp_path / mode / "quiet_master_report.json").read_text())
        y, _ = sf.read(str(tmp_path / mode / "quiet_master.wav"), always_2d=True)
        levels[mode] = float(integrated_loudness(torch.from_numpy(y.T.copy()).unsqueeze(0), sr)[0])
    mem, st = reports["false"], reports["true"]
    # The streamed solve searched -40..30 dB and failed here; both now search the
    # limiter's own gain_db range (-24..48 dB).
    assert mem["loudness_solve"]["drive_db"] > 34.0 and st["loudness_solve"]["drive_db"] > 34.0
    assert abs(levels["true"] - levels["false"]) <= 0.05
    assert abs(levels["true"] + 14.0) <= 0.05 and abs(levels["false"] + 14.0) <= 0.05
    # One report schema: the same achieved figures (lra_lu too) and the same sections, the
    # streamed report adding how it streamed, the in-memory one its stage timings.
    assert set(mem["achieved"]) == set(st["achieved"]) and "lra_lu" in st["achieved"]
    assert set(st) - set(mem) == {"streaming"} and set(mem) - set(st) == {"timings_s"}
    assert abs(st["after"]["lra_lu"] - mem["after"]["lra_lu"]) <= 0.05


def test_the_library_masters_without_a_config(tmp_path):
    # Typed arguments only: no Hydra, no DictConfig.
    from diffmix.mastering import ChainSpec, DeliveryOptions, FitOptions, MasterOptions, Song, master_group

    sr = 44100
    x = torch.from_numpy(music(3.0, sr, seed=2).T.copy()).unsqueeze(0)
    spec = ChainSpec(sr, {
        "comp": {"_target_": "diffmix.effects.dynamics.Compressor", "sample_rate": sr, "threshold_db": -20.0},
        "limiter": {"_target_": "diffmix.effects.dynamics.Limiter", "sample_rate": sr, "ceiling_db": -1.0},
    })
    song = Song("s", x, tmp_path, "s_master", target={"lufs": -16.0, "true_peak_db": -1.0})
    options = MasterOptions(report=False, delivery=DeliveryOptions(bit_depth="float", dither=False))
    (report,) = master_group([song], sr, spec, FitOptions(steps=0), options)
    assert abs(report["achieved"]["lufs"] + 16.0) <= 0.05 and report["achieved"]["under_ceiling"]
    assert (tmp_path / "s_master.wav").exists() and (tmp_path / "s_master_preset.yaml").exists()


def test_limiter_stage_drives_in_the_limiters_own_range():
    from diffmix.console import Bus
    from diffmix.effects.dynamics import Limiter
    from diffmix.mastering import DRIVE_RANGE, LimiterStage, render_with_drive

    sr = 44100
    chain = Bus(sr, {"limiter": Limiter(sr, exact=False)}, items=1)
    stage = LimiterStage(chain)
    spec = next(s for s in Limiter.specs if s.name == "gain_db")
    assert stage.drive_range == DRIVE_RANGE == (spec.min, spec.max)
    assert stage.limiter.exact  # the stage renders the exact limiter
    x = 0.1 * torch.randn(1, 2, sr, generator=torch.Generator().manual_seed(0))
    render = render_with_drive(chain, x)
    assert render.drive_range == DRIVE_RANGE
    stage.set_drive(torch.tensor([6.0], dtype=torch.float64))
    torch.testing.assert_close(render(torch.tensor([6.0])), stage.after(stage.before(x)), rtol=0, atol=1e-6)


def test_batch_and_album_compose_the_mastering_group():
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        master = compose("master", overrides=["input=x.wav"])
        batch = compose("batch", overrides=["manifest=m.csv", "target=youtube"])
        album = compose("album", overrides=["inputs=a"])
    for key in ("chain", "optim", "delivery", "loss", "tolerance_lu"):
        assert batch[key] == master[key] and album[key] == master[key], key
    assert batch.target.name == "youtube" and master.target.name == "spotify"
    # Every named spec comes through Hydra, none read from disk by the job.
    assert sorted(batch.targets) == sorted(p.stem for p in (ROOT / "configs" / "target").glob("*.yaml"))
    assert batch.fit.steps == 60 and album.match_eq is None and master.match_eq is not None


@pytest.mark.parametrize("depth", ["24", "16"])
def test_the_delivered_true_peak_is_bounded_from_the_render_or_metered(tmp_path, depth):
    # A 24-bit master's true peak comes from the limiter's own strict reading of the render
    # plus what dither and rounding can add (no second strict pass over the file); it never
    # reads below the written file's strict true peak, and the ceiling holds on the file.
    # At 16 bits the bound is too loose to hold the ceiling at the render's level: the file
    # is metered, re-limited if dither took it over, and bounded again only after that.
    from diffmix.functional.peaks import strict_true_peak
    from diffmix.mastering import ChainSpec, DeliveryOptions, FitOptions, MasterOptions, Song, master_group

    sr = 44100
    x = torch.from_numpy(music(4.0, sr, seed=7).T.copy()).unsqueeze(0)
    spec = ChainSpec(sr, {"limiter": {"_target_": "diffmix.effects.dynamics.Limiter", "sample_rate": sr,
                                      "ceiling_db": -1.0, "strict": True}})
    # loud enough that the limiter holds peaks at its target all through
    song = Song("s", x, tmp_path, "s_master", target={"lufs": -8.0, "true_peak_db": -1.0})
    options = MasterOptions(report=False, delivery=DeliveryOptions(bit_depth=depth))
    (report,) = master_group([song], sr, spec, FitOptions(steps=0), options)
    delivery = report["delivery"]
    if depth == "24":
        assert delivery["true_peak_from"] == "bound" and not delivery["relimited"]
    else:
        assert delivery["true_peak_from"] == "metered" or delivery["relimited"]
    y, _ = sf.read(str(tmp_path / "s_master.wav"), always_2d=True, dtype="float32")
    on_file = 20 * math.log10(float(strict_true_peak(torch.from_numpy(y.T.copy()).unsqueeze(0), sr).max()))
    reported = report["after"]["true_peak_dbtp"]
    assert delivery["true_peak_dbtp"] == reported <= -1.0 and on_file <= -1.0
    slack = 1e-9 if delivery["true_peak_from"] == "metered" else 1e-3 if depth == "24" else 5e-3
    assert on_file <= reported <= on_file + slack


def test_a_dropped_renderer_frees_its_buffers_without_the_garbage_collector():
    # The renderer and the limiter's drive renders keep the pre-limiter signal and three
    # full-length buffers: no reference cycle may keep them alive after the last reference
    # goes (a function setting an attribute on itself did, ~170 MiB for a 3-minute song).
    import gc
    import weakref

    from diffmix.console import Bus
    from diffmix.effects.dynamics import Limiter
    from diffmix.effects.gain import Width
    from diffmix.mastering import render_with_drive

    sr = 44100
    chain = Bus(sr, {"width": Width(sr), "limiter": Limiter(sr, strict=True)}, items=1)
    x = 0.3 * torch.randn(1, 2, sr, generator=torch.Generator().manual_seed(1))
    gc.disable()
    try:
        render = render_with_drive(chain, x)
        y = render(torch.tensor([6.0]))
        assert render.strict_peak() is not None
        pre = weakref.ref(render.pre)
        del render, y
        assert pre() is None
    finally:
        gc.enable()


def test_each_songs_tone_error_after_is_its_own_delivered_masters(tmp_path):
    # Why: the master's tone error against its reference is measured on the worker while
    # the main thread delivers; in a group each report must read its own song against its
    # own reference. Float, undithered files hold the render's samples, so the error
    # measured afresh from each file is the report's, to float rounding.
    from diffmix.features import spectral_errors
    from diffmix.mastering import ChainSpec, DeliveryOptions, FitOptions, MasterOptions, Song, master_group

    sr = 44100
    spec = ChainSpec(
        sr,
        {"limiter": {"_target_": "diffmix.effects.dynamics.Limiter", "sample_rate": sr, "ceiling_db": -1.0}},
        match_eq={"_target_": "diffmix.effects.match_eq.MatchEQ", "sample_rate": sr},
    )
    songs, refs = [], []
    for k, (seconds, level) in enumerate([(3.0, 0.3), (4.0, 0.6)]):
        x = torch.from_numpy(music(seconds, sr, seed=11 + k).T.copy()).unsqueeze(0)
        ref = torch.from_numpy(music(3.5, sr, seed=21 + k, level=level).T.copy()).unsqueeze(0)
        refs.append(ref)
        songs.append(Song(f"s{k}", x, tmp_path, f"s{k}_master", reference=ref, target={"true_peak_db": -1.0}))
    options = MasterOptions(report=False, delivery=DeliveryOptions(bit_depth="float", dither=False))
    reports = master_group(songs, sr, spec, FitOptions(steps=0), options)
    errors = []
    for k, report in enumerate(reports):
        y, _ = sf.read(str(tmp_path / f"s{k}_master.wav"), always_2d=True, dtype="float32")
        fresh = spectral_errors(torch.from_numpy(y.T.copy()).unsqueeze(0), refs[k], sr)
        assert report["spectral_error"]["after"] == pytest.approx(fresh, abs=1e-6)
        errors.append(fresh)
    assert errors[0] != pytest.approx(errors[1], abs=1e-3)  # the two are told apart
