"""CLI jobs: each module ``diffmix/jobs/<job>.py`` has ``run(cfg) -> int`` and a one-line help.

The job's primary Hydra config is ``configs/<job>.yaml``.
"""
