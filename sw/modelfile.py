"""Model files: one ``.npz`` with a network description and its int8 parameters.

Layout (all arrays; nothing is pickled, so loading never runs code from the file):

``header``
    0-d unicode string, JSON: ``{"format": "fpgacnn-model", "version": 1,
    "network": {"name", "input_shape", "layers": [{"type": "Conv", ...}, ...]},
    "meta": {...}}``. ``meta`` is free-form JSON (accuracies, seed, epochs, ...).
``stage<i>.weight`` int8, ``stage<i>.bias`` int32, ``stage<i>.m`` int32, ``stage<i>.s`` int32
    One :class:`.network.QuantParams` per stage, shapes from :meth:`.network.Network.stages`.

:func:`load` checks every key, dtype, shape and range (``QuantParams.check``) and turns
every failure — truncated or corrupted file, missing or extra keys, a description that
does not match the arrays — into a :class:`ModelFileError` that names the file and the
problem. LeNet-5 trained on MNIST ships as package data (:func:`load_default`).
"""

import dataclasses
import json
import os
import zipfile
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from . import golden
from . import network as nets

__all__ = ["ModelFileError", "save", "load", "default_model_path", "load_default",
           "network_to_dict", "network_from_dict", "FORMAT", "VERSION"]

FORMAT = "fpgacnn-model"
VERSION = 1
_LAYERS = {cls.__name__: cls for cls in (nets.Conv, nets.FC, nets.ReLU, nets.MaxPool)}
# Stored dtype of each per-stage array; M and S are int32 so that an out-of-range value
# in a damaged file is reported as such rather than wrapped around.
_ARRAYS = {"weight": np.int8, "bias": np.int32, "m": np.int32, "s": np.int32}


class ModelFileError(ValueError):
    """A model file that cannot be used: unreadable, incomplete or inconsistent."""


def network_to_dict(network):
    """JSON-ready description: name, input shape and the layer list."""
    layers = []
    for layer in network.layers:
        if type(layer).__name__ not in _LAYERS:
            raise TypeError(f"cannot serialise layer {layer!r}: unknown type")
        layers.append({"type": type(layer).__name__, **dataclasses.asdict(layer)})
    return {"name": network.name, "input_shape": [int(v) for v in network.input_shape],
            "layers": layers}


def network_from_dict(d):
    """Inverse of :func:`network_to_dict`; raises ValueError on any malformed entry."""
    if not isinstance(d, dict) or set(d) != {"name", "input_shape", "layers"}:
        raise ValueError(f"network description needs exactly name, input_shape and layers, "
                         f"got {sorted(d) if isinstance(d, dict) else type(d).__name__}")
    shape = d["input_shape"]
    if (not isinstance(shape, list) or len(shape) != 3
            or not all(isinstance(v, int) and v >= 1 for v in shape)):
        raise ValueError(f"input_shape must be three positive integers, not {shape!r}")
    if not isinstance(d["layers"], list):
        raise ValueError(f"layers must be a list, not {type(d['layers']).__name__}")
    layers = []
    for i, entry in enumerate(d["layers"]):
        if not isinstance(entry, dict) or entry.get("type") not in _LAYERS:
            raise ValueError(f"layer {i}: unknown layer {entry!r}; expected a type among "
                             f"{sorted(_LAYERS)}")
        cls = _LAYERS[entry["type"]]
        fields = {k: v for k, v in entry.items() if k != "type"}
        names = {f.name for f in dataclasses.fields(cls)}
        if not set(fields) <= names or not all(isinstance(v, int) for v in fields.values()):
            raise ValueError(f"layer {i}: bad fields {fields} for {cls.__name__} "
                             f"(integers among {sorted(names)})")
        try:
            layers.append(cls(**fields))
        except TypeError as e:
            raise ValueError(f"layer {i}: {e}") from None
    net = nets.Network(str(d["name"]), tuple(shape), layers)
    net.stages()        # every geometry must be valid
    return net


def _stage_key(index, name):
    return f"stage{index}.{name}"


def save(path, network, params, meta=None):
    """Write ``network`` with its ``params`` (list of QuantParams) and ``meta`` to ``path``.

    Everything is checked before anything is written; the file is replaced atomically.
    """
    stages = network.stages()
    if len(params) != len(stages):
        raise ValueError(f"{network.name} has {len(stages)} stages, got {len(params)} "
                         f"parameter sets")
    header = {"format": FORMAT, "version": VERSION, "network": network_to_dict(network),
              "meta": dict(meta or {})}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model metadata must be plain JSON values: {e}") from None
    arrays = {"header": np.array(text)}
    for stage, p in zip(stages, params):
        p.check(stage)
        for name, dtype in _ARRAYS.items():
            arrays[_stage_key(stage.index, name)] = np.asarray(getattr(p, name)).astype(dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A sibling temporary file (created with the usual umask permissions, unlike
    # tempfile.mkstemp's 0600) so that readers never see a half-written model.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _read_arrays(path):
    try:
        # Our own handle: np.load(path) leaks its file when the zip directory is bad.
        with open(path, "rb") as f:
            npz = np.load(f, allow_pickle=False)
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise ModelFileError(f"{path}: holds a single .npy array, not a model file "
                                     f"(.npz archive)")
            with npz:
                return {key: npz[key] for key in npz.files}
    except ModelFileError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, KeyError) as e:
        raise ModelFileError(
            f"{path}: not a readable model file, probably truncated or corrupted "
            f"({type(e).__name__}: {e}); re-create it with `fpgacnn train --out {path}`") \
            from None


def load(path, *, expect=None):
    """Read and validate a model file: ``(network, params, meta)``.

    Parameters
    ----------
    path : str or Path
    expect : Network, optional
        If given, the file's network description must equal it.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ModelFileError
        For anything else wrong with the file; the message names it and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    arrays = _read_arrays(path)

    def fail(msg):
        return ModelFileError(f"{path}: {msg}")

    header = _read_header(arrays, fail)
    try:
        network = network_from_dict(header.get("network"))
        stages = network.stages()
    except (ValueError, golden.GeometryError) as e:
        raise fail(f"bad network description: {e}") from None
    if expect is not None and network_to_dict(expect) != network_to_dict(network):
        raise fail(f"holds network {network_to_dict(network)}, expected "
                   f"{network_to_dict(expect)}")
    return network, _read_params(arrays, network, stages, fail), header["meta"]


def _read_header(arrays, fail):
    """The checked JSON header (format, version, meta) as a dict."""
    if "header" not in arrays:
        raise fail("missing key 'header'; not an fpgacnn model file")
    header = arrays["header"]
    if header.dtype.kind != "U" or header.shape != ():
        raise fail(f"'header' must be a JSON string, not {header.dtype} {header.shape}")
    try:
        header = json.loads(str(header))
    except json.JSONDecodeError as e:
        raise fail(f"'header' is not valid JSON ({e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise fail(f"format is not {FORMAT!r}")
    if header.get("version") != VERSION:
        raise fail(f"format version {header.get('version')!r} is not supported "
                   f"(this fpgacnn reads version {VERSION})")
    if not isinstance(header.get("meta"), dict):
        raise fail("'meta' must be a JSON object")
    return header


def _read_params(arrays, network, stages, fail):
    """One checked QuantParams per stage; the keys must be exactly those of ``stages``."""
    wanted = {"header"} | {_stage_key(s.index, n) for s in stages for n in _ARRAYS}
    missing, extra = sorted(wanted - set(arrays)), sorted(set(arrays) - wanted)
    if missing:
        raise fail(f"missing keys {missing} for the {len(stages)} stages of {network.name}")
    if extra:
        raise fail(f"unexpected keys {extra}: the arrays do not match the {len(stages)} "
                   f"stages of {network.name}")
    params = []
    for stage in stages:
        values = {}
        for name, dtype in _ARRAYS.items():
            a = arrays[_stage_key(stage.index, name)]
            if a.dtype != np.dtype(dtype):
                raise fail(f"{_stage_key(stage.index, name)} has dtype {a.dtype}, expected "
                           f"{np.dtype(dtype)}")
            values[name] = a
        p = nets.QuantParams(values["weight"], values["bias"],
                             values["m"].astype(np.int64), values["s"].astype(np.int64))
        try:
            p.check(stage)
        except ValueError as e:
            raise fail(str(e)) from None
        params.append(p)
    return params


def default_model_path():
    """Path of the LeNet-5 model shipped with the package (``fpgacnn/sw/data/lenet5.npz``)."""
    return Path(str(resources.files("fpgacnn.sw").joinpath("data", "lenet5.npz")))


def load_default():
    """The shipped LeNet-5 model: ``(network, params, meta)``."""
    path = default_model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped LeNet-5 model {path} is missing; reinstall fpgacnn or create it "
            f"with `fpgacnn train --out {path}`")
    return load(path, expect=nets.lenet5())
