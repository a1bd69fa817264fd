# amaranth: UnusedElaboratable=no
"""Im2col vs its Python reference, and the reference vs golden.conv2d."""

import random

import numpy as np
import pytest

from fpgacnn.hw.im2col import Im2col, im2col_reference
from fpgacnn.hw.program import array_tiles, paired_walk, pixel_pairs_fit, wraps_rows
from fpgacnn.sim.amaranth_sim import run_simulation
from fpgacnn.sim.streams import stream_get
from fpgacnn.sw import golden
from fpgacnn.sw.compiler import paired_weights


def descriptor(cin, h, w, kernel, stride, pad, out_channels, rows, *, in_base=0, w_base=0):
    out_h = golden.conv_output_size(h, kernel, stride, pad)
    out_w = golden.conv_output_size(w, kernel, stride, pad)
    return {"cin": cin, "in_h": h, "in_w": w, "kernel": kernel, "stride": stride, "pad": pad,
            "pad_top": pad, "out_h": out_h, "out_w": out_w, "out_channels": out_channels,
            "k_blocks": -(-out_channels // rows), "reduction": cin * kernel * kernel,
            "in_base": in_base, "w_base": w_base}


def band(desc, first_row, n_rows):
    """Output rows ``first_row … +n_rows-1`` of the whole layer ``desc`` as a band: only
    the input rows they read (clipped to the map), ``pad_top`` the zero rows above them.
    Returns the band's descriptor and the first input row it holds."""
    s, f, p = desc["stride"], desc["kernel"], desc["pad"]
    top = first_row * s - p
    r0, r1 = max(0, top), min(desc["in_h"], (first_row + n_rows - 1) * s + f - p)
    return {**desc, "in_h": r1 - r0, "pad_top": r0 - top, "out_h": n_rows}, r0


def fc_descriptor(d, k, rows, **bases):
    return descriptor(d, 1, 1, 1, 1, 0, k, rows, **bases)


GEOMETRIES = {  # name: (descriptor, cols)
    "c1_like": (descriptor(1, 8, 8, 5, 1, 2, 6, 8, in_base=100, w_base=7), 2),
    "c3_like": (descriptor(3, 7, 7, 5, 1, 0, 16, 8, in_base=1000, w_base=300), 2),
    "stride2_pad1": (descriptor(2, 7, 9, 3, 2, 1, 5, 4, in_base=5), 3),
    "fc": (fc_descriptor(40, 10, 8, in_base=2000, w_base=60), 2),
    "one_col": (descriptor(2, 5, 4, 3, 1, 1, 3, 2), 1),
    "wide": (descriptor(1, 3, 12, 1, 1, 0, 1, 1, in_base=65530), 4),   # address wrap
    # kernel > in_h + 1 (only padding makes it fit): negative per-channel row count.
    "kernel_beyond_input": (descriptor(2, 3, 4, 5, 1, 2, 3, 2, in_base=40, w_base=9), 2),
    "stride3_wide_cols": (descriptor(1, 10, 13, 4, 3, 0, 9, 8, in_base=77), 4),
    # Bands: pad_top 0 with zero rows below the input, pad_top < pad, out_h < the layer's.
    "band_rows_below": (band(descriptor(2, 9, 9, 3, 1, 1, 5, 4, in_base=300), 6, 3)[0], 2),
    "band_pad_top_1": (band(descriptor(1, 12, 8, 5, 1, 2, 6, 8, in_base=9), 1, 4)[0], 2),
    "band_middle": (band(descriptor(3, 11, 7, 3, 2, 1, 3, 2, w_base=5), 2, 2)[0], 3),
    "band_stride2_bottom": (band(descriptor(1, 9, 9, 3, 2, 1, 9, 8), 3, 2)[0], 1),
    # Tiles that wrap rows (one k-block, out_w >= cols, out_w % cols != 0): a 12-pixel
    # row on 5 columns; stride 2 with padding on both edges of both rows of a tile; a
    # last tile that runs past the map (15 pixels on 4 columns); a band whose last row
    # wraps into the rows below it; LeNet-5's C3 on the ULX3S-85F's 4 columns.
    "wrap_rows": (descriptor(2, 9, 12, 3, 1, 1, 5, 8, in_base=33, w_base=4), 5),
    "wrap_stride2_pad": (descriptor(3, 11, 11, 3, 2, 1, 4, 4, in_base=700), 4),
    "wrap_past_the_map": (descriptor(1, 5, 7, 3, 1, 0, 2, 2, in_base=65500), 4),
    "wrap_band": (band(descriptor(1, 12, 9, 3, 1, 1, 4, 8, in_base=90), 2, 5)[0], 4),
    "wrap_lenet_c3": (descriptor(6, 14, 14, 5, 1, 0, 16, 16, w_base=150), 4),
}


def paired(desc, rows):
    """``desc`` (at most ``rows/2`` channels, an even ``out_w``) with pixel pairs."""
    f, s = desc["kernel"], desc["stride"]
    assert pixel_pairs_fit(rows, desc["out_channels"], desc["out_w"], desc["k_blocks"])
    return {**desc, "pixel_pairs": 1, "reduction": desc["cin"] * f * (f + s)}


PAIR_GEOMETRIES = {  # name: (descriptor, cols, rows)
    # Rows of 12 pixels = 6 pairs on 2 columns; a pair's second pixel reads the padding.
    "pairs_c1_like": (paired(descriptor(1, 12, 12, 5, 1, 2, 6, 16, in_base=100, w_base=7),
                             16), 2, 16),
    # Stride 2 with padding: columns 4 input columns apart, a kernel 2 wider.
    "pairs_stride2_pad": (paired(descriptor(2, 9, 11, 3, 2, 1, 3, 8, in_base=5), 8), 3, 8),
    # 5 pairs a row on 4 columns (tiles wrap rows when built with wrap_rows).
    "pairs_wrap": (paired(descriptor(1, 8, 12, 3, 1, 0, 4, 8, in_base=40, w_base=3), 8),
                   4, 8),
    # 9 pairs on 2 columns: the last tile runs past the map; addresses wrap.
    "pairs_past_the_map": (paired(descriptor(1, 5, 8, 3, 1, 0, 2, 4, in_base=65500), 4),
                           2, 4),
    # A band of a stride-1 layer, pad_top 1.
    "pairs_band": (paired(band(descriptor(2, 12, 10, 3, 1, 1, 5, 16, in_base=9), 1, 4)[0],
                          16), 4, 16),
    # LeNet-5's C1 on the ULX3S-85F: 14 pairs a row on 8 columns.
    "pairs_lenet_c1": (paired(descriptor(1, 32, 32, 5, 1, 0, 6, 16, w_base=150), 16), 8, 16),
}


def run_im2col(dut, desc, *, seed, name, stall=0.3):
    got = []
    expected = list(im2col_reference(desc, dut.cols, dut.act_addr_width, dut.w_addr_width,
                                     column_blocks=dut.column_blocks,
                                     wrap_rows=dut.wrap_rows))

    async def bench(ctx):
        rng = random.Random(seed)
        ctx.set(dut.start.payload, desc)
        ctx.set(dut.start.valid, 1)
        await ctx.tick().until(dut.start.ready)
        ctx.set(dut.start.valid, 0)
        for _ in expected:
            p = await stream_get(ctx, dut.o_stream)
            got.append({"act_addr": [p.act_addr[j] for j in range(dut.cols)],
                        "act_zero": [p.act_zero[j] for j in range(dut.cols)],
                        "w_addr": p.w_addr, "last": p.last, "end": p.end,
                        "last_col": p.last_col, "last_kb": p.last_kb})
            while rng.random() < stall:
                await ctx.tick()
        for _ in range(3):                 # nothing after the end, and idle again
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid)
        assert not ctx.get(dut.busy)

    def check():
        assert len(got) == len(expected)
        for n, (a, b) in enumerate(zip(got, expected)):
            # Addresses of zeroed operands are don't-care.
            a_addr = [x for x, z in zip(a["act_addr"], a["act_zero"]) if not z]
            b_addr = [x for x, z in zip(b["act_addr"], b["act_zero"]) if not z]
            fields = ("act_zero", "w_addr", "last", "end", "last_col", "last_kb")
            assert (a_addr, *(a[f] for f in fields)) == (b_addr, *(b[f] for f in fields)), \
                f"beat {n} (seed {seed}): got {a}, expected {b}"

    run_simulation(dut, [bench], name=name, check=check)


#: Every geometry without wrapping tiles, and those of more than one column with them.
WRAP_CHOICES = [(g, False) for g in GEOMETRIES] + \
    [(g, True) for g, (_, cols) in GEOMETRIES.items() if cols > 1]


@pytest.mark.parametrize("geometry,wrap_rows", WRAP_CHOICES)
def test_im2col_matches_reference(request, geometry, wrap_rows):
    desc, cols = GEOMETRIES[geometry]
    run_im2col(Im2col(cols, wrap_rows=wrap_rows), desc, seed=len(geometry) + wrap_rows,
               name=request.node.name)


@pytest.mark.parametrize("wrap_rows", [False, True])
@pytest.mark.parametrize("geometry", PAIR_GEOMETRIES)
def test_im2col_pixel_pairs_match_reference(request, geometry, wrap_rows):
    desc, cols, _ = PAIR_GEOMETRIES[geometry]
    run_im2col(Im2col(cols, wrap_rows=wrap_rows, column_blocks=cols in (2, 4, 8),
                      pixel_pairs=True),
               desc, seed=len(geometry) + wrap_rows, name=request.node.name)


def test_im2col_without_pixel_pairs_ignores_the_field(request):
    """A unit built without pixel pairs walks a layer as if the field were 0."""
    desc, cols, _ = PAIR_GEOMETRIES["pairs_wrap"]
    plain = {**desc, "pixel_pairs": 0}
    dut = Im2col(cols, wrap_rows=True)

    async def bench(ctx):
        ctx.set(dut.start.payload, desc)
        ctx.set(dut.start.valid, 1)
        ctx.set(dut.o_stream.ready, 1)
        await ctx.tick().until(dut.start.ready)
        ctx.set(dut.start.valid, 0)
        got = []
        while True:
            _, _, valid, p = await ctx.tick().sample(dut.o_stream.valid, dut.o_stream.payload)
            if valid:
                got.append(p.w_addr)
                if p.end:
                    break
        assert got == [b["w_addr"] for b in im2col_reference(plain, cols, wrap_rows=True)]

    run_simulation(dut, [bench], name=request.node.name)


COLUMN_GEOMETRIES = {  # name: (descriptor, cols); w_base a multiple of cols
    # FC, 9 k-blocks on 4 columns: 3 tiles (the last of one k-block).
    "fc_9_blocks": (fc_descriptor(30, 70, 8, in_base=500, w_base=64), 4),
    # FC, 2 k-blocks on 4 columns (columns 2-3 idle), weight address wrapping.
    "fc_2_blocks": (fc_descriptor(12, 13, 8, in_base=3, w_base=65532), 4),
    # out_w == 1 convolution: 3x3 kernel, pad 1 on a 1-pixel-wide map, 3 k-blocks.
    "conv_width1": (descriptor(2, 6, 1, 3, 1, 1, 11, 4, in_base=900, w_base=8), 2),
    # One k-block: stays in the normal mode; and a normal convolution (out_w > 1).
    "fc_1_block": (fc_descriptor(9, 5, 8, w_base=3), 4),
    "conv_normal": (descriptor(1, 8, 8, 5, 1, 2, 6, 8, in_base=100, w_base=7), 2),
}


@pytest.mark.parametrize("geometry", COLUMN_GEOMETRIES)
def test_im2col_column_blocks_match_reference(request, geometry):
    desc, cols = COLUMN_GEOMETRIES[geometry]
    run_im2col(Im2col(cols, column_blocks=True, wrap_rows=True), desc, seed=len(geometry),
               name=request.node.name)


def test_column_blocks_need_power_of_two_cols():
    with pytest.raises(ValueError, match="column_blocks needs cols to be a power of two"):
        Im2col(3, column_blocks=True)


@pytest.mark.parametrize("geometry", ["c1_like", "c3_like", "fc"])
def test_im2col_narrow_addresses_wrap(request, geometry):
    """iCEBreaker widths (12-bit activation, 14-bit weight addresses) wrap like memories."""
    desc, cols = GEOMETRIES[geometry]
    desc = {**desc, "in_base": 4096 - 37, "w_base": (1 << 14) - 50}
    run_im2col(Im2col(cols, act_addr_width=12, w_addr_width=14), desc, seed=7,
               name=request.node.name)


@pytest.mark.parametrize("width", [0, 17, "12"])
def test_im2col_rejects_bad_address_width(width):
    with pytest.raises(ValueError, match="act_addr_width"):
        Im2col(2, act_addr_width=width)


def test_im2col_back_to_back_layers(request):
    """Two layers through one unit; full rate (no backpressure) takes one cycle per beat."""
    dut = Im2col(2)
    first, second = GEOMETRIES["c1_like"][0], GEOMETRIES["fc"][0]
    got, cycles = [], []

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for desc in (first, second):
            ctx.set(dut.start.payload, desc)
            ctx.set(dut.start.valid, 1)
            await ctx.tick().until(dut.start.ready)
            ctx.set(dut.start.valid, 0)
            n, count, first_at = 0, 0, None
            while True:
                _, _, valid, p = await ctx.tick().sample(dut.o_stream.valid,
                                                          dut.o_stream.payload)
                count += 1
                if valid:
                    first_at = count if first_at is None else first_at
                    n += 1
                    got.append(p.w_addr)
                    if p.end:
                        break
            cycles.append((n, count - first_at + 1))

    def check():
        for desc, (n, span) in zip((first, second), cycles):
            assert n == len(list(im2col_reference(desc, 2)))
            assert span == n, f"{n} beats took {span} cycles"
        expected = [b["w_addr"] for desc in (first, second) for b in im2col_reference(desc, 2)]
        assert got == expected

    run_simulation(dut, [bench], name=request.node.name, check=check)


def conv_by_reference(desc, cols, rows, x, wt, wrap_rows):
    """The layer computed from operands fetched at the reference's addresses (tile by
    tile, wrapping rows if ``wrap_rows``), as ``(out_channels, out_h, out_w)``. With
    ``pixel_pairs`` the weight words are ``compiler.paired_weights``."""
    k, pairs = desc["out_channels"], desc.get("pixel_pairs", 0)
    act = np.zeros(1 << 16, dtype=np.int64)
    flat = x.reshape(-1).astype(np.int64)
    act[(desc["in_base"] + np.arange(flat.size)) & 0xFFFF] = flat
    wmat = np.zeros((desc["k_blocks"] * rows, desc["reduction"]), dtype=np.int64)
    if pairs:
        wmat[:] = paired_weights(wt, rows, desc["stride"]).T
    else:
        wmat[:k] = wt.reshape(k, -1)
    words = {}   # word address -> rows weights
    for kb in range(desc["k_blocks"]):
        for d in range(desc["reduction"]):
            words[(desc["w_base"] + kb * desc["reduction"] + d) & 0xFFFF] = \
                wmat[kb * rows:(kb + 1) * rows, d]
    out_h, k_blocks = desc["out_h"], desc["k_blocks"]
    out_w = paired_walk(1, 1, desc["out_w"], pairs)[2]     # the walk's pixels
    out = np.zeros((k_blocks * rows, out_h + 1, -(-out_w // cols) * cols), dtype=np.int64)
    acc = np.zeros((rows, cols), dtype=np.int64)
    tile = 0
    tiles_per_row = -(-out_w // cols)
    for beat in im2col_reference(desc, cols, wrap_rows=wrap_rows):
        xs = np.array([0 if z else act[a] for a, z in zip(beat["act_addr"], beat["act_zero"])])
        assert all(beat["act_zero"][beat["last_col"] + 1:]), "a pixel past the tile's last"
        acc += np.outer(words[beat["w_addr"]], xs)
        if beat["last"]:
            if wraps_rows(cols, out_w, k_blocks, wrap_rows=wrap_rows):   # row-major pixels
                for j in range(cols):
                    y, x = divmod(tile * cols + j, out_w)
                    out[:rows, y, x] = acc[:, j]
            else:
                y, rest = divmod(tile, k_blocks * tiles_per_row)
                kb, xt = divmod(rest, tiles_per_row)
                out[kb * rows:(kb + 1) * rows, y, xt * cols:(xt + 1) * cols] = acc
            acc[:] = 0
            tile += 1
    assert tile == array_tiles(cols, out_h, desc["out_w"], k_blocks, wrap_rows=wrap_rows,
                               pixel_pairs=pairs)
    out = out[:, :out_h, :out_w]
    if pairs:   # row g*rows/2 + k of pair x is channel k of pixel 2x + g
        out = out.reshape(2, rows // 2, out_h, out_w).transpose(1, 2, 3, 0)
        out = out.reshape(rows // 2, out_h, 2 * out_w)
    return out[:k]


def random_layer(desc, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-128, 128, (desc["cin"], desc["in_h"], desc["in_w"]), dtype=np.int8)
    x.reshape(-1)[:2] = (-128, 127)
    wt = rng.integers(-128, 128, (desc["out_channels"], desc["cin"], desc["kernel"],
                                  desc["kernel"]), dtype=np.int8)
    return x, wt


@pytest.mark.parametrize("wrap_rows", [False, True])
@pytest.mark.parametrize("geometry", ["c1_like", "c3_like", "stride2_pad1", "fc", "one_col",
                                      "wrap_rows", "wrap_stride2_pad", "wrap_past_the_map",
                                      "wrap_lenet_c3"])
def test_reference_computes_the_convolution(geometry, wrap_rows):
    """Operands fetched at the reference's addresses give golden.conv2d (tile by tile)."""
    desc, cols = GEOMETRIES[geometry]
    rows = -(-desc["out_channels"] // desc["k_blocks"])     # the descriptor's k-block size
    x, wt = random_layer(desc, 0)
    expected = golden.conv2d(x, wt, stride=desc["stride"], pad=desc["pad"])
    np.testing.assert_array_equal(conv_by_reference(desc, cols, rows, x, wt, wrap_rows),
                                  expected)


@pytest.mark.parametrize("wrap_rows", [False, True])
@pytest.mark.parametrize("geometry", [g for g in PAIR_GEOMETRIES if g != "pairs_band"])
def test_reference_computes_the_convolution_in_pairs(geometry, wrap_rows):
    """Pixel pairs: the same convolution, from the paired weight words."""
    desc, cols, rows = PAIR_GEOMETRIES[geometry]
    x, wt = random_layer(desc, 1)
    expected = golden.conv2d(x, wt, stride=desc["stride"], pad=desc["pad"])
    np.testing.assert_array_equal(conv_by_reference(desc, cols, rows, x, wt, wrap_rows),
                                  expected)


@pytest.mark.parametrize("layer,bands", [
    ((2, 9, 9, 3, 1, 1, 5, 4), [(0, 3), (3, 3), (6, 3)]),
    ((1, 12, 8, 5, 1, 2, 6, 8), [(0, 1), (1, 4), (5, 6), (11, 1)]),
    ((3, 11, 7, 3, 2, 1, 3, 2), [(0, 2), (2, 2), (4, 2)]),
    ((1, 9, 9, 3, 2, 1, 9, 8), [(0, 3), (3, 2)]),
    ((2, 6, 5, 5, 1, 0, 3, 2), [(0, 1), (1, 1)]),
    ((1, 12, 9, 3, 1, 1, 4, 8), [(0, 2), (2, 5), (7, 5)]),     # 4 columns: tiles can wrap rows
])
@pytest.mark.parametrize("wrap_rows", [False, True])
def test_bands_compute_the_layer(layer, bands, wrap_rows):
    """A layer run as horizontal bands (each holding only its input rows, pad_top the zero
    rows above them) gives the whole layer's output rows, bit-exact."""
    whole = descriptor(*layer)
    x, wt = random_layer(whole, sum(layer))
    expected = golden.conv2d(x, wt, stride=whole["stride"], pad=whole["pad"])
    assert sum(n for _, n in bands) == whole["out_h"]
    for first, n in bands:
        desc, r0 = band(whole, first, n)
        got = conv_by_reference(desc, 2 if layer[-1] < 8 else 4, layer[-1],
                                x[:, r0:r0 + desc["in_h"]], wt, wrap_rows)
        np.testing.assert_array_equal(got, expected[:, first:first + n],
                                      err_msg=f"band {first}+{n} of {layer}")


def test_empty_descriptor_returns_to_idle(request):
    dut = Im2col(2)

    async def bench(ctx):
        ctx.set(dut.start.payload, {**GEOMETRIES["fc"][0], "reduction": 0})
        ctx.set(dut.start.valid, 1)
        await ctx.tick().until(dut.start.ready)
        ctx.set(dut.start.valid, 0)
        for _ in range(5):
            await ctx.tick()
            assert not ctx.get(dut.o_stream.valid) and not ctx.get(dut.busy)

    run_simulation(dut, [bench], name=request.node.name)


def test_lenet_c1_c3_cycles(request):
    """Beats and cycles of LeNet-5's C1 and C3 on the 8×2 iCEBreaker array vs MACs / 16."""
    dut = Im2col(2)
    layers = {"C1": (descriptor(1, 28, 28, 5, 1, 2, 6, 8), 6 * 28 * 28 * 25),
              "C3": (descriptor(6, 14, 14, 5, 1, 0, 16, 8), 16 * 10 * 10 * 150)}
    counts = {}

    async def bench(ctx):
        ctx.set(dut.o_stream.ready, 1)
        for name, (desc, _) in layers.items():
            ctx.set(dut.start.payload, desc)
            ctx.set(dut.start.valid, 1)
            await ctx.tick().until(dut.start.ready)
            ctx.set(dut.start.valid, 0)
            beats = cycles = 0
            while True:
                _, _, valid, end = await ctx.tick().sample(dut.o_stream.valid,
                                                            dut.o_stream.payload.end)
                cycles += 1
                beats += valid
                if valid and end:
                    break
            counts[name] = (beats, cycles)

    run_simulation(dut, [bench], name=request.node.name, max_cycles=40_000)
    for name, (desc, macs) in layers.items():
        beats, cycles = counts[name]
        ideal = macs / 16
        print(f"im2col {name}: {beats} beats in {cycles} cycles (start to end), "
              f"ideal MACs/16 = {ideal:.0f}: {cycles / ideal:.2f}x")
        assert beats == len(list(im2col_reference(desc, 2)))
        assert cycles <= beats + 12   # 12 cycles from start to the first beat
