"""``fpgacnn infer``: classify image files on a board (or the simulated board)."""

import contextlib
import json
import sys
from pathlib import Path

import numpy as np

from . import add_baud_argument, board_config


#: Outputs printed per image (a network may end in a whole map; --json has all of them).
_SHOWN = 16


def configure(parser):
    parser.add_argument("--port", default=None,
                        help="serial port of the board (/dev/ttyUSB1) or the simulated "
                             "board's URL (socket://127.0.0.1:9000, see `fpgacnn sim-board`); "
                             "default: start the embedded simulated board for --board")
    parser.add_argument("--board", default="icebreaker",
                        help="board the embedded simulated board is built for, without "
                             "--port (default icebreaker)")
    parser.add_argument("--model", type=Path, default=None,
                        help="model file (.npz from `fpgacnn train` or `fpgacnn import`; "
                             "default: the shipped LeNet-5)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help='also write {"model", "classes", "logits"} as JSON to PATH')
    parser.add_argument("--timeout", type=float, default=5.0,
                        help="seconds to wait for any one answer of the board (default 5)")
    add_baud_argument(parser, "the board's build: the serial port opens at it, the "
                              "embedded simulated board runs at it")
    parser.add_argument("--taps", nargs="*", type=int, default=None, metavar="STAGE",
                        help="also read the output map of these stages (default with no "
                             "number: every stage) and print where the board and the golden "
                             "model first differ")
    parser.add_argument("images", nargs="+", type=Path,
                        help="grey (or, for a 3-channel model, RGB) PNGs, .npy arrays "
                             "(uint8 pixels (N,H,W)/(N,C,H,W), or int8) or MNIST IDX image "
                             "files (.gz or raw), of the model's input size")


def load_model_file(path=None, *, say=print):
    """``(network, params, meta, description)`` from ``path`` or the shipped LeNet-5.

    Without the shipped file (not trained yet), falls back to seeded random weights and
    says so: the hardware path still works, the accuracy is then meaningless.
    """
    from ..sw import modelfile
    from ..sw import network as nets
    if path is not None:
        net, params, meta = modelfile.load(path)
        return net, params, meta, str(path)
    try:
        net, params, meta = modelfile.load_default()
        return net, params, meta, "shipped LeNet-5"
    except FileNotFoundError:
        say("NOTE: the trained LeNet-5 model file is not available; using random weights "
            "(seed 0), so the classes are meaningless. Train one with `fpgacnn train`.")
        net = nets.lenet5()
        return net, nets.random_params(net, 0), {}, "random LeNet-5 (untrained)"


def load_model(path=None, *, say=print):
    """``(network, params, description)``: :func:`load_model_file` without the metadata."""
    net, params, _, what = load_model_file(path, say=say)
    return net, params, what


def read_images(path, channels=1):
    """One file → ``(uint8 or int8 array (N, ...), names)``.

    PNGs are read as grey, or as RGB ``(3, H, W)`` for a model with ``channels == 3``.
    """
    from ..sw import mnist
    suffix = "".join(path.suffixes[-2:]).lower()
    if not path.is_file():
        raise FileNotFoundError(f"image file {path} does not exist")
    if path.suffix.lower() == ".png":
        from PIL import Image
        with Image.open(path) as img:
            if channels == 3:
                x = np.asarray(img.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
            elif channels == 1:
                x = np.asarray(img.convert("L"), dtype=np.uint8)
            else:
                raise ValueError(f"{path}: PNGs hold 1 or 3 channels, the model takes "
                                 f"{channels}; pass .npy arrays (N, {channels}, H, W)")
        return x[None], [path.name]
    if path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False)
    elif "idx" in path.name.lower() or suffix.endswith(".gz"):
        x = mnist.load_idx(path)
    else:
        raise ValueError(f"{path}: unknown image format; use .png, .npy or an MNIST IDX file")
    if x.ndim == 0 or x.size == 0:
        raise ValueError(f"{path}: holds {'a single value' if x.ndim == 0 else 'no images'} "
                         f"(shape {x.shape}); save images as (N, H, W) or (N, C, H, W)")
    if x.ndim == 2:
        x = x[None]
    names = [path.name] if len(x) == 1 else [f"{path.name}[{i}]" for i in range(len(x))]
    return x, names


def read_batch(paths, channels=1):
    """Image files → ``(one array (N, ...), names)``; all files must be of one kind."""
    images, names = [], []
    for path in paths:
        x, n = read_images(path, channels)
        images.append(x)
        names += n
    shapes = {x.shape[1:] for x in images}
    dtypes = {x.dtype for x in images}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise ValueError(f"the images differ in shape/dtype ({shapes}, {dtypes}); "
                         f"pass files of one kind (e.g. 28x28 uint8 digits)")
    return np.concatenate(images), names


def _classify(args, net, params, quant, batch, what):
    from ..sw.driver import Accelerator
    with contextlib.ExitStack() as stack:
        url, timeout = args.port, args.timeout
        config = board_config(args.board, args.baud)
        if url is None:         # no hardware: the embedded simulated board
            from ..sim.simboard import SimBoard
            url, timeout = stack.enter_context(SimBoard(config)).url, max(timeout, 30)
        acc = stack.enter_context(Accelerator.open(url, timeout=timeout, baud=config.baud))
        info = acc.identify()
        where = "simulated board" if args.port is None else "board"
        print(f"{where}: {info.describe()}; model: {what}")
        acc.load(net, params, input_quant=quant)
        maps = None
        if args.taps is None:
            classes, logits = acc.infer(batch)
        else:
            taps = args.taps or range(len(net.stages()))
            classes, logits, maps = acc.infer(batch, taps=taps)
        if acc.retries:
            print(f"note: {acc.retries} request(s) repeated after a damaged frame or a lost "
                  f"answer (the results are complete and checked)")
        return classes, logits, acc.counters[:, 0], maps


def run(args):
    import math
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        print(f"error: --timeout {args.timeout:g}: give a positive number of seconds",
              file=sys.stderr)
        return 2
    from ..sim.simboard import SimBoardError
    from ..sw import mnist
    from ..sw.driver import DriverError, prepare_images
    try:
        net, params, meta, what = load_model_file(args.model)
        quant = mnist.InputQuant.from_dict(meta.get("input"))
        raw, names = read_batch(args.images, net.input_shape[0])
        batch = prepare_images(raw, net.input_shape, quant)     # checked before sending
        classes, logits, cycles, maps = _classify(args, net, params, quant, batch, what)
    except (DriverError, SimBoardError, ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    width = max(len(n) for n in names)
    print(f"{'image':<{width}}  class  logits")
    for name, c, row in zip(names, classes, logits):
        more = f" ... ({len(row)} values, all in --json)" if len(row) > _SHOWN else ""
        print(f"{name:<{width}}  {c:>5}  {' '.join(f'{v:4d}' for v in row[:_SHOWN])}{more}")
    print(f"{len(names)} image(s), {int(np.mean(cycles)):,} core cycles per image")
    if maps is not None:
        from ..sw.taps import describe_taps
        print("\n".join(describe_taps(net, params, batch, maps, names)))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "model": what, "images": names, "classes": [int(c) for c in classes],
            "logits": logits.astype(int).tolist()}, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0
