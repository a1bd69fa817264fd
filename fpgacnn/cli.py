"""The ``fpgacnn`` command: one subcommand per user workflow.

Each subcommand lives in its own module, next to the code it drives, and exposes
``configure(parser)`` (add its arguments) and ``run(args) -> int`` (exit status).
Modules are imported only when their command runs, so ``fpgacnn --help`` is instant.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS = {
    "demo": ("fpgacnn.commands.demo", "LeNet-5 on held-out MNIST digits, end to end"),
    "build": ("fpgacnn.commands.build",
              "build a board's bitstream; report LUT/DSP/RAM use and Fmax"),
    "program": ("fpgacnn.commands.program",
                "load a built bitstream into a board (SRAM, or --flash) with openFPGALoader"),
    "describe": ("fpgacnn.commands.describe",
                 "print a network's layers, shapes, parameters and MACs"),
    "sim-board": ("fpgacnn.commands.sim_board",
                  "run the simulated board (Verilator) on a local TCP port"),
    "infer": ("fpgacnn.commands.infer",
              "classify image files (PNG, .npy, MNIST IDX) on a board or the simulated one"),
    "bench": ("fpgacnn.commands.bench",
              "measure cycles, throughput, Fmax and utilisation against the limits"),
    "train": ("fpgacnn.commands.train",
              "train LeNet-5 on MNIST (NumPy), quantise to int8, write a model file"),
    "import": ("fpgacnn.commands.import_model", "ONNX model (PyTorch, Keras) -> int8 model"),
}


def build_parser():
    parser = argparse.ArgumentParser(
        prog="fpgacnn",
        description="int8 CNN accelerator for open FPGAs: simulate, build bitstreams, "
                    "and run inference from the host.",
        epilog="Run `fpgacnn COMMAND --help` for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).configure(p)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return importlib.import_module(args._module).run(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
