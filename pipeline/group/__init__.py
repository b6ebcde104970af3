"""Many workers, one model: model deltas shared through a Kafka topic (docs/scaling.md).

:mod:`pipeline.group.settings` (the ``[group]`` section, importable without numpy),
:mod:`pipeline.group.parts` (each learner's additive state), :mod:`pipeline.group.delta` (deltas
and their bytes), :mod:`pipeline.group.fold` (which deltas count, decided alike by every worker)
and :mod:`pipeline.group.sync` (one worker's side, without I/O).
"""
