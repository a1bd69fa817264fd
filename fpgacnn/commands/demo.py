"""``fpgacnn demo`` (interim): the golden model on held-out MNIST digits.

The hardware path (simulated board + host driver) replaces this once it exists.
"""

import numpy as np


def configure(parser):
    parser.add_argument("--images", type=int, default=100, help="held-out digits (default 100)")


def run(args):
    from ..sw import mnist, network
    net = network.lenet5()
    params = network.random_params(net, 0)
    x, y = mnist.heldout()
    x = mnist.image_to_int8(x[:args.images])
    logits = np.stack([run_network_one(net, params, img) for img in x])
    print(f"golden model: {len(x)} held-out digits through integer LeNet-5 "
          f"({net.parameters:,} parameters, {net.macs:,} MACs/image)")
    print(f"accuracy with untrained random weights: {np.mean(logits.argmax(1) == y[:len(x)]):.1%}")
    print("NOTE: the hardware path (simulated board, host driver) is not built yet.")
    return 0


def run_network_one(net, params, img):
    from ..sw.network import run_network
    return run_network(net, params, img[None])
