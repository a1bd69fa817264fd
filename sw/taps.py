"""Compare a board's per-stage output maps with the golden model's.

``Accelerator.infer(images, taps=[...])`` returns ``{stage: int8 (N, C, H, W)}``;
:func:`first_difference` finds the first stage (in network order) where those differ
from ``network.run_network``'s intermediates — the stage to look at when a board and the
golden model disagree.
"""

import numpy as np

from . import network as nets

__all__ = ["describe_taps", "first_difference", "golden_taps"]


def golden_taps(network, params, images, stages):
    """The golden int8 output maps of ``stages`` for int8 ``images``: ``{stage: (N,C,H,W)}``."""
    runs = [nets.run_network(network, params, x, intermediates=True) for x in images]
    return {i: np.stack([r[i] for r in runs]) for i in stages}


def first_difference(network, params, images, maps):
    """``None`` if every map in ``maps`` equals the golden one, else a dict describing the
    first differing value: ``stage``, ``image``, ``index`` (C, H, W), ``board``,
    ``golden`` and ``count`` (differing values in that stage)."""
    want = golden_taps(network, params, images, sorted(maps))
    for stage in sorted(maps):
        got = np.asarray(maps[stage])
        wrong = np.argwhere(got != want[stage])
        if len(wrong):
            image, *index = (int(v) for v in wrong[0])
            return {"stage": stage, "image": image, "index": tuple(index),
                    "board": int(got[(image, *index)]),
                    "golden": int(want[stage][(image, *index)]), "count": len(wrong)}
    return None


def describe_taps(network, params, images, maps, names=None):
    """Text lines: per tapped stage its shape and whether it matches; then where the board
    and the golden model first differ (or that they agree)."""
    stages = network.stages()
    names = names or [f"image {i}" for i in range(len(images))]
    diff = first_difference(network, params, images, maps)
    lines = []
    for i in sorted(maps):
        bad = diff is not None and i >= diff["stage"]
        state = "differs" if diff is not None and i == diff["stage"] else (
            "after the first difference" if bad else "matches the golden model")
        lines.append(f"stage {i} output {stages[i].out_shape}: {state}")
    if diff is None:
        lines.append(f"board and golden model agree on every tapped stage of "
                     f"{len(images)} image(s)")
    else:
        lines.append(f"first difference: stage {diff['stage']}, {names[diff['image']]}, "
                     f"(c, y, x) = {diff['index']}: board {diff['board']}, golden "
                     f"{diff['golden']} ({diff['count']} values differ in that stage)")
    return lines
