"""The JSON bodies of ``/v1/score`` and ``/v1/decide``, checked field by field.

A request names a user, optional context features and the candidate items (each with optional
features of its own)::

    {"model": "ftrl", "user_id": "u1", "features": {"device": "ios", "hour": 20},
     "candidates": [{"item_id": "i1"}, {"item_id": "i2", "features": {"price": 9.5}}],
     "k": 1, "request_id": "r-17", "exploration": {"rule": "softmax", "temperature": 0.05}}

Features follow the event schema: strings and booleans are categorical, finite numbers numeric.
Everything wrong is a :class:`RequestError` naming the field (``candidates[3].item_id``), which
the server answers with 400.

Examples
--------
>>> req = parse_request({"model": "ftrl", "user_id": "u", "candidates": ["a", {"item_id": "b"}]})
>>> req.item_ids, req.k
(['a', 'b'], 1)
>>> parse_request({"model": "ftrl", "user_id": "u", "candidates": [{"item_id": 3.5}]})
Traceback (most recent call last):
...
pipeline.serving.requests.RequestError: candidates[0].item_id: expected a non-empty string or an integer, got 3.5
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson

from pipeline.errors import StreamlearnError
from pipeline.serving.exploration import RULES, ExplorationRule

__all__ = ["Limits", "Request", "RequestError", "parse_body", "parse_request"]


_CANDIDATE_KEYS = frozenset({"item_id", "features"})


class RequestError(StreamlearnError):
    """A request field is missing or wrong; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_candidates: int = 1000
    max_features: int = 256
    max_id_chars: int = 256


@dataclass
class Request:
    """A checked request."""

    model: str
    user_id: str
    item_ids: list[str]
    features: dict[str, Any] = field(default_factory=dict)
    item_features: list[dict[str, Any]] = field(default_factory=list)
    k: int = 1
    request_id: str | None = None
    exploration: ExplorationRule | None = None


def _id(value: Any, where: str, limits: Limits) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise RequestError(where, f"expected a non-empty string or an integer, got {value!r}")
    text = str(value)
    if len(text) > limits.max_id_chars:
        raise RequestError(where, f"longer than {limits.max_id_chars} characters")
    return text


def _features(value: Any, where: str, limits: Limits) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(where, f"expected an object of features, got {type(value).__name__}")
    if len(value) > limits.max_features:
        raise RequestError(where, f"more than {limits.max_features} features")
    out: dict[str, Any] = {}
    for name, v in value.items():
        if not name:
            raise RequestError(where, "feature names must be non-empty")
        kind = type(v)
        if kind is str:  # the common cases first: one type check each
            out[name] = v
        elif kind is float and math.isfinite(v):
            out[name] = v
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        elif isinstance(v, str):
            out[name] = v
        elif isinstance(v, (int, float)):
            if not math.isfinite(v):
                raise RequestError(f"{where}.{name}", f"expected a finite number, got {v!r}")
            out[name] = float(v)
        elif v is None:
            continue
        else:
            raise RequestError(
                f"{where}.{name}", f"expected a string, number or boolean, got {type(v).__name__}"
            )
    return out


def _exploration(value: Any) -> ExplorationRule | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"rule": value}
    if not isinstance(value, dict) or not isinstance(value.get("rule"), str):
        raise RequestError(
            "exploration", f"expected {{'rule': one of {', '.join(RULES)}, ...}}, got {value!r}"
        )
    rule = value["rule"]
    if rule not in RULES:
        raise RequestError("exploration.rule", f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    param, _ = RULES[rule]
    extra = set(value) - {"rule", *([param] if param else [])}
    if extra:
        raise RequestError(f"exploration.{sorted(extra)[0]}", f"not a parameter of {rule}")
    raw = value.get(param) if param else None
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
        raise RequestError(f"exploration.{param}", f"expected a number, got {raw!r}")
    try:
        return ExplorationRule(rule, raw)
    except ValueError as exc:
        raise RequestError(f"exploration.{param}", str(exc)) from None


def _candidates(candidates: list, limits: Limits) -> tuple[list[str], list[dict[str, Any]]]:
    """Item ids and own features, checked candidate by candidate (the path that names errors)."""
    ids, feats = [], []
    for j, cand in enumerate(candidates):
        if type(cand) is dict:
            if not cand.keys() <= _CANDIDATE_KEYS:
                extra = sorted(set(cand) - _CANDIDATE_KEYS)
                raise RequestError(f"candidates[{j}].{extra[0]}", "unknown field (known: item_id, features)")
            ids.append(_id(cand.get("item_id"), f"candidates[{j}].item_id", limits))
            own = cand.get("features")
            feats.append(_features(own, f"candidates[{j}].features", limits) if own else {})
        else:
            ids.append(_id(cand, f"candidates[{j}]", limits))
            feats.append({})
    return ids, feats


def _fast_candidates(candidates: list, limits: Limits) -> tuple[list[str], list[dict[str, Any]]] | None:
    """:func:`_candidates` for the usual request, checked a field at a time over all candidates.

    The checks run as C-level iterations (``map``, ``set``, ``chain``) instead of a Python loop per
    feature: objects of string ids whose features are strings and finite floats. Anything else
    (integer ids or values, booleans, nulls, a bad field) returns None, and the per-candidate
    path converts it or words the error. The feature dicts are the request's own, not copies.
    """
    if (
        set(map(type, candidates)) != {dict}
        or not set(itertools.chain.from_iterable(candidates)) <= _CANDIDATE_KEYS
    ):
        return None
    ids = [c.get("item_id") for c in candidates]
    if set(map(type, ids)) != {str} or min(map(len, ids)) == 0 or max(map(len, ids)) > limits.max_id_chars:
        return None
    feats = [c.get("features") or {} for c in candidates]
    if set(map(type, feats)) != {dict} or max(map(len, feats)) > limits.max_features:
        return None
    if not any(feats):
        return ids, feats
    if "" in set(itertools.chain.from_iterable(feats)):
        return None
    values = list(itertools.chain.from_iterable(map(dict.values, feats)))
    kinds = set(map(type, values))
    if not kinds <= {str, float}:
        return None
    if float in kinds:
        numbers = values if str not in kinds else [v for v in values if type(v) is float]
        if not np.isfinite(np.asarray(numbers, dtype=np.float64)).all():
            return None
    return ids, feats


def parse_request(body: Any, limits: Limits | None = None, decide: bool = False) -> Request:
    """Check a decoded JSON body; raises :class:`RequestError` naming the first wrong field."""
    limits = limits or Limits()
    if not isinstance(body, dict):
        raise RequestError("body", f"expected a JSON object, got {type(body).__name__}")
    known = {"model", "user_id", "features", "candidates", "k", "request_id", "exploration"}
    extra = sorted(set(body) - known)
    if extra:
        raise RequestError(extra[0], f"unknown field (known: {', '.join(sorted(known))})")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("model", f"expected the name of a loaded model, got {model!r}")
    user = _id(body.get("user_id"), "user_id", limits)
    candidates = body.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise RequestError("candidates", "expected a non-empty list of items")
    if len(candidates) > limits.max_candidates:
        raise RequestError(
            "candidates", f"{len(candidates)} items, more than the limit of {limits.max_candidates}"
        )
    ids, feats = _fast_candidates(candidates, limits) or _candidates(candidates, limits)
    return _request(
        model,
        user,
        ids,
        feats,
        body.get("k", 1),
        body.get("request_id"),
        body.get("exploration"),
        limits,
        decide,
        lambda: _features(body.get("features"), "features", limits),
    )


def _request(model, user, ids, feats, k, request_id, exploration, limits, decide, features) -> Request:
    """The checks both parsers share, in :func:`parse_request`'s order; ``features`` gives the
    checked context features last."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise RequestError("candidates", f"item {dup!r} is listed twice")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(ids):
        raise RequestError(
            "k", f"expected an integer in [1, {len(ids)}] (the number of candidates), got {k!r}"
        )
    if request_id is not None:
        request_id = _id(request_id, "request_id", limits)
    rule = _exploration(exploration)
    if rule is not None and not decide:
        raise RequestError("exploration", "only /v1/decide explores")
    return Request(
        model=model,
        user_id=user,
        item_ids=ids,
        features=features(),
        item_features=feats,
        k=k,
        request_id=request_id,
        exploration=rule,
    )


_FINITE = msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)  # rejects inf (and NaN)


@functools.lru_cache(maxsize=8)
def _decoder(limits: Limits) -> msgspec.json.Decoder:
    """A decoder of the usual body under ``limits``: string ids, features of strings and finite
    numbers, candidates as objects or bare string ids. msgspec checks every field while it parses,
    in C; whatever it refuses (integer ids, booleans, nulls, a wrong field) is checked again by
    :func:`parse_request`, which converts it or names the field."""
    ident = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.max_id_chars)]
    features = Annotated[
        dict[Annotated[str, msgspec.Meta(min_length=1)], str | Annotated[float, _FINITE]],
        msgspec.Meta(max_length=limits.max_features),
    ]
    candidate = msgspec.defstruct(
        "Candidate", [("item_id", ident), ("features", features | None, None)], forbid_unknown_fields=True
    )
    body = msgspec.defstruct(
        "Body",
        [
            ("model", Annotated[str, msgspec.Meta(min_length=1)]),
            ("user_id", ident),
            (
                "candidates",
                Annotated[
                    list[ident | candidate], msgspec.Meta(min_length=1, max_length=limits.max_candidates)
                ],
            ),
            ("features", features | None, None),
            ("k", Any, 1),
            ("request_id", Any, None),
            ("exploration", Any, None),
        ],
        forbid_unknown_fields=True,
    )
    return msgspec.json.Decoder(body)


def parse_body(raw: bytes, limits: Limits | None = None, decide: bool = False) -> Request:
    """:func:`parse_request` of a JSON body as it arrives: the same :class:`Request`, or the same
    :class:`RequestError` (tested), at about a third of the cost.

    The usual body is parsed and checked in one pass by msgspec (:func:`_decoder`); any other
    goes through ``orjson`` and :func:`parse_request`, which words the error.

    >>> parse_body(b'{"model": "ftrl", "user_id": "u", "candidates": ["a", {"item_id": "b"}]}').item_ids
    ['a', 'b']
    >>> parse_body(b'{"model": "ftrl"')
    Traceback (most recent call last):
    ...
    pipeline.serving.requests.RequestError: body: not valid JSON (unexpected end of data: line 1 column 17 (char 16))
    """
    limits = limits or Limits()
    try:
        body = _decoder(limits).decode(raw)
    except (msgspec.ValidationError, msgspec.DecodeError):
        try:
            decoded = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise RequestError("body", f"not valid JSON ({exc})") from None
        return parse_request(decoded, limits, decide)
    candidates = body.candidates
    ids = [c if type(c) is str else c.item_id for c in candidates]
    feats = [{} if type(c) is str or c.features is None else c.features for c in candidates]
    context = body.features
    return _request(
        body.model,
        body.user_id,
        ids,
        feats,
        body.k,
        body.request_id,
        body.exploration,
        limits,
        decide,
        lambda: {} if context is None else context,
    )
