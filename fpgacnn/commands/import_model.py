"""``fpgacnn import``: an ONNX model (PyTorch, Keras via tf2onnx) → a calibrated int8 model file.

Reads and folds the graph (:mod:`fpgacnn.sw.onnx_graph`), calibrates the activation
scales on ``--calib`` images with the project's quantiser, prints one row per layer
(output shape, MACs, int8-vs-float SQNR), checks that the result fits ``--board``, and
only then writes the ``.npz`` that ``fpgacnn infer --model`` runs. With ``--eval`` and
``--labels`` it also measures float (ONNX Runtime) and int8 (golden model) accuracy.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from . import add_board_argument

#: Calibration images used at most (the first N of ``--calib``).
DEFAULT_CALIB = 256


def configure(parser):
    parser.add_argument("model", type=Path, help="the .onnx file (float or QDQ)")
    parser.add_argument("--calib", type=Path, nargs="+", required=True, metavar="IMAGES",
                        help="calibration images, as `fpgacnn infer` takes them (PNGs, .npy "
                             "uint8 (N,H,W)/(N,C,H,W), MNIST IDX), in the model's input size")
    parser.add_argument("--calib-images", type=int, default=DEFAULT_CALIB, metavar="N",
                        help=f"use the first N calibration images (default {DEFAULT_CALIB})")
    parser.add_argument("--eval", type=Path, nargs="+", metavar="IMAGES",
                        help="held-out images: compare int8 with ONNX Runtime's float output")
    parser.add_argument("--labels", type=Path, metavar="LABELS",
                        help="labels of --eval (.npy, MNIST IDX labels, or text one per line)")
    parser.add_argument("--raw-pixels", action="store_true",
                        help="the model takes raw 0..255 pixels (default: pixel / 255, "
                             "torchvision ToTensor)")
    add_board_argument(parser, "compile for: the model must fit it")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.npz",
                        help="model file to write (only if the model fits)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write {fits, board, layers, parameters, macs, calib_images, "
                             "accuracy_float, accuracy_int8, agreement} as JSON")


def read_labels(path):
    """Integer labels from a .npy, an MNIST IDX labels file or text (one per line)."""
    from ..sw import mnist
    if not path.is_file():
        raise FileNotFoundError(f"labels file {path} does not exist")
    if path.suffix.lower() == ".npy":
        y = np.load(path, allow_pickle=False)
    elif "idx" in path.name.lower() or path.suffix.lower() == ".gz":
        y = mnist.load_idx(path)
    else:
        try:
            y = np.loadtxt(path, dtype=np.int64, ndmin=1)
        except ValueError as e:
            raise ValueError(f"{path}: not one integer label per line ({e})") from None
    if y.dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, not {y.dtype}")
    return y.reshape(-1).astype(np.int64)


def _images(paths, channels, limit=None):
    from .infer import read_batch
    x, _ = read_batch(paths, channels)
    if x.dtype != np.uint8:
        raise ValueError(f"images must be uint8 pixels 0..255, not {x.dtype} (int8 arrays "
                         f"are already quantised; the model's float input needs pixels)")
    return x if limit is None else x[:limit]


def print_table(rows):
    print(f"{'#':>2}  {'layer':<34} {'output':>12} {'MACs':>10} {'SQNR dB':>8}")
    for i, r in enumerate(rows):
        shape = "x".join(map(str, r["output_shape"]))
        print(f"{i:>2}  {r['layer']:<34} {shape:>12} {r['macs']:>10,} {r['sqnr_db']:>8.1f}")


def _report(args, network, meta, fits, result):
    report = {
        "fits": fits, "board": args.board, "layers": meta["layers"],
        "parameters": network.parameters, "macs": network.macs,
        "calib_images": meta["calib_images"],
        "accuracy_float": result.get("accuracy_float"),
        "accuracy_int8": result.get("accuracy_int8"),
        "agreement": result.get("agreement"),
    }
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


def _evaluate(args, network, params, meta):
    from ..sw import onnx_import
    if args.eval is None:
        return {}
    images = _images(args.eval, network.input_shape[0])
    labels = None if args.labels is None else read_labels(args.labels)
    result = onnx_import.evaluate(args.model, network, params, meta, images, labels)
    line = f"held-out {result['images']} images: int8 argmax agrees with ONNX Runtime on " \
           f"{result['agreement']:.2%}"
    if labels is not None:
        line += (f"; accuracy float {result['accuracy_float']:.2%} (ONNX Runtime), int8 "
                 f"{result['accuracy_int8']:.2%} (golden model)")
    print(line)
    return result


def run(args):
    from ..sw import modelfile, onnx_import
    if args.calib_images < 1:
        print(f"error: --calib-images must be at least 1, not {args.calib_images}",
              file=sys.stderr)
        return 2
    if args.labels is not None and args.eval is None:
        print("error: --labels needs --eval (the images they label)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        for out in (args.out, args.json):       # a bad output path fails before the work
            if out is not None:
                out.parent.mkdir(parents=True, exist_ok=True)
        folded, _ = onnx_import.read(args.model)
        network = folded.model.network
        calib = _images(args.calib, network.input_shape[0], args.calib_images)
        network, params, meta = onnx_import.load(
            args.model, calib, convention="raw" if args.raw_pixels else "unit", board=None)
        print(f"{args.model}: opset {meta['opset']}, input {network.input_shape}, "
              f"{network.parameters:,} parameters, {network.macs:,} MACs; calibrated on "
              f"{meta['calib_images']} images (activation percentile {meta['percentile']})")
        for note in meta["notes"]:
            print(f"note: {note}")
        print_table(meta["layers"])
        try:
            onnx_import.check_fits(network, params, args.board)
        except onnx_import.ModelDoesNotFit as e:
            _report(args, network, meta, False, {})
            print(f"error: {e}; nothing written", file=sys.stderr)
            return 1
        result = _evaluate(args, network, params, meta)
    except (onnx_import.UnsupportedModel, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta.update({k: result[k] for k in ("accuracy_float", "accuracy_int8", "agreement")
                 if k in result})
    meta["import_seconds"] = round(time.monotonic() - t0, 2)
    try:
        path = modelfile.save(args.out, network, params, meta)
        print(f"fits {args.board}; wrote {path} in {meta['import_seconds']} s "
              f"(run it: fpgacnn infer --model {path} IMAGES)")
        _report(args, network, meta, True, result)
    except OSError as e:
        print(f"error: cannot write {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return 0
