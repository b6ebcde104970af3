"""Delayed feedback: exposures joined with their later outcomes in event time (docs/delayed_feedback.md).

:mod:`pipeline.join.settings` (the ``[join]`` section, importable without numpy),
:mod:`pipeline.join.store` (the bounded open-exposure store), :mod:`pipeline.join.joiner` (the join
and what to learn at each batch) and :mod:`pipeline.join.weights` (FNW and ES-DFM importance weights).
"""
