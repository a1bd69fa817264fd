"""Descriptor-level reference executor: a compiled layer program run in NumPy.

:class:`Machine` holds what the board holds — the block RAM (``act_bytes``), the weight
memory (whose top is the activation window with ``config.act_window``), the qparams and
the layer program — and runs the descriptors one after the other exactly as
:mod:`fpgacnn.hw.program` defines them:

* a :class:`~fpgacnn.hw.program.LayerDescriptor` reads its ``cin × in_h × in_w`` input
  (CHW, at ``in_base`` or START's image base) from the block RAM, output row ``y`` input
  rows ``y*stride + fy - pad_top`` (rows and columns outside the map read zero), and
  writes its output map (pooled if ``pool_en``) at ``out_base``; the arithmetic is
  :mod:`fpgacnn.sw.golden`'s, the weights and qparams are read from the memories;
* a :class:`~fpgacnn.hw.program.CopyDescriptor` moves ``segments × length`` bytes between
  block RAM and window addresses;
* the run stops after the descriptor with ``to_logits``; the result is the bytes from its
  ``out_base``/``dst_base`` on (what RESULT reads).

Weights live in the same memory as the window, so a plan that lets a map overwrite a
weight computes wrong numbers here, as on the board. Anything the gateware does not
define (a layer touching the window or writing over its own input, a copy from the
window into the window or onto its own source, an inconsistent geometry) raises
:class:`ExecutionError`. Tests run any plan against ``network.run_network`` with it in
milliseconds, no simulator.
"""

import numpy as np

from ..hw.program import array_tiles, column_mode, paired_walk, pixel_pairs_fit
from . import golden

__all__ = ["ExecutionError", "Machine", "descriptor_cycles", "run_program"]

ACT_SPACE = 1 << 16


class ExecutionError(ValueError):
    """A descriptor the gateware does not define (the message names it and why)."""


def descriptor_cycles(desc, config):
    """Ideal cycles of one descriptor: a layer's operand beats (its tiles times ``D``,
    :func:`~fpgacnn.hw.program.array_tiles`, column mode as :func:`compiler.ideal_cycles`),
    a copy's bytes (one per cycle)."""
    if desc.get("copy"):
        return desc["segments"] * desc["length"]
    kb, lanes = desc["k_blocks"], _lanes(desc, config)
    if lanes > 1:
        return desc["out_h"] * -(-kb // lanes) * desc["reduction"]
    return array_tiles(config.cols, desc["out_h"], desc["out_w"], kb,
                       wrap_rows=config.wrap_rows,
                       pixel_pairs=desc.get("pixel_pairs", 0)) * desc["reduction"]


def _lanes(desc, config):
    return config.cols if column_mode(config.cols, desc["out_w"], desc["k_blocks"],
                                      fc_columns=config.fc_columns) else 1


class Machine:
    """The memories of one board configuration and a loaded program.

    Parameters
    ----------
    config : AcceleratorConfig

    Attributes
    ----------
    act : ndarray of uint8, shape (act_bytes,)
        The block RAM.
    weights : ndarray of uint8, shape (weight_words * rows,)
        The weight memory (the window is its top ``65536 - act_bytes`` bytes).
    cycles : list of int
        Ideal cycles of each descriptor of the last run (:func:`descriptor_cycles`).
    """

    def __init__(self, config):
        self.config = config
        self.act = np.zeros(config.act_bytes, np.uint8)
        self.weights = np.zeros(config.weight_bytes, np.uint8)
        self.qparams, self.descriptors, self.cycles = [], [], []

    def load(self, program):
        """Write ``program``'s weights, qparams and descriptors (as its model writes do)."""
        raw = np.ascontiguousarray(program.weight_words).view(np.uint8).reshape(-1)
        if len(raw) > len(self.weights):
            raise ExecutionError(f"{len(raw)} weight bytes exceed the weight memory of "
                                 f"{len(self.weights)} B")
        self.weights[:len(raw)] = raw
        self.qparams = list(program.qparams)
        self.descriptors = [dict(d) for d in program.descriptors]

    def _index(self, addrs, what):
        """Activation addresses → (in block RAM mask, weight-memory bytes of the rest)."""
        addrs = np.asarray(addrs, np.int64) % ACT_SPACE
        a = self.config.act_bytes
        inside = addrs < a
        if not self.config.act_window and not inside.all():
            raise ExecutionError(f"{what} reaches activation address "
                                 f"{int(addrs[~inside][0])} beyond the {a}-byte block RAM "
                                 f"(no activation window on {self.config.name})")
        return addrs, inside, self.config.window_weight_byte + addrs - a

    def read(self, addrs, what="a read"):
        """Bytes (uint8) at activation addresses ``addrs`` (block RAM or window)."""
        addrs, inside, wbyte = self._index(addrs, what)
        out = np.empty(addrs.shape, np.uint8)
        out[inside] = self.act[addrs[inside]]
        out[~inside] = self.weights[wbyte[~inside]]
        return out

    def write(self, addrs, values, what="a write"):
        addrs, inside, wbyte = self._index(addrs, what)
        values = np.asarray(values).astype(np.uint8)
        self.act[addrs[inside]] = values[inside]
        self.weights[wbyte[~inside]] = values[~inside]

    def write_image(self, program, image, slot=0):
        """The IMAGE writes of ``image`` into ``slot`` (8 bytes per chunk)."""
        for addr, value in program.image_writes(image, slot):
            self.write(8 * addr + np.arange(8), list(value.to_bytes(8, "little")),
                       "an image write")

    def run(self, image_base):
        """Run the program from descriptor 0 to the one with ``to_logits``; returns the
        result base (that descriptor's ``out_base``/``dst_base``)."""
        self.cycles = []
        for i, desc in enumerate(self.descriptors):
            where = f"descriptor {i}"
            if desc.get("copy"):
                self._copy(desc, image_base, where)
            else:
                self._layer(desc, image_base, where)
            self.cycles.append(descriptor_cycles(desc, self.config))
            if desc["to_logits"]:
                return desc["dst_base" if desc.get("copy") else "out_base"]
        raise ExecutionError(f"no descriptor of the {len(self.descriptors)} has to_logits: "
                             f"the run would not end")

    def _copy(self, d, image_base, where):
        src0 = image_base if d["in_from_image"] else d["src_base"]
        seg, i = np.arange(d["segments"])[:, None], np.arange(d["length"])[None, :]
        src = ((src0 + seg * d["src_stride"] + i) % ACT_SPACE).reshape(-1)
        dst = ((d["dst_base"] + seg * d["dst_stride"] + i) % ACT_SPACE).reshape(-1)
        a = self.config.act_bytes
        if ((src >= a) & (dst >= a)).any():
            raise ExecutionError(f"{where}: a copy from the window into the window")
        if np.intersect1d(src, dst).size:
            raise ExecutionError(f"{where}: a copy onto its own source")
        self.write(dst, self.read(src, f"{where} (copy source)"), f"{where} (copy target)")

    def _block_ram(self, base, size, where, what):
        if base + size > self.config.act_bytes:
            raise ExecutionError(f"{where}: its {what} ({size} B at {base}) leaves the "
                                 f"{self.config.act_bytes}-byte block RAM (layers never "
                                 f"touch the window)")
        return slice(base, base + size)

    def _layer(self, d, image_base, where):
        c, h, w, f, s, p = (d[k] for k in ("cin", "in_h", "in_w", "kernel", "stride", "pad"))
        k, out_h, out_w = d["out_channels"], d["out_h"], d["out_w"]
        rows, pairs = self.config.rows, d.get("pixel_pairs", 0)
        if pairs and not (self.config.pixel_pairs and
                          pixel_pairs_fit(rows, k, out_w, d["k_blocks"])):
            raise ExecutionError(f"{where}: pixel_pairs needs a board built with them and a "
                                 f"layer of 1 to {rows // 2} channels and an even out_w, not "
                                 f"{k} channels, out_w {out_w} on {self.config.name}")
        checks = [("reduction", c * f * paired_walk(f, s, 0, pairs)[0]),
                  ("k_blocks", -(-k // rows))]
        try:
            checks.append(("out_w", golden.conv_output_size(w, f, s, p)))
            if d["pool_en"]:
                checks += [("pool_h", golden.pool_output_size(out_h, d["pool_kernel"],
                                                               d["pool_stride"])),
                           ("pool_w", golden.pool_output_size(out_w, d["pool_kernel"],
                                                               d["pool_stride"]))]
        except golden.GeometryError as e:
            raise ExecutionError(f"{where}: {e}") from None
        for name, want in checks:
            if d[name] != want:
                raise ExecutionError(f"{where}: {name} = {d[name]}, the geometry gives {want}")
        if min(c, h, w, k, out_h) < 1:
            raise ExecutionError(f"{where}: an empty layer ({d})")
        base = image_base if d["in_from_image"] else d["in_base"]
        x = self.act[self._block_ram(base, c * h * w, where, "input")].view(np.int8)
        x = x.reshape(c, h, w)
        # The rows the output rows read, top padding (pad_top) and rows beyond in_h zero.
        xp = np.zeros((c, (out_h - 1) * s + f, w + 2 * p), np.int8)
        for r in range(xp.shape[1]):
            if 0 <= r - d["pad_top"] < h:
                xp[:, r, p:p + w] = x[:, r - d["pad_top"]]
        q = self.qparams[d["q_base"]:d["q_base"] + k]
        if len(q) != k:
            raise ExecutionError(f"{where}: qparams {d['q_base']}..+{k} beyond the "
                                 f"{len(self.qparams)} loaded")
        bias = np.array([e["bias"] for e in q], np.int32)
        if pairs:
            acc = _paired_conv(xp, self._paired_weights(d, where), bias, s, k, out_h, out_w)
        else:
            acc = golden.conv2d(xp, self._weights(d, where), bias, stride=s)
        y = golden.requantize(acc, [e["m"] for e in q], [e["s"] for e in q],
                              relu=bool(d["relu"]))
        if d["pool_en"]:
            y = golden.maxpool2d(y, d["pool_kernel"], d["pool_stride"])
        out = self._block_ram(d["out_base"], y.size, where, "output")
        if base < out.stop and out.start < base + c * h * w:
            raise ExecutionError(f"{where}: its output ({y.size} B at {out.start}) overlaps "
                                 f"its input ({c * h * w} B at {base})")
        self.act[out] = y.reshape(-1).view(np.uint8)

    def _paired_weights(self, d, where):
        """The ``(rows, cin, F, F + stride)`` weights of pixel-pairs layer ``d`` as the
        weight memory holds them (:func:`compiler.paired_weights`)."""
        f = d["kernel"]
        return self._weight_words(d, d["reduction"], where).T.reshape(
            self.config.rows, d["cin"], f, paired_walk(f, d["stride"], 0, 1)[0])

    def _weight_words(self, d, n, where):
        """Weight words ``w_base .. w_base + n - 1`` of layer ``d``, ``(n, rows)`` int8."""
        words = self.weights.view(np.int8).reshape(-1, self.config.rows)
        if d["w_base"] + n > len(words):
            raise ExecutionError(f"{where}: weight words {d['w_base']}..+{n} beyond the "
                                 f"weight memory")
        return words[d["w_base"]:d["w_base"] + n]

    def _weights(self, d, where):
        """Weights ``(K, cin, F, F)`` of layer ``d`` from the weight memory (layout of
        :func:`compiler._weight_words`, column mode included)."""
        rows, red, kb = self.config.rows, d["reduction"], d["k_blocks"]
        lanes = _lanes(d, self.config)
        groups = -(-kb // lanes)
        n = groups * lanes * red
        block = self._weight_words(d, n, where).reshape(groups, red, lanes, rows)
        wmat = block.transpose(0, 2, 3, 1).reshape(groups * lanes * rows, red)
        f = d["kernel"]
        return np.ascontiguousarray(wmat[:d["out_channels"]]).reshape(
            d["out_channels"], d["cin"], f, f)


def _paired_conv(xp, wide, bias, stride, k, out_h, out_w):
    """The accumulators of a ``pixel_pairs`` layer as the array forms them: pixel ``2x +
    g`` of channel ``k`` from row ``g*R/2 + k`` of ``wide`` (``(R, C, F, F + stride)``)
    over the input columns from ``2x*stride`` on (``xp``: the padded input, zero beyond)."""
    rows, c, f, f_w = wide.shape
    width = (out_w // 2 - 1) * 2 * stride + f_w
    x = np.zeros((c, xp.shape[1], max(width, xp.shape[2])), np.int64)
    x[:, :, :xp.shape[2]] = xp
    windows = np.lib.stride_tricks.sliding_window_view(x, (f, f_w), axis=(1, 2))
    windows = windows[:, ::stride, ::2 * stride][:, :out_h, :out_w // 2]
    acc = np.empty((k, out_h, out_w), np.int64)
    for g in range(2):
        half = wide[g * rows // 2:g * rows // 2 + k].astype(np.int64)
        acc[:, :, g::2] = np.einsum("cyxij,kcij->kyx", windows, half)
    return acc + bias.astype(np.int64)[:, None, None]


def run_program(program, image, *, slot=0, machine=None):
    """Load ``program`` (unless ``machine`` already holds it), write ``image`` into
    ``slot``, run; returns the int8 result (``program.output_count`` values, CHW order).

    Parameters
    ----------
    program : compiler.CompiledProgram
    image : ndarray of int8, the network's input shape
    machine : Machine, optional
        Reuse its memories (e.g. to run a second image after a first, as the board does).
    """
    if machine is None:
        machine = Machine(program.config)
        machine.load(program)
    machine.write_image(program, image, slot)
    base = machine.run(program.image_base(slot))
    if base != program.output_base:
        raise ExecutionError(f"the run ended at base {base}, the program says its output "
                             f"is at {program.output_base}")
    return machine.read(base + np.arange(program.output_count)).view(np.int8)
