"""streamlearn inside an application: load a state directory's model read-only, score and decide in-process.

The HTTP server (``streamlearn serve``) and this module run the same code: requests are checked as
``/v1/score`` and ``/v1/decide`` check them (a :class:`RequestError` names the field), scores come
from the snapshot's read-only model view, and decisions carry exact propensities. Nothing a call
does changes what was learned.

``import streamlearn`` is the one name an application needs. streamlearn's own code lives in the
packages ``pipeline``, ``state`` and ``consumers``; importing this module binds those names to
streamlearn's installed copies first, so a folder of the same name in the application's working
directory (a ``state/`` directory of snapshots, say) cannot shadow them. An application package of
one of those names imported *before* streamlearn cannot share the process with it: the import then
fails with an error that names both.

Examples
--------
>>> import streamlearn
>>> model = streamlearn.load("state/")  # doctest: +SKIP
>>> model.score("ftrl", user_id="u1", candidates=["i1", "i2"], features={"device": "ios"})  # doctest: +SKIP
[0.031, 0.112]
>>> d = model.decide("linucb", user_id="u1", candidates=["i1", "i2", "i3"], k=2)  # doctest: +SKIP
>>> d.items, d.propensities  # doctest: +SKIP
(['i2', 'i3'], [1.0, 1.0])
>>> model.refresh()  # a newer snapshot, if the worker wrote one  # doctest: +SKIP
True
"""

from __future__ import annotations

from streamlearn._bind import bind_internal_packages

bind_internal_packages()

from streamlearn._model import (  # noqa: E402 - after the binding above
    ConfigError,
    Decision,
    Model,
    ModelVersion,
    RequestError,
    SnapshotError,
    load,
)

__all__ = ["ConfigError", "Decision", "Model", "ModelVersion", "RequestError", "SnapshotError", "load"]
