"""Pickle-free serialisation of Python object graphs (river models) to JSON.

River estimators are plain Python objects. Snapshots must never unpickle, so this module walks
an object graph with the same ``__reduce_ex__`` protocol that pickle uses but writes JSON, and
rebuilds it by calling *only* callables from an allow-list (classes and functions of ``river``,
a few container types, ``random.Random`` and ``functools.partial``). A graph that needs anything
else (a lambda, a class from another package) fails loudly at ``dumps`` time, not at restore.

Examples
--------
>>> from river import linear_model, preprocessing
>>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
>>> model.learn_one({"x": 1.0}, True)
>>> clone = loads(dumps(model))
>>> clone.predict_proba_one({"x": 2.0}) == model.predict_proba_one({"x": 2.0})
True
"""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

import numpy as np

__all__ = ["UnsafeStateError", "dumps", "loads"]

_ALLOWED_MODULE_PREFIXES = ("river.",)
_ALLOWED_EXACT = {
    "builtins": {
        "float",
        "int",
        "str",
        "list",
        "dict",
        "set",
        "tuple",
        "frozenset",
        "bool",
        "object",
        "complex",
        "bytes",
    },
    "collections": {"defaultdict", "Counter", "OrderedDict", "deque"},
    "copyreg": {"__newobj__", "__newobj_ex__", "_reconstructor"},
    "functools": {"partial"},
    "random": {"Random"},
    "math": {"inf", "nan"},
    "numpy": {"ndarray", "dtype"},
    "operator": {"itemgetter", "attrgetter"},
}


class UnsafeStateError(TypeError):
    """The object graph holds something that cannot be saved or restored safely."""


def _allowed(module: str, qualname: str) -> bool:
    if module == "river" or module.startswith(_ALLOWED_MODULE_PREFIXES):
        return True
    return qualname in _ALLOWED_EXACT.get(module, ())


def _ref(obj) -> dict:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if module is None and isinstance(obj, type):
        module = "builtins"
    if module is None or qualname is None or "<lambda>" in qualname or "<locals>" in qualname:
        raise UnsafeStateError(f"cannot save a reference to {obj!r}: not an importable class or function")
    if not _allowed(module, qualname):
        raise UnsafeStateError(f"cannot save a reference to {module}.{qualname}: outside the allow-list")
    return {"$ref": f"{module}:{qualname}"}


def _resolve(ref: str):
    module, qualname = ref.split(":", 1)
    if not _allowed(module, qualname):
        raise UnsafeStateError(f"refusing to load {module}.{qualname}: outside the allow-list")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


class _Encoder:
    def __init__(self):
        self.memo: dict[int, int] = {}
        self.keep: list = []  # keeps reduced temporaries alive so ids stay unique

    def enc(self, obj: Any):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if type(obj) is int:
            return obj
        if type(obj) is float:
            return obj if math.isfinite(obj) else {"$float": repr(obj)}
        if isinstance(obj, np.generic):
            return {"$np": [str(obj.dtype), self.enc(obj.item())]}
        if isinstance(obj, type) or (
            callable(obj) and getattr(obj, "__qualname__", None) and not hasattr(obj, "__dict__")
        ):
            return _ref(obj)
        if isinstance(obj, type(len)) or isinstance(obj, type(_ref)):
            return _ref(obj)
        key = id(obj)
        if key in self.memo:
            return {"$memo": self.memo[key]}
        ident = len(self.memo)
        self.memo[key] = ident
        self.keep.append(obj)
        t = type(obj)
        if t is list:
            return {"$id": ident, "$list": [self.enc(x) for x in obj]}
        if t is tuple:
            return {"$id": ident, "$tuple": [self.enc(x) for x in obj]}
        if t is dict:
            return {"$id": ident, "$dict": [[self.enc(k), self.enc(v)] for k, v in obj.items()]}
        if t is set or t is frozenset:
            return {"$id": ident, "$" + t.__name__: [self.enc(x) for x in obj]}
        if t is bytes:
            return {"$id": ident, "$bytes": obj.hex()}
        if t is np.ndarray:
            if obj.dtype.kind not in "biufc":
                raise UnsafeStateError(f"cannot save a numpy array of dtype {obj.dtype}")
            return {
                "$id": ident,
                "$ndarray": [str(obj.dtype), list(obj.shape), self.enc(obj.ravel().tolist())],
            }
        return self._reduce(obj, ident)

    def _reduce(self, obj, ident):
        try:
            rv = obj.__reduce_ex__(4)
        except TypeError as exc:
            raise UnsafeStateError(
                f"cannot save {type(obj).__module__}.{type(obj).__qualname__}: {exc}"
            ) from exc
        if isinstance(rv, str):
            raise UnsafeStateError(f"cannot save global {rv!r}")
        rv = tuple(rv) + (None,) * (6 - len(rv))
        func, args, state, listitems, dictitems, _ = rv
        return {
            "$id": ident,
            "$reduce": [
                _ref(func),
                self.enc(tuple(args or ())),
                self.enc(state),
                self.enc(list(listitems)) if listitems is not None else None,
                self.enc(list(dictitems)) if dictitems is not None else None,
            ],
        }


def dumps(obj: Any) -> str:
    """Serialise an object graph to JSON text; raises :class:`UnsafeStateError` if it cannot be restored safely."""
    return json.dumps(_Encoder().enc(obj), separators=(",", ":"))


class _Decoder:
    def __init__(self):
        self.memo: dict[int, Any] = {}

    def dec(self, node):
        if not isinstance(node, dict):
            return node
        if "$memo" in node:
            return self.memo[node["$memo"]]
        if "$ref" in node:
            return _resolve(node["$ref"])
        if "$float" in node:
            return float(node["$float"])
        if "$np" in node:
            dtype, value = node["$np"]
            return np.dtype(dtype).type(self.dec(value))
        ident = node.get("$id")
        if "$list" in node:
            out: Any = []
            self.memo[ident] = out
            out.extend(self.dec(x) for x in node["$list"])
            return out
        if "$tuple" in node:
            out = tuple(self.dec(x) for x in node["$tuple"])
        elif "$dict" in node:
            out = {}
            self.memo[ident] = out
            for k, v in node["$dict"]:
                out[self.dec(k)] = self.dec(v)
            return out
        elif "$set" in node:
            out = {self.dec(x) for x in node["$set"]}
        elif "$frozenset" in node:
            out = frozenset(self.dec(x) for x in node["$frozenset"])
        elif "$bytes" in node:
            out = bytes.fromhex(node["$bytes"])
        elif "$ndarray" in node:
            dtype, shape, data = node["$ndarray"]
            out = np.array(self.dec(data), dtype=np.dtype(dtype)).reshape(shape)
        elif "$reduce" in node:
            return self._rebuild(node["$reduce"], ident)
        else:
            raise UnsafeStateError(f"unknown node in saved state: {sorted(node)[:3]}")
        self.memo[ident] = out
        return out

    def _rebuild(self, parts, ident):
        func_node, args_node, state_node, list_node, dict_node = parts
        func = self.dec(func_node)
        obj = func(*self.dec(args_node))
        self.memo[ident] = obj
        state = self.dec(state_node)
        if list_node is not None:
            for item in self.dec(list_node):
                obj.append(item)
        if dict_node is not None:
            for k, v in self.dec(dict_node):
                obj[k] = v
        if state is not None:
            setstate = getattr(obj, "__setstate__", None)
            if setstate is not None:
                setstate(state)
            elif isinstance(state, tuple) and len(state) == 2:
                dict_state, slot_state = state
                if dict_state:
                    obj.__dict__.update(dict_state)
                for k, v in (slot_state or {}).items():
                    setattr(obj, k, v)
            else:
                obj.__dict__.update(state)
        return obj


def loads(text: str) -> Any:
    """Rebuild an object graph written by :func:`dumps`, calling only allow-listed callables."""
    return _Decoder().dec(json.loads(text))
