"""Float training of a network description in NumPy only (no deep-learning framework).

The float model mirrors the integer semantics of :mod:`.network` stage by stage:
Conv/FC → ReLU? → max-pool?, with the same cross-correlation, padding, flattening order
(C, H, W) and weight shapes, so :mod:`.quantize` can turn it into int8 parameters for
the golden model without any re-ordering.

Convolution is an im2col matrix product (``(N·H2·W2) × (C·F·F)`` patches times the
``K × (C·F·F)`` weight matrix, ``d = (c, fy, fx)`` in C order as in the accelerator);
its backward pass is the transposed product and a col2im scatter-add over the F×F
kernel offsets. Inputs are ``pixel / 255`` (:func:`.mnist.image_to_float`), whose int8
counterpart ``pixel >> 1`` has scale 2/255.

Training is deterministic for a given seed: initialisation, shuffling and the random
±``shift`` pixel translations all draw from one ``numpy.random.Generator``, and the BLAS
runs single-threaded during training (threads would split the float32 sums differently
with the thread count; at these matrix sizes a second thread buys little, and on a busy
machine spinning BLAS threads are many times slower).
"""

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from . import mnist
from .network import Network

__all__ = [
    "im2col", "col2im", "conv_forward", "conv_backward", "pool_forward", "pool_backward",
    "fc_forward", "fc_backward", "relu_forward", "relu_backward",
    "softmax_cross_entropy", "single_blas_thread", "FloatModel", "init_model", "random_shift", "Adam", "train",
    "DEFAULT_EPOCHS", "DEFAULT_SEED",
]

DEFAULT_EPOCHS = 30
DEFAULT_SEED = 1


def single_blas_thread():
    """Context manager: run BLAS on one thread (see the module docstring for why)."""
    return threadpool_limits(limits=1, user_api="blas")


# ---------------------------------------------------------------------------------------
# Layer primitives on batches: x has shape (N, C, H, W) for conv/pool, (N, D) for fc.

def im2col(x, kernel, stride, pad):
    """Patches of ``x`` (N, C, H, W) as a ``(N·H2·W2, C·F·F)`` matrix, ``d = (c, fy, fx)``."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    h2 = (h + 2 * pad - kernel) // stride + 1
    w2 = (w + 2 * pad - kernel) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (kernel, kernel), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :h2, :w2]        # (N, C, H2, W2, F, F)
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h2 * w2, c * kernel * kernel)
    return cols, (h2, w2)


def col2im(dcols, x_shape, kernel, stride, pad):
    """Adjoint of :func:`im2col`: scatter-add patch gradients back onto the input."""
    n, c, h, w = x_shape
    h2 = (h + 2 * pad - kernel) // stride + 1
    w2 = (w + 2 * pad - kernel) // stride + 1
    d = dcols.reshape(n, h2, w2, c, kernel, kernel).transpose(0, 3, 4, 5, 1, 2)
    dxp = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=dcols.dtype)
    for fy in range(kernel):
        for fx in range(kernel):
            dxp[:, :, fy:fy + stride * h2:stride, fx:fx + stride * w2:stride] += d[:, :, fy, fx]
    return dxp[:, :, pad:pad + h, pad:pad + w] if pad else dxp


def conv_forward(x, weight, bias, stride=1, pad=0):
    """Cross-correlation ``(N, C, H, W) ⋆ (K, C, F, F) + b`` → ``(N, K, H2, W2)``, cache."""
    n = x.shape[0]
    k, _, f, _ = weight.shape
    cols, (h2, w2) = im2col(x, f, stride, pad)
    y = cols @ weight.reshape(k, -1).T + bias
    y = y.reshape(n, h2, w2, k).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(y), (x.shape, cols, weight, stride, pad)


def conv_backward(dy, cache):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv_forward`."""
    x_shape, cols, weight, stride, pad = cache
    k, _, f, _ = weight.shape
    dym = dy.transpose(0, 2, 3, 1).reshape(-1, k)
    dweight = (dym.T @ cols).reshape(weight.shape)
    dbias = dym.sum(axis=0)
    dx = col2im(dym @ weight.reshape(k, -1), x_shape, f, stride, pad)
    return dx, dweight, dbias


def pool_forward(x, kernel, stride):
    """Max over ``kernel×kernel`` windows at ``stride``; ties go to the first offset."""
    h, w = x.shape[2:]
    h2 = (h - kernel) // stride + 1
    w2 = (w - kernel) // stride + 1
    y = arg = None
    for i, (fy, fx) in enumerate(np.ndindex(kernel, kernel)):
        v = x[:, :, fy:fy + stride * h2:stride, fx:fx + stride * w2:stride]
        if y is None:
            y, arg = v.copy(), np.zeros(v.shape, dtype=np.int8)
        else:
            better = v > y
            y = np.where(better, v, y)
            arg[better] = i
    return y, (x.shape, arg, kernel, stride)


def pool_backward(dy, cache):
    """Route each window's gradient to the element :func:`pool_forward` picked."""
    x_shape, arg, kernel, stride = cache
    h2, w2 = arg.shape[2:]
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for i, (fy, fx) in enumerate(np.ndindex(kernel, kernel)):
        dx[:, :, fy:fy + stride * h2:stride, fx:fx + stride * w2:stride] += \
            np.where(arg == i, dy, 0)
    return dx


def fc_forward(x, weight, bias):
    """``x.reshape(N, -1) @ weight.T + bias``; flattening is (C, H, W) C order."""
    xf = x.reshape(x.shape[0], -1)
    return xf @ weight.T + bias, (x.shape, xf, weight)


def fc_backward(dy, cache):
    x_shape, xf, weight = cache
    return (dy @ weight).reshape(x_shape), dy.T @ xf, dy.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x > 0


def relu_backward(dy, mask):
    return dy * mask


def softmax_cross_entropy(logits, labels):
    """Mean cross-entropy of ``logits`` (N, K) against integer labels; returns (loss, dlogits)."""
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = len(labels)
    loss = -logp[np.arange(n), labels].mean()
    dlogits = np.exp(logp)
    dlogits[np.arange(n), labels] -= 1
    return loss, dlogits / n


# ---------------------------------------------------------------------------------------
# A float model of a Network.

@dataclass
class FloatModel:
    """Float weights and biases of every stage of ``network`` (weight shapes as in Stage)."""
    network: Network
    weights: list
    biases: list
    history: list = field(default_factory=list)   # mean training loss per epoch

    def forward(self, x, *, outputs=False):
        """Logits ``(N, K)`` for float inputs ``(N, C, H, W)``.

        With ``outputs=True`` also return each stage's output after ReLU and before
        pooling (what requantisation must represent, used for calibration).
        """
        logits, cache = _forward(self.network.stages(), self.weights, self.biases, x)
        if outputs:
            return logits, [c["pre_pool"] for c in cache]
        return logits

    def predict(self, images, *, batch_size=500):
        """Class of each uint8 image ``(N, 28, 28)`` (or ``(N, C, H, W)``)."""
        x = _as_batch(self.network, mnist.image_to_float(images))
        with single_blas_thread():
            return np.concatenate([self.forward(x[i:i + batch_size]).argmax(axis=1)
                                   for i in range(0, len(x), batch_size)])

    def accuracy(self, images, labels):
        return float(np.mean(self.predict(images) == np.asarray(labels)))


def _as_batch(network, x):
    shape = tuple(network.input_shape)
    if x.shape[1:] != shape:
        x = x.reshape((len(x),) + shape)
    return x


def _forward(stages, weights, biases, x):
    cache = []
    for stage, w, b in zip(stages, weights, biases):
        c = {}
        if stage.kind == "conv":
            x, c["conv"] = conv_forward(x, w, b, stage.stride, stage.pad)
        else:
            x, c["fc"] = fc_forward(x, w, b)
        if stage.relu:
            x, c["relu"] = relu_forward(x)
        c["pre_pool"] = x
        if stage.pool is not None:
            x, c["pool"] = pool_forward(x, *stage.pool)
        cache.append(c)
    return x.reshape(len(x), -1), cache


def _backward(stages, cache, dlogits):
    grads = []
    dx = dlogits
    for stage, c in zip(reversed(stages), reversed(cache)):
        if "pool" in c:
            dx = pool_backward(dx.reshape(c["pool"][1].shape), c["pool"])
        if "relu" in c:
            dx = relu_backward(dx.reshape(c["relu"].shape), c["relu"])
        if "conv" in c:
            dx, dw, db = conv_backward(dx, c["conv"])
        else:
            dx, dw, db = fc_backward(dx.reshape(len(dx), -1), c["fc"])
        grads.append((dw, db))
    return grads[::-1]


def loss_and_grads(model, x, labels):
    """Mean cross-entropy on a float batch and the gradients ``[(dW, db), ...]``."""
    stages = model.network.stages()
    logits, cache = _forward(stages, model.weights, model.biases, x)
    loss, dlogits = softmax_cross_entropy(logits, labels)
    return loss, _backward(stages, cache, dlogits)


def init_model(network, rng, dtype=np.float32):
    """He-normal weights (fan-in ``C·F·F``), zero biases."""
    weights, biases = [], []
    for stage in network.stages():
        std = np.sqrt(2.0 / stage.reduction)
        weights.append((rng.standard_normal(stage.weight_shape) * std).astype(dtype))
        biases.append(np.zeros(stage.out_channels, dtype=dtype))
    return FloatModel(network, weights, biases)


def random_shift(images, rng, shift):
    """Translate each ``(N, H, W)`` image by its own random ``dy, dx ∈ [-shift, shift]``.

    Pixels shifted in from outside are zero (MNIST background).
    """
    if shift == 0:
        return images
    n, h, w = images.shape
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift)))
    dy, dx = rng.integers(-shift, shift + 1, (2, n))
    rows = (np.arange(h)[None, :] + shift - dy[:, None])[:, :, None]
    cols = (np.arange(w)[None, :] + shift - dx[:, None])[:, None, :]
    return padded[np.arange(n)[:, None, None], rows, cols]


_TINY = np.float32(1e-30)


class Adam:
    """Adam (Kingma & Ba) with decoupled weight decay on weights (not biases)."""

    def __init__(self, model, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.params = [p for pair in zip(model.weights, model.biases) for p in pair]
        self.decay = [weight_decay, 0.0] * len(model.weights)
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        flat = [g for pair in grads for g in pair]
        for p, g, m, v, wd in zip(self.params, flat, self.m, self.v, self.decay):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            # A unit whose gradient stays exactly zero (dead ReLU) decays its moments into
            # float32 subnormals, which are ~100x slower to compute with: flush them.
            m[np.abs(m) < _TINY] = 0
            v[v < _TINY] = 0
            if wd:
                p -= self.lr * wd * p
            p -= (self.lr / c1) * m / (np.sqrt(v / c2) + self.eps)


def train(network, images, labels, *, epochs=DEFAULT_EPOCHS, seed=DEFAULT_SEED,
          batch_size=64, lr=2e-3, weight_decay=1e-4, shift=2, progress=True):
    """Train ``network`` on uint8 ``images`` (N, 28, 28) with integer ``labels``.

    Adam with a cosine learning-rate schedule from ``lr`` to ~0 over all epochs, random
    ±``shift`` pixel translations per image and epoch. A tqdm bar per epoch shows the
    running loss when ``progress``. Returns a :class:`FloatModel` whose ``history`` holds
    each epoch's mean loss.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise TypeError(f"images must be uint8 (N, H, W), not {images.dtype} {images.shape}")
    if len(labels) != len(images):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    n_classes = network.output_shape[0]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(f"labels must lie in 0..{n_classes - 1}, got "
                         f"{labels.min()}..{labels.max()}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, not {epochs!r}")
    with single_blas_thread():
        return _train(network, images, labels.astype(np.int64), epochs=epochs, seed=seed,
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, shift=shift,
                      progress=progress)


def _train(network, images, labels, *, epochs, seed, batch_size, lr, weight_decay, shift,
           progress):
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    model = init_model(network, rng)
    opt = Adam(model, lr=lr, weight_decay=weight_decay)
    n_batches = -(-len(images) // batch_size)
    total = epochs * n_batches
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, dynamic_ncols=True)
        losses = []
        for b in bar:
            step = epoch * n_batches + b
            opt.lr = lr * 0.5 * (1 + np.cos(np.pi * step / total))
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = mnist.image_to_float(random_shift(images[idx], rng, shift))
            loss, grads = loss_and_grads(model, _as_batch(network, x), labels[idx])
            opt.step(grads)
            losses.append(float(loss))
            if b % 8 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-32:]):.4f}")
        bar.close()
        model.history.append(float(np.mean(losses)))
    return model
