"""The memory budget (``sw/budget.py``) and ``fpgacnn describe NETWORK --board B``."""

import pytest
from fpgacnn.hw.config import CONFIGS, get_config
from fpgacnn.sw import compiler
from fpgacnn.sw import network as nets
from fpgacnn.sw.budget import format_budget, limits_table, memory_budget

from fpgacnn.cli import main

ICEBREAKER = get_config("icebreaker").with_(act_window=False, max_layers=8)
WINDOW = ICEBREAKER.with_(act_window=True, max_layers=32)


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


def describe_on(config, network, capsys, monkeypatch):
    """``fpgacnn describe NETWORK --board icebreaker`` with the board's config ``config``:
    ``(exit status, output)``."""
    monkeypatch.setitem(CONFIGS, "icebreaker", config)
    status = main(["describe", network, "--board", "icebreaker"])
    return status, capsys.readouterr().out


def test_describe_board_says_what_does_not_fit(capsys, monkeypatch):
    # Without the activation window (the iCEBreaker before it had one).
    status, out = describe_on(ICEBREAKER, "cifar-small", capsys, monkeypatch)
    assert status == 1
    assert "cifar-small does NOT fit icebreaker: activations (8,192 B missing)" in out
    assert "compiler: cifar-small does not fit the 4096-byte activation memory" in out


@pytest.mark.parametrize("make", [nets.cifar_small, nets.seeds_layer, nets.wide64])
def test_budget_of_a_streamed_plan(make):
    net = make()
    program = compiler.compile_network(net, nets.random_params(net, 0), WINDOW)
    plan = program.plan
    use = {u.memory: u for u in memory_budget(net, WINDOW)}
    assert use["activations"].used == plan.used_bytes <= WINDOW.act_bytes
    assert use["window"].used == plan.window_bytes == 65536 - plan.window_low
    assert use["window"].capacity == 65536 - WINDOW.act_bytes
    # The window is the top of the weight memory: both count against it.
    assert use["weights"].used == program.weight_words.size + plan.window_bytes
    assert use["program"].used == len(program.descriptors)
    assert all(u.headroom >= 0 for u in use.values())
    assert format_budget(net, WINDOW)[-1] == f"{net.name} fits icebreaker"


def test_describe_board_shows_the_window(capsys, monkeypatch):
    status, out = describe_on(WINDOW, "cifar-small", capsys, monkeypatch)
    assert status == 0
    assert "  window          61,440     7,168    54,272  B / top of the weight memory" in out
    assert "        3,072 B   image slot 0 = 1 (3072 B input)" in out
    assert "        4,096 B   stage 0 output" in out
    assert "  program             32        28         4  descriptors / block RAM" in out
    assert ("streamed plan: 28 descriptors (per stage: 6, 16, 4, 1, 1), 15,040 B copied per "
            "image, 194,304 ideal cycles (array beats + copied bytes); result at activation "
            "address 0") in out
    assert "cifar-small fits icebreaker" in out


def test_limits_table_with_the_window():
    table = limits_table({"icebreaker": WINDOW, "ulx3s-85f": get_config("ulx3s-85f")})
    assert "| activation window (B) | 61,440 (weight bytes from 69,632) | none |" in table
    assert "| maps next to a 3×32×32 input (B) | none; window 58,368 | 22,528 |" in table
    assert "| descriptors (layers; bands and copies) | ≤ 32 | ≤ 16 |" in table


def test_budget_of_a_streamed_plan_with_too_many_descriptors():
    net = nets.cifar_small()
    lines = format_budget(net, WINDOW.with_(max_layers=16))
    # The plan with the fewest descriptors, as the compiler's refusal counts them.
    with pytest.raises(compiler.CompileError, match="cifar-small needs at least 21 desc"):
        compiler.compile_network(net, nets.random_params(net, 0), WINDOW.with_(max_layers=16))
    assert "  program             16        21        -5  descriptors / block RAM" in lines
    assert lines[-1] == "cifar-small does NOT fit icebreaker: program (5 descriptors missing)"
