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

Augmentation (:func:`augment`) gives every image a fresh random distortion each epoch:
an affine map (rotation, scale, shear, shift) and optionally an elastic displacement
field, applied to the whole batch at once by inverse mapping with bilinear interpolation
(:func:`warp`). Training is deterministic for a given seed: initialisation, shuffling and
every augmentation draw come from one ``numpy.random.Generator``, and the BLAS
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
    "DEFAULT_AUGMENT",
    "DEFAULT_EPOCHS",
    "DEFAULT_SEED",
    "NO_AUGMENT",
    "Adam",
    "Augment",
    "FloatModel",
    "augment",
    "col2im",
    "conv_backward",
    "conv_forward",
    "elastic_field",
    "fc_backward",
    "fc_forward",
    "im2col",
    "init_model",
    "kfold",
    "learning_rate",
    "pool_backward",
    "pool_forward",
    "random_affine",
    "relu_backward",
    "relu_forward",
    "single_blas_thread",
    "softmax_cross_entropy",
    "train",
    "warp",
]

DEFAULT_EPOCHS = 80
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


def conv_backward(dy, cache, *, need_dx=True):
    """Gradients ``(dx, dweight, dbias)`` of :func:`conv_forward`.

    ``need_dx=False`` skips the input gradient (``dx`` is None): the first layer's is
    never used, and its col2im is the costliest step of a training batch.
    """
    x_shape, cols, weight, stride, pad = cache
    k, _, f, _ = weight.shape
    dym = dy.transpose(0, 2, 3, 1).reshape(-1, k)
    dweight = (dym.T @ cols).reshape(weight.shape)
    dbias = dym.sum(axis=0)
    dx = col2im(dym @ weight.reshape(k, -1), x_shape, f, stride, pad) if need_dx else None
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


def softmax_cross_entropy(logits, labels, smoothing=0.0):
    """Mean cross-entropy of ``logits`` (N, K) against integer labels; returns (loss, dlogits).

    With label ``smoothing`` ε the target puts ``1 - ε`` on the label and spreads ε evenly
    over all K classes.
    """
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n, k = logits.shape
    target = np.full(logits.shape, smoothing / k, dtype=logits.dtype)
    target[np.arange(n), labels] += 1 - smoothing
    loss = -(target * logp).sum(axis=1).mean()
    return loss, (np.exp(logp) - target) / n


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


def _backward(cache, dlogits):
    grads = []
    dx = dlogits
    for i, c in reversed(list(enumerate(cache))):
        if "pool" in c:
            dx = pool_backward(dx.reshape(c["pool"][1].shape), c["pool"])
        if "relu" in c:
            dx = relu_backward(dx.reshape(c["relu"].shape), c["relu"])
        if "conv" in c:
            dx, dw, db = conv_backward(dx, c["conv"], need_dx=i > 0)
        else:
            dx, dw, db = fc_backward(dx.reshape(len(dx), -1), c["fc"])
        grads.append((dw, db))
    return grads[::-1]


def loss_and_grads(model, x, labels, *, smoothing=0.0):
    """Mean cross-entropy (label ``smoothing``, see :func:`softmax_cross_entropy`) on a
    float batch and the gradients ``[(dW, db), ...]``."""
    stages = model.network.stages()
    logits, cache = _forward(stages, model.weights, model.biases, x)
    loss, dlogits = softmax_cross_entropy(logits, labels, smoothing)
    return loss, _backward(cache, dlogits)


def init_model(network, rng, dtype=np.float32):
    """He-normal weights (fan-in ``C·F·F``), zero biases."""
    weights, biases = [], []
    for stage in network.stages():
        std = np.sqrt(2.0 / stage.reduction)
        weights.append((rng.standard_normal(stage.weight_shape) * std).astype(dtype))
        biases.append(np.zeros(stage.out_channels, dtype=dtype))
    return FloatModel(network, weights, biases)


@dataclass(frozen=True)
class Augment:
    """Ranges of the random distortions :func:`augment` draws for every image and epoch.

    Each parameter is drawn uniformly from ``[-range, +range]``: ``rotate`` in degrees,
    ``scale`` as a fraction (``0.1`` is 90–110 %), ``shear`` as the factor of a horizontal
    shear, ``shift`` in pixels. ``elastic`` is the strength α of an elastic distortion
    (Simard et al., 2003: a uniform random displacement field smoothed by a Gaussian of
    ``elastic_sigma`` pixels, times α); 0 turns it off.
    """
    rotate: float = 12.0
    scale: float = 0.1
    shear: float = 0.15
    shift: float = 2.5
    elastic: float = 15.0
    elastic_sigma: float = 4.0

    def __post_init__(self):
        for name in ("rotate", "scale", "shear", "shift", "elastic"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"augmentation range {name} must be finite and >= 0, "
                                 f"not {value!r}")
        if not self.scale < 1 or not self.elastic_sigma > 0:
            raise ValueError(f"augmentation needs scale < 1 and elastic_sigma > 0, not "
                             f"{self.scale!r} and {self.elastic_sigma!r}")


#: No distortion at all: :func:`augment` then only converts to float.
NO_AUGMENT = Augment(rotate=0.0, scale=0.0, shear=0.0, shift=0.0, elastic=0.0)

#: The distortions :func:`train` applies unless told otherwise.
DEFAULT_AUGMENT = Augment()


def warp(images, inverse, offset, displacement=None):
    """Resample float images ``(N, H, W)`` through per-image affine maps, bilinearly.

    Output pixel ``p`` (row, column) reads the input at ``inverse[n] @ (p - c - offset[n])
    + c (+ displacement[n, :, p])``, ``c`` the image centre: ``inverse`` is the inverse of
    the linear part of the forward map, ``offset`` its translation in pixels. Samples
    outside the image read 0 (MNIST background). One gather per corner for the whole
    batch, no Python loop over images or pixels.

    Parameters
    ----------
    images : ndarray (N, H, W)
    inverse : ndarray (N, 2, 2)
    offset : ndarray (N, 2)
    displacement : ndarray (N, 2, H, W), optional
        Extra per-pixel source offsets (row, column), e.g. an elastic field.
    """
    n, h, w = images.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])[:, None]
    grid = np.indices((h, w)).reshape(2, -1) - centre                        # (2, H·W)
    src = np.matmul(inverse, grid[None] - np.asarray(offset)[:, :, None]) + centre
    if displacement is not None:
        src = src + displacement.reshape(n, 2, h * w)
    sy, sx = np.clip(src[:, 0], -1, h), np.clip(src[:, 1], -1, w)
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = (sy - y0).astype(np.float32), (sx - x0).astype(np.float32)
    # One zero row/column before and two after keep every corner inside the array.
    padded = np.pad(images.astype(np.float32), ((0, 0), (1, 2), (1, 2))).reshape(n, -1)
    row = w + 3
    base = (y0.astype(np.int64) + 1) * row + x0.astype(np.int64) + 1

    def at(step):
        return np.take_along_axis(padded, base + step, axis=1)

    out = (1 - fy) * ((1 - fx) * at(0) + fx * at(1)) + fy * ((1 - fx) * at(row) + fx * at(row + 1))
    return out.reshape(n, h, w)


def _gaussian(size, sigma):
    d = np.arange(size)[:, None] - np.arange(size)[None, :]
    return np.exp(-0.5 * (d / sigma) ** 2) / (np.sqrt(2 * np.pi) * sigma)


def random_affine(n, rng, aug):
    """``(inverse (N, 2, 2), offset (N, 2))`` of random maps within the ranges of ``aug``.

    Forward map: rotation · shear · isotropic scale, then a shift (see :func:`warp`).
    """
    theta = np.deg2rad(rng.uniform(-aug.rotate, aug.rotate, n))
    scale = 1 + rng.uniform(-aug.scale, aug.scale, n)
    shear = rng.uniform(-aug.shear, aug.shear, n)
    offset = rng.uniform(-aug.shift, aug.shift, (n, 2))
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.zeros((n, 2, 2))
    shearing[:, 0, 0] = shearing[:, 1, 1] = 1
    shearing[:, 1, 0] = shear                   # column += shear · row
    forward = rotation @ shearing * scale[:, None, None]
    return np.linalg.inv(forward), offset


def elastic_field(n, shape, rng, alpha, sigma):
    """Displacements ``(N, 2, H, W)``: uniform noise in [-1, 1] smoothed by a Gaussian of
    ``sigma`` pixels (separably, as two matrix products), times ``alpha``."""
    h, w = shape
    noise = rng.uniform(-1, 1, (n, 2, h, w))
    return alpha * (_gaussian(h, sigma) @ noise @ _gaussian(w, sigma).T)


def augment(images, rng, aug):
    """Randomly distorted float copies ``p / 255`` of uint8 ``images`` (N, H, W).

    Every image gets its own affine map (and elastic field when ``aug.elastic``), all
    drawn from ``rng`` in a fixed order, so a seed fixes the result.
    """
    x = mnist.image_to_float(images)
    if aug == NO_AUGMENT:
        return x
    n = len(x)
    inverse, offset = random_affine(n, rng, aug)
    field = elastic_field(n, x.shape[1:], rng, aug.elastic, aug.elastic_sigma) \
        if aug.elastic else None
    return warp(x, inverse, offset, field)


def kfold(n, folds):
    """``folds`` pairs ``(train_idx, test_idx)`` over ``range(n)`` for cross-validation.

    Fold ``i`` is the ``i``-th of ``folds`` contiguous, near-equal blocks (sizes differ by
    at most one); its training indices are all the others, in order. Shuffle the data
    beforehand: nothing here is random.
    """
    if not isinstance(folds, int) or not 2 <= folds <= n:
        raise ValueError(f"folds must be an integer in 2..{n} (the number of samples), "
                         f"not {folds!r}")
    blocks = np.array_split(np.arange(n), folds)
    return [(np.concatenate(blocks[:i] + blocks[i + 1:]), block)
            for i, block in enumerate(blocks)]


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
          batch_size=128, lr=3e-3, weight_decay=1e-4, warmup=1, smoothing=0.1,
          aug=DEFAULT_AUGMENT, progress=True):
    """Train ``network`` on uint8 ``images`` (N, 28, 28) with integer ``labels``.

    Adam with decoupled weight decay on the cross-entropy with label ``smoothing``; the
    learning rate rises linearly over the first ``warmup`` epochs, then follows a cosine
    from ``lr`` to ~0 over the rest. Every image is distorted afresh each epoch within
    the ranges of ``aug`` (:func:`augment`). A tqdm
    bar per epoch shows the running loss when ``progress``. Returns a :class:`FloatModel`
    whose ``history`` holds each epoch's mean loss.
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
                      batch_size=batch_size, lr=lr, weight_decay=weight_decay, warmup=warmup,
                      smoothing=smoothing, aug=aug, progress=progress)


def learning_rate(step, total, lr, warmup_steps):
    """Linear warm-up over ``warmup_steps``, then a cosine from ``lr`` down to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    return lr * 0.5 * (1 + np.cos(np.pi * (step - warmup_steps) / (total - warmup_steps)))


def _train(network, images, labels, *, epochs, seed, batch_size, lr, weight_decay, warmup,
           smoothing, aug, progress):
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    model = init_model(network, rng)
    opt = Adam(model, lr=lr, weight_decay=weight_decay)
    n_batches = -(-len(images) // batch_size)
    total = epochs * n_batches
    warmup_steps = min(warmup * n_batches, total - 1)
    for epoch in range(epochs):
        order = rng.permutation(len(images))
        bar = tqdm(range(n_batches), desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                   disable=not progress, dynamic_ncols=True)
        losses = []
        for b in bar:
            opt.lr = learning_rate(epoch * n_batches + b, total, lr, warmup_steps)
            idx = order[b * batch_size:(b + 1) * batch_size]
            x = augment(images[idx], rng, aug)
            loss, grads = loss_and_grads(model, _as_batch(network, x), labels[idx],
                                         smoothing=smoothing)
            opt.step(grads)
            losses.append(float(loss))
            if b % 8 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-32:]):.4f}")
        bar.close()
        model.history.append(float(np.mean(losses)))
    return model
