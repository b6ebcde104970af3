"""Serving the live model: read-only views, requests, exploration rules and decision records.

:mod:`~pipeline.serving.view` (:class:`ModelView`, :class:`ViewHolder`), :mod:`~pipeline.serving.requests`
(the checked request bodies), :mod:`~pipeline.serving.exploration` (policies over any learner's
scores, with exact propensities) and :mod:`~pipeline.serving.decisions` (every decision as exposure
events). The HTTP server is :mod:`consumers.serving`.
"""
