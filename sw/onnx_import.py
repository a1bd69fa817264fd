"""Bring your own model: an ONNX file → a calibrated int8 model the accelerator runs.

::

    from fpgacnn.sw import onnx_import, modelfile
    network, params, meta = onnx_import.load("lenet5.onnx", calib_images)   # uint8 pixels
    modelfile.save("lenet5_imported.npz", network, params, meta)

The graph is read and folded by :mod:`.onnx_graph` (operators, BatchNormalization,
normalisation, QDQ weights); the int8 parameters come from the project's one quantiser
(:func:`.quantize.calibrate`, as ``fpgacnn train`` makes them) on the calibration
images, with the input quantisation of :class:`.mnist.InputQuant`; ONNX Runtime is the
float reference (:func:`reference_logits`, :func:`evaluate`).
"""

import hashlib
from pathlib import Path

import numpy as np

from . import compiler, mnist, quantize
from .driver import ModelDoesNotFit, as_batch
from .onnx_graph import SUPPORTED, FoldedModel, UnsupportedModel, fold

__all__ = ["load", "read", "input_quant", "check_fits", "reference_logits", "float_logits",
           "evaluate", "as_pixels", "layer_rows", "FoldedModel", "UnsupportedModel",
           "ModelDoesNotFit", "SUPPORTED"]


def read(path, *, name=None):
    """Parse and fold ``path``: ``(FoldedModel, file bytes)``.

    Raises
    ------
    FileNotFoundError, UnsupportedModel
    """
    import onnx
    from google.protobuf.message import DecodeError
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    raw = path.read_bytes()
    try:
        model = onnx.load_model_from_string(raw)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise UnsupportedModel(f"{path}: not a readable ONNX model ({type(e).__name__}: "
                               f"{e})") from None
    return fold(model, name=name or path.stem), raw


def input_quant(folded, convention="unit"):
    """The :class:`.mnist.InputQuant` of a folded model.

    Without a normalisation it is today's ``p >> 1``; with one, ``scale`` is chosen so the
    whole range of ``x - mean[c]`` over every channel (``x`` in ``0..1`` or ``0..255``)
    fits ``[-127, 127]``.
    """
    if not any(folded.mean):
        return mnist.InputQuant(convention)
    top = 255.0 / mnist.CONVENTIONS[convention]
    mean = np.asarray(folded.mean)
    amax = float(np.max(np.maximum(np.abs(mean), np.abs(top - mean))))
    return mnist.InputQuant(convention, tuple(float(m) for m in mean), amax / 127)


def as_pixels(images, input_shape):
    """uint8 images → ``(N, C, H, W)`` for ``input_shape``, or ValueError saying why.

    A single-channel model also takes ``(N, H, W)``; one image may omit N.
    """
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels 0..255, not {x.dtype}")
    return as_batch(x, input_shape)


def check_fits(network, params, board="icebreaker"):
    """Compile for ``board``'s configuration; returns the program.

    Raises
    ------
    ModelDoesNotFit
        With the compiler's explanation (which layer, which memory, how much).
    """
    from ..hw.config import get_config
    config = get_config(board)
    try:
        return compiler.compile_network(network, params, config)
    except compiler.CompileError as e:
        raise ModelDoesNotFit(f"{network.name} does not fit the {board} board "
                              f"({config.rows}x{config.cols} array, {config.weight_words} "
                              f"weight words, {config.act_bytes} B activations): {e}") from None


def _describe(stage):
    if stage.kind == "conv":
        what = (f"conv {stage.out_channels}@{stage.kernel}x{stage.kernel}"
                f"/{stage.stride} pad {stage.pad}")
    else:
        what = f"fc {stage.in_shape[0]}->{stage.out_channels}"
    what += " relu" if stage.relu else ""
    return what + (f" pool {stage.pool[0]}/{stage.pool[1]}" if stage.pool else "")


def layer_rows(network, sqnr):
    """One dict per stage: ``{layer, output_shape, macs, parameters, sqnr_db}``."""
    return [{"layer": _describe(s), "output_shape": list(s.out_shape), "macs": s.macs,
             "parameters": s.parameters, "sqnr_db": round(float(q), 2)}
            for s, q in zip(network.stages(), sqnr)]


def load(path, calib, *, convention="unit", board="icebreaker",
         percentiles=quantize.DEFAULT_PERCENTILES, name=None):
    """Import an ONNX model: ``(network, params, meta)`` ready for :func:`.modelfile.save`.

    Parameters
    ----------
    path : str or Path
        The ``.onnx`` file (PyTorch ``torch.onnx.export``, tf2onnx, QDQ graphs).
    calib : ndarray of uint8
        Calibration images ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel), pixels
        0..255; the activation scales come from them.
    convention : {"unit", "raw"}
        What the model's input holds: ``pixel / 255`` (torchvision ``ToTensor``) or
        raw ``0..255`` pixels.
    board : str or None
        Configuration the result must fit (``ModelDoesNotFit`` otherwise); None: no check.
    percentiles : sequence of float
        Activation percentiles tried; the one whose int8 logits are closest to the float
        logits on ``calib`` is kept.
    name : str, optional
        Network name (default: the file's stem).

    Returns
    -------
    network : network.Network
    params : list of network.QuantParams
    meta : dict
        Source file and sha256, input quantisation (``meta["input"]``, read back by
        :meth:`.mnist.InputQuant.from_dict`), per-layer scales and table, calibration
        count and percentile, notes on what was dropped or rewritten.

    Raises
    ------
    FileNotFoundError, UnsupportedModel, ModelDoesNotFit, ValueError
    """
    folded, raw = read(path, name=name)
    network = folded.model.network
    calib = as_pixels(calib, network.input_shape)
    if len(calib) == 0:
        raise ValueError("no calibration images; pass a few hundred typical inputs")
    quant = input_quant(folded, convention)
    params, pct, _ = quantize.calibrate(folded.model, calib, None, percentiles, quant=quant,
                                        weight_scales=folded.weight_scales)
    scales = quantize.activation_scales(folded.model, calib, pct, quant=quant)
    sqnr = quantize.stage_sqnr(folded.model, params, calib, scales, quant=quant)
    if board is not None:
        check_fits(network, params, board)
    meta = {
        "source": Path(path).name, "sha256": hashlib.sha256(raw).hexdigest(),
        "opset": folded.opset, "input": quant.to_dict(), "input_scale": quant.lsb,
        "activation_scales": [float(s) for s in scales], "percentile": pct,
        "weight_scales": ["onnx" if s is not None else "calibrated"
                          for s in folded.weight_scales],
        "calib_images": len(calib), "layers": layer_rows(network, sqnr),
        "notes": list(folded.notes),
    }
    return network, params, meta


def reference_logits(path, images, *, convention="unit", batch_size=256):
    """ONNX Runtime's float output for uint8 ``images`` ``(N, C, H, W)``: ``(N, -1)``.

    ``convention`` turns pixels into the model's input (``p / 255`` or ``p``); a graph
    exported for a fixed batch size runs in chunks of that size.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1           # a shared machine; small models gain nothing
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) else None
    x = np.asarray(images).astype(np.float32) / np.float32(mnist.CONVENTIONS[convention])
    if all(isinstance(d, int) for d in inp.shape[1:]):
        x = x.reshape((len(x),) + tuple(inp.shape[1:]))     # (N, H, W) for one channel
    step = fixed or batch_size
    out = []
    for i in range(0, len(x), step):
        chunk = x[i:i + step]
        if fixed and len(chunk) < fixed:    # a graph exported for a fixed batch: pad it
            chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk),) + x.shape[1:],
                                                    np.float32)])
        y = session.run(None, {inp.name: chunk})[0]
        out.append(y.reshape(len(chunk), -1)[:len(x[i:i + step])])
    return np.concatenate(out)


def float_logits(folded, images, quant):
    """The folded float model's output ``(N, -1)`` on uint8 ``images`` (before int8)."""
    from .train import single_blas_thread
    x = as_pixels(images, folded.model.network.input_shape)
    with single_blas_thread():
        return folded.model.forward(quant.to_float(x))


def evaluate(path, network, params, meta, images, labels=None):
    """Float (ONNX Runtime) against int8 (golden model) on uint8 ``images``.

    Returns ``{"images", "agreement", "accuracy_float", "accuracy_int8"}``: agreement is
    the fraction of images whose int8 argmax equals ONNX Runtime's; the accuracies are
    None without ``labels``. The int8 logits come from
    :func:`.quantize.forward_int8_batch`, bit-exact with :func:`.network.run_network`.
    """
    quant = mnist.InputQuant.from_dict(meta.get("input"))
    x = as_pixels(images, network.input_shape)
    ref = reference_logits(path, x, convention=quant.convention).argmax(axis=1)
    got = quantize.forward_int8_batch(network, params, quant.to_int8(x)).argmax(axis=1)
    result = {"images": len(x), "agreement": float(np.mean(ref == got)),
              "accuracy_float": None, "accuracy_int8": None}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(x):
            raise ValueError(f"{len(x)} images but {len(labels)} labels")
        result["accuracy_float"] = float(np.mean(ref == labels))
        result["accuracy_int8"] = float(np.mean(got == labels))
    return result
