"""Train LeNet-5 in PyTorch on the project's MNIST digits, export ONNX, import it for the board.

PyTorch is optional (``make`` does not install it)::

    .venv/bin/pip install torch          # CPU wheel; torchvision is not needed
    .venv/bin/python examples/pytorch_lenet5.py --out build/lenet5_torch.onnx

The model is a plain ``torch.nn.Sequential`` as users write it: a torchvision-style
``Normalize`` (mean 0.1307, std 0.3081) inside the model, convolutions with
BatchNormalization, ReLU, max-pooling, ``Flatten``, ``Dropout`` and linear layers. It
trains on the 4,000 training digits of :func:`fpgacnn.sw.mnist.split` (inputs
``pixel / 255``, as ``ToTensor`` makes them), reports float accuracy on the 1,000
held-out digits, and exports ONNX (opset 17, batch dimension dynamic). When fpgacnn's
own dependencies (onnx, onnxruntime) are importable it then imports the file exactly as
``fpgacnn import`` does and prints float and int8 accuracy; otherwise it prints the
``fpgacnn import`` command to run.

``tests/data/lenet5_torch.onnx`` was made with this script (defaults, torch 2.13 CPU).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from fpgacnn.sw import mnist
from torch import nn


class Normalize(nn.Module):
    """torchvision.transforms.Normalize as a layer: ``(x - mean) / std`` per channel."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def lenet5():
    """LeNet-5 as in ``fpgacnn.sw.network.lenet5`` (28×28 input padded by 2), plus BN."""
    return nn.Sequential(
        Normalize([0.1307], [0.3081]),
        nn.Conv2d(1, 6, 5, padding=2), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(84, 10),
    )


def to_tensor(images):
    """uint8 (N, 28, 28) → float (N, 1, 28, 28) in 0..1 (torchvision ToTensor)."""
    return torch.from_numpy(images.astype(np.float32) / 255).unsqueeze(1)


def train(model, x, y, *, epochs, seed):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * (-(-len(x) // 64)))
    xs, ys = to_tensor(x), torch.from_numpy(y.astype(np.int64))
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(xs))
        total = 0.0
        for i in range(0, len(xs), 64):
            idx = order[i:i + 64]
            loss = nn.functional.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: loss {total / len(xs):.4f}")
    return model.eval()


def accuracy(model, x, y):
    with torch.no_grad():
        return float((model(to_tensor(x)).argmax(1).numpy() == y).mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/lenet5_torch.onnx"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    (train_x, train_y), (held_x, held_y) = mnist.split()
    t0 = time.monotonic()
    model = train(lenet5(), train_x, train_y, epochs=args.epochs, seed=args.seed)
    print(f"trained in {time.monotonic() - t0:.0f} s; float held-out accuracy (PyTorch) "
          f"{accuracy(model, held_x, held_y):.2%}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (to_tensor(held_x[:1]),), str(args.out), dynamo=False,
                      opset_version=17, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}})
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes)")
    try:
        from fpgacnn.sw import onnx_import
        network, params, meta = onnx_import.load(args.out, train_x[:256])
    except ImportError:
        print("fpgacnn's onnx/onnxruntime are not installed here; import it with:\n"
              f"  fpgacnn import {args.out} --calib CALIB.npy --out build/lenet5_torch.npz")
        return
    result = onnx_import.evaluate(args.out, network, params, meta, held_x, held_y)
    print(f"imported: float {result['accuracy_float']:.2%} (ONNX Runtime), int8 "
          f"{result['accuracy_int8']:.2%} (golden model), agreement {result['agreement']:.2%}")


if __name__ == "__main__":
    main()
