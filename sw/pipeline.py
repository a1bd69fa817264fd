"""Compile a network for a layer pipeline (``hw/pipeline.py``; its shape:
:class:`~fpgacnn.hw.config.PipelineShape`).

A pipeline runs groups of consecutive layers on stages of their own. Each group is
compiled like a network of its own (:func:`~.compiler.compile_network`, for its stage's
:class:`~fpgacnn.hw.config.AcceleratorConfig`), then its activation addresses are moved
to the stage's map (:class:`~fpgacnn.hw.config.StageShape`): input slots at 0 and
``slot_bytes``, inner maps from ``work_base`` on, the group's output map from 0 (the
stage sends it to the next stage's input slot). The host loads every stage's weights,
QParams and descriptors through one chunk address space per memory kind
(:class:`~fpgacnn.hw.config.PipelineShape`).
"""

from dataclasses import dataclass

import numpy as np

from ..hw import program as prog
from ..hw.config import PipelineShape, StageShape
from . import network as nets
from .compiler import (CHUNK_BYTES, CompileError, MemoryPlan, _check_field, compile_network,
                       plan_activations)

__all__ = ["PipelineProgram", "compile_pipeline", "pipeline_shape", "group_networks"]

#: Activation bytes a group is planned in before its addresses move to the stage's map.
_PLAN_SPACE = 1 << 16


def _align(n):
    return -(-n // CHUNK_BYTES) * CHUNK_BYTES


def _layers(stage):
    """The network layers that make up compiled ``stage``."""
    if stage.kind == "conv":
        out = [nets.Conv(stage.out_channels, stage.kernel, stage.stride, stage.pad)]
    else:
        out = [nets.FC(stage.out_channels)]
    if stage.relu:
        out.append(nets.ReLU())
    if stage.pool is not None:
        out.append(nets.MaxPool(*stage.pool))
    return out


def group_networks(network, groups):
    """``network`` cut into consecutive sub-networks of ``groups[i]`` compute layers."""
    stages = network.stages()
    try:
        groups = tuple(groups)
    except TypeError:
        raise CompileError(f"the pipeline's groups must be a sequence of compute-layer "
                           f"counts, not {groups!r}") from None
    if (not groups or any(type(g) is not int or g < 1 for g in groups) or
            sum(groups) != len(stages)):
        raise CompileError(f"{network.name} has {len(stages)} compute layers; the pipeline's "
                           f"groups {tuple(groups)} must be positive and add up to that")
    out, at = [], 0
    for i, g in enumerate(groups):
        part = stages[at:at + g]
        layers = [layer for s in part for layer in _layers(s)]
        out.append((nets.Network(f"{network.name}.{i}", part[0].in_shape, layers),
                    range(at, at + g)))
        at += g
    return out


def pipeline_shape(network, groups, configs, macs=None):
    """The :class:`PipelineShape` that runs ``network`` cut into ``groups`` on stages of
    ``configs`` (one each, with multiplier blocks ``macs``, default DSP blocks): slots
    sized for each group's input, work memory for its inner maps."""
    parts = group_networks(network, groups)
    macs = ("registered",) * len(parts) if macs is None else tuple(macs)
    if len(configs) != len(parts) or len(macs) != len(parts):
        raise CompileError(f"{len(parts)} groups need {len(parts)} stage configs and "
                           f"multiplier kinds, not {len(configs)} and {len(macs)}")
    stages = []
    for (sub, _), cfg, mac in zip(parts, configs, macs):
        sub_stages = sub.stages()
        # The inner maps where the group's plan puts them (ping-pong buffers A at 0 and
        # B; the last map, in A, goes to the next stage instead).
        plan = plan_activations(sub, sub_stages)
        last = len(sub_stages) - 1
        work = max((plan.buffers[(last - s.index) % 2] + _align(int(np.prod(s.out_shape)))
                    for s in sub_stages[:-1]), default=0)
        stages.append(StageShape(cfg, _align(int(np.prod(sub.input_shape))), work, mac))
    return PipelineShape(stages, int(np.prod(network.output_shape)))


@dataclass
class PipelineProgram:
    """A network compiled for a :class:`~fpgacnn.hw.pipeline.PipelineShape`.

    Attributes
    ----------
    network, shape, groups
        What was compiled, for what.
    programs : list of CompiledProgram
        Per stage, its group compiled for its config, addresses in the stage's map.
    """
    network: object
    shape: PipelineShape
    groups: tuple
    programs: list

    @property
    def output_count(self):
        return self.shape.output_bytes

    @property
    def stages(self):
        """The network's compute layers (as :attr:`CompiledProgram.stages`)."""
        return self.network.stages()

    @property
    def descriptor_stages(self):
        """Per counter the board keeps after the total (one per pipeline stage), the
        compute layer it is reported at: the stage's first (a stage's layers are not
        timed apart)."""
        return [int(p.descriptor_stages[0] + first) for p, first in
                zip(self.programs, np.cumsum((0,) + self.groups[:-1]))]

    def image_base(self, slot):
        """The START argument for ``slot`` (the pipeline picks the slot itself; the
        link checks the base is inside stage 0's slots)."""
        if slot not in (0, 1):
            raise ValueError(f"image slot must be 0 or 1, not {slot!r}")
        return slot * self.shape.stages[0].slot_bytes

    @property
    def macs(self):
        return self.network.macs

    def stage_ideal_cycles(self):
        """Per stage, the array's operand beats for one image."""
        return [sum(p.ideal_cycles()) for p in self.programs]

    def model_writes(self):
        """Chunk writes that load every stage: ``{Space: [(addr, data64), ...]}``,
        addresses ascending in each space."""
        bases = {prog.Space.WEIGHTS: self.shape.weight_base,
                 prog.Space.QPARAMS: self.shape.qparam_base,
                 prog.Space.PROGRAM: self.shape.program_base}
        out = {space: [] for space in bases}
        for s, p in enumerate(self.programs):
            for space, writes in p.model_writes().items():
                out[space] += [(bases[space][s] + a, d) for a, d in writes]
        return out

    def check_image(self, image):
        return self.programs[0].check_image(image)

    def image_writes(self, image, slot):
        """IMAGE chunk writes that put ``image`` in stage 0's input slot ``slot``."""
        if slot not in (0, 1):
            raise ValueError(f"image slot must be 0 or 1, not {slot!r}")
        raw = self.check_image(image).tobytes()
        raw += bytes(_align(len(raw)) - len(raw))
        first = slot * self.shape.stages[0].slot_bytes // CHUNK_BYTES
        return [(first + i, int.from_bytes(raw[i * CHUNK_BYTES:(i + 1) * CHUNK_BYTES],
                                           "little"))
                for i in range(len(raw) // CHUNK_BYTES)]


def _move(desc, stage_shape, stage):
    """``desc`` (of compiled ``stage``) with its activation addresses in the stage's map
    (see module doc), each checked against its descriptor field."""
    d = dict(desc)
    if not d["in_from_image"]:
        d["in_base"] += stage_shape.work_base
    d["out_base"] = 0 if d["to_logits"] else d["out_base"] + stage_shape.work_base
    for name in ("in_base", "out_base"):
        _check_field(stage, name, d[name])
    return d


def compile_pipeline(network, params, shape, groups):
    """Compile ``network`` with ``params`` for the pipeline ``shape``, its compute layers
    cut into ``groups`` (one count per stage).

    Raises
    ------
    CompileError
        If a group does not fit its stage (the message names the stage and why), or the
        shape's slots do not match the groups' maps.
    """
    if not isinstance(shape, PipelineShape):
        raise TypeError(f"compile_pipeline needs a PipelineShape, not {shape!r}")
    parts = group_networks(network, groups)
    if len(params) != len(network.stages()):
        raise ValueError(f"{network.name} has {len(network.stages())} stages, got "
                         f"{len(params)} parameter sets")
    if len(parts) != len(shape.stages):
        raise CompileError(f"{network.name} cut into {len(parts)} groups does not match the "
                           f"pipeline's {len(shape.stages)} stages")
    want = pipeline_shape(network, groups, [s.config for s in shape.stages],
                          [s.mac for s in shape.stages])
    if want != shape:
        raise CompileError(f"{network.name}'s maps need stage slots of "
                           f"{[s.slot_bytes for s in want.stages]} B, work memories of "
                           f"{[s.work_bytes for s in want.stages]} B and "
                           f"{want.output_bytes} output bytes; the pipeline was built for "
                           f"{[s.slot_bytes for s in shape.stages]}, "
                           f"{[s.work_bytes for s in shape.stages]} and "
                           f"{shape.output_bytes}")
    programs = []
    for s, ((sub, layers), st) in enumerate(zip(parts, shape.stages)):
        cfg = st.config.with_(act_bytes=_PLAN_SPACE)
        try:
            p = compile_network(sub, [params[i] for i in layers], cfg)
        except CompileError as e:
            raise CompileError(f"pipeline stage {s} ({st.config.name}): {e}") from None
        if not isinstance(p.plan, MemoryPlan):
            raise CompileError(f"pipeline stage {s} ({st.config.name}): its maps must be "
                               f"in block RAM")
        inner = p.descriptors[:-1]
        p.descriptors = [_move(d, st, stage) for d, stage in zip(p.descriptors,
                                                                  sub.stages())]
        # The moved inner maps must stay inside the work memory.
        for d, stage in zip(inner, sub.stages()):
            end = d["out_base"] + _align(int(np.prod(stage.out_shape)))
            if end > st.work_bytes:
                raise CompileError(f"pipeline stage {s}: layer {stage.index}'s output "
                                   f"ends at byte {end} of a {st.work_bytes}-byte work "
                                   f"memory")
        p.config = st.datapath_config
        programs.append(p)
    return PipelineProgram(network, shape, tuple(groups), programs)
