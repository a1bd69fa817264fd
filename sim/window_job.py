"""A layer run as horizontal bands through the activation window: the hand-written
program the core tests use (Amaranth's simulator in ``tests/test_core_window.py``, the
iCEBreaker core under Verilator in ``tests/test_core_verilator.py``).

The image sits in the window at :data:`IMG`; each band's input rows are copied into the
block RAM, the band runs there (``pad_top``), and its pooled output rows are copied out
to the window at :data:`OUT`.
"""

from ..hw import program as prog
from ..sw.network import Conv, MaxPool, Network, ReLU

__all__ = ["NET", "IMG", "OUT", "BAND_IN", "BAND_OUT", "copy", "band_program"]

IMG, OUT = 8192, 30000          # window addresses of the image and of the output map
BAND_IN, BAND_OUT = 0, 2048     # block-RAM addresses of a band's input and output

NET = Network("band", (3, 12, 12), [Conv(10, 3, 1, 1), ReLU(), MaxPool(2, 2)])


def copy(segments, length, src_base, dst_base, src_stride, dst_stride, **flags):
    """A :class:`~fpgacnn.hw.program.CopyDescriptor`'s fields."""
    return {"copy": 1, "segments": segments, "length": length, "src_base": src_base,
            "dst_base": dst_base, "src_stride": src_stride, "dst_stride": dst_stride, **flags}


def band_program(layer, *, result_in_bram=False):
    """The layer ``layer`` (a compiled whole-layer descriptor) as two bands of six
    convolution rows (three pooled rows) each; returns the encoded descriptors. The
    output map stays in the window (a last copy of zero bytes makes it the result), or
    with ``result_in_bram`` is copied back to block-RAM address 0."""
    c, h, w = NET.input_shape
    k, ph, pw = layer["out_channels"], layer["pool_h"], layer["pool_w"]
    rows_in, rows_out = 7, ph // 2           # input rows a band reads, pooled rows it makes
    descs = []
    for band, (first_in, pad_top) in enumerate(((0, 1), (5, 0))):
        descs += [
            copy(c, rows_in * w, IMG + first_in * w, BAND_IN, h * w, rows_in * w),
            {**layer, "in_from_image": 0, "to_logits": 0, "in_base": BAND_IN,
             "out_base": BAND_OUT, "in_h": rows_in, "pad_top": pad_top, "out_h": 6,
             "pool_h": rows_out},
            copy(k, rows_out * pw, BAND_OUT, OUT + band * rows_out * pw, rows_out * pw,
                 ph * pw),
        ]
    descs[0]["src_base"] = 0xDEAD            # the first reads START's image base instead
    descs[0]["in_from_image"] = 1
    if result_in_bram:
        descs.append(copy(1, k * ph * pw, OUT, 0, 0, 0, to_logits=1))
    else:
        descs.append(copy(0, 0, 0, OUT, 0, 0, to_logits=1))
    return [prog.encode_struct(prog.CopyDescriptor if d.get("copy") else
                               prog.LayerDescriptor, d) for d in descs]
