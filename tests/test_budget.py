"""The memory budget (``sw/budget.py``) and ``fpgacnn describe NETWORK --board B``."""

import pytest
from fpgacnn.hw.config import get_config
from fpgacnn.sw import compiler
from fpgacnn.sw import network as nets
from fpgacnn.sw.budget import format_budget, memory_budget

from fpgacnn.cli import main


@pytest.mark.parametrize("make, board", [(nets.lenet5, "icebreaker"),
                                         (nets.cifar_small, "ulx3s-85f"),
                                         (nets.seeds_layer, "ulx3s-85f")])
def test_budget_matches_the_compiled_program(make, board):
    net, config = make(), get_config(board)
    program = compiler.compile_network(net, nets.random_params(net, 0), config)
    use = {u.memory: u for u in memory_budget(net, config)}
    assert use["weights"].used == program.weight_words.size
    assert use["weights"].capacity == config.weight_words * config.rows
    assert use["activations"].used == program.plan.used_bytes
    assert use["activations"].capacity == config.act_bytes
    assert use["qparams"].used == len(program.qparams)
    assert use["program"].used == len(program.descriptors)
    assert all(u.headroom == u.capacity - u.used >= 0 for u in use.values())
    assert format_budget(net, config)[-1] == f"{net.name} fits {config.name}"


def test_budget_names_the_short_memories():
    config = get_config("icebreaker").with_(weight_words=1000, qparam_entries=100,
                                            act_window=False)
    lines = format_budget(nets.seeds_layer(), config)
    # weights 2 k-blocks x 75 words x 8 B = 1,200 of 8,000 B; qparams 10 of 100: fit.
    assert lines[-1] == ("seeds-layer does NOT fit icebreaker: activations "
                         "(12,288 B missing)")
    lines = format_budget(nets.lenet5(), config)
    assert lines[-1] == ("lenet5 does NOT fit icebreaker: weights (54,504 B missing), "
                         "qparams (136 entries missing)")


def test_describe_board_prints_the_budget(capsys):
    assert main(["describe", "lenet5", "--board", "icebreaker"]) == 0
    out = capsys.readouterr().out
    assert "memory budget of lenet5 on icebreaker:" in out
    assert "  activations      4,096     3,144       952  B / block RAM" in out
    assert "buffer A (stage 0, 2, 4 outputs; the result at 0)" in out
    assert out.rstrip().endswith("lenet5 fits icebreaker")


def test_describe_board_says_what_does_not_fit(capsys):
    assert main(["describe", "cifar-small", "--board", "icebreaker"]) == 1
    out = capsys.readouterr().out
    assert "cifar-small does NOT fit icebreaker: activations (8,192 B missing)" in out
    assert "compiler: cifar-small does not fit the 4096-byte activation memory" in out
