"""The real Hydra configs: every job composes, every node instantiates, overrides work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from diffmix.config import ConfigError, instantiate
from diffmix.console import Bus, Console

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")
REQUIRED = {
    "demo": [],
    "mix": ["stems=s"],
    "master": ["input=x"],
    "render": ["preset=p", "input=x"],
    "album": ["inputs=t"],
    "batch": ["manifest=m"],
    "analyze": ["input=x"],
    "repair": ["input=x"],
    "train": ["corpus=c"],
}


def compose_job(job, *overrides):
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        cfg = compose(job, overrides=[*REQUIRED[job], *overrides])
    OmegaConf.update(cfg, "sample_rate", 44100, force_add=True)
    return cfg


RUN_TIME = {"mix": {"console.tracks"}}  # ??? values a job fills itself (mix: from the stems)


def sample_rates(node, path=""):
    """``{path: value}`` of every ``sample_rate`` key in a resolved config."""
    found = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "sample_rate":
                found[path + key] = value
            found.update(sample_rates(value, f"{path}{key}."))
    return found


@pytest.mark.parametrize("job", sorted(REQUIRED))
def test_every_job_config_composes_and_resolves(job):
    cfg = compose_job(job)
    resolved = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    # REQUIRED names exactly the ??? values a user must give; the rest the job fills.
    with initialize_config_dir(CONFIGS, version_base="1.3"):
        bare = compose(job)
    given = {override.split("=")[0] for override in REQUIRED[job]}
    assert OmegaConf.missing_keys(bare) == given | RUN_TIME.get(job, set())
    assert OmegaConf.missing_keys(cfg) == RUN_TIME.get(job, set())
    # The working rate reaches every effect; delivery's rate is a conversion target, null = keep.
    rates = sample_rates(resolved)
    assert rates.pop("delivery.sample_rate", None) is None
    assert set(rates.values()) == {44100}
    if "chain" in resolved:
        assert resolved["chain"]["limiter"]["ceiling_db"] == resolved["target"]["true_peak_db"]


@pytest.mark.parametrize("job", ["master", "album", "batch"])
def test_mastering_chain_instantiates_and_runs(job):
    cfg = compose_job(job)
    chain = Bus(44100, instantiate(cfg.chain, _convert_="all"), items=1)
    assert list(chain.effects) == ["eq", "comp", "width", "limiter"]
    assert chain(torch.randn(1, 2, 4410) * 0.1).shape == (1, 2, 4410)
    opt = instantiate(cfg.optim)([torch.nn.Parameter(torch.zeros(1))])
    assert isinstance(opt, torch.optim.Adam)


def test_console_config_instantiates_and_runs():
    cfg = compose_job("mix")
    node = OmegaConf.to_container(cfg.console, resolve=True)
    node.update(tracks=3, track_names=["a", "b", "c"], mono=[False, True, False])
    console = instantiate(OmegaConf.create(node), _convert_="all")
    assert isinstance(console, Console)
    assert console(torch.randn(1, 3, 2, 4410) * 0.1).shape == (1, 2, 4410)


@pytest.mark.parametrize(
    "name, lufs, tp",
    [
        ("spotify", -14, -1),
        ("apple_music", -16, -1),
        ("youtube", -14, -1),
        ("amazon", -14, -2),
        ("ebu_r128", -23, -1),
        ("atsc_a85", -24, -2),
    ],
)
def test_named_targets(name, lufs, tp):
    cfg = compose_job("master", f"target={name}")
    assert (cfg.target.lufs, cfg.target.true_peak_db) == (lufs, tp)


@pytest.mark.parametrize(
    "match, terms",
    [
        ("tone", {"tone_mid", "tone_side"}),
        ("loudness_dynamics", {"loudness", "dynamics"}),
        ("width", {"width", "correlation"}),
    ],
)
@pytest.mark.parametrize("job", ["master", "mix"])
def test_match_is_one_override(job, match, terms):
    assert set(compose_job(job, f"match={match}").loss.weights) == terms


def test_scheduler_is_optional_and_instantiable():
    cfg = compose_job("master", "+scheduler=cosine")
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.scheduler)(opt)
    assert isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR)


def test_a_config_can_not_build_arbitrary_objects():
    cfg = compose_job("master", "chain.width._target_=os.system")
    with pytest.raises(ConfigError, match="'os.system' is not allowed"):
        instantiate(cfg.chain)
