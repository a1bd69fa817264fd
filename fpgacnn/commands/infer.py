"""``fpgacnn infer``: classify image files on a board (or the simulated board)."""

import sys
from pathlib import Path

import numpy as np


def configure(parser):
    from ..hw.config import DEFAULT_BAUD
    parser.add_argument("--port", required=True,
                        help="serial port of the board (/dev/ttyUSB1) or the simulated "
                             "board's URL (socket://127.0.0.1:9000, see `fpgacnn sim-board`)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (.npz from `fpgacnn train`; default: the shipped "
                             "LeNet-5)")
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for any one answer of the board (default 5)")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help=f"serial baud rate of the board's build (default {DEFAULT_BAUD})")
    parser.add_argument("images", nargs="+", type=Path,
                        help="28x28 grey PNGs, .npy arrays (uint8 pixels or int8) or MNIST "
                             "IDX image files (.gz or raw)")


def load_model(path=None, *, say=print):
    """``(network, params, description)`` from ``path`` or the shipped LeNet-5.

    Without the shipped file (not trained yet), falls back to seeded random weights and
    says so: the hardware path still works, the accuracy is then meaningless.
    """
    from ..sw import modelfile
    from ..sw import network as nets
    if path is not None:
        net, params, _ = modelfile.load(path)
        return net, params, str(path)
    try:
        net, params, _ = modelfile.load_default()
        return net, params, "shipped LeNet-5"
    except FileNotFoundError:
        say("NOTE: the trained LeNet-5 model file is not available; using random weights "
            "(seed 0), so the classes are meaningless. Train one with `fpgacnn train`.")
        net = nets.lenet5()
        return net, nets.random_params(net, 0), "random LeNet-5 (untrained)"


def read_images(path):
    """One file → ``(uint8 or int8 array (N, ...), names)``."""
    from ..sw import mnist
    suffix = "".join(path.suffixes[-2:]).lower()
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if path.suffix.lower() == ".png":
        from PIL import Image
        with Image.open(path) as img:
            x = np.asarray(img.convert("L"), dtype=np.uint8)
        return x[None], [path.name]
    if path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False)
    elif "idx" in path.name.lower() or suffix.endswith(".gz"):
        x = mnist.load_idx(path)
    else:
        raise ValueError(f"{path}: unknown image format; use .png, .npy or an MNIST IDX file")
    if x.ndim == 2:
        x = x[None]
    names = [path.name] if len(x) == 1 else [f"{path.name}[{i}]" for i in range(len(x))]
    return x, names


def run(args):
    from ..sw.driver import Accelerator, DriverError
    images, names = [], []
    try:
        for path in args.images:
            x, n = read_images(path)
            images.append(x)
            names += n
        shapes = {x.shape[1:] for x in images}
        dtypes = {x.dtype for x in images}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise ValueError(f"the images differ in shape/dtype ({shapes}, {dtypes}); "
                             f"pass files of one kind (e.g. 28x28 uint8 digits)")
        batch = np.concatenate(images)
        net, params, what = load_model(args.model)
        with Accelerator.open(args.port, timeout=args.timeout, baud=args.baud) as acc:
            info = acc.identify()
            print(f"board: {info.describe()}; model: {what}")
            acc.load(net, params)
            classes, logits = acc.infer(batch)
            cycles = acc.counters[:, 0]
    except (DriverError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    print(f"{'image':<{width}}  class  logits")
    for name, c, row in zip(names, classes, logits):
        print(f"{name:<{width}}  {c:>5}  {' '.join(f'{v:4d}' for v in row)}")
    print(f"{len(names)} image(s), {int(np.mean(cycles)):,} core cycles per image")
    return 0
