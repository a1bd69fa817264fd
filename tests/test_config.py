"""AcceleratorConfig: every configuration is checked once, when it is made."""

from dataclasses import fields

import pytest

from fpgacnn.hw.config import CONFIGS, DEFAULT_BAUD, AcceleratorConfig, Dataflow, get_config

BASE = get_config("icebreaker")
SIZES = [f.name for f in fields(AcceleratorConfig) if f.type is int and f.name != "tx_pad_bytes"]


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shipped_configs_are_valid(name):
    cfg = CONFIGS[name]
    assert cfg.with_() == cfg
    assert isinstance(cfg.dataflow, Dataflow)
    assert cfg.baud == DEFAULT_BAUD


def test_dataflow_strings_are_coerced():
    for text, member in [("systolic", Dataflow.SYSTOLIC), ("broadcast", Dataflow.BROADCAST)]:
        cfg = BASE.with_(dataflow=text)
        assert cfg.dataflow is member
        assert cfg == BASE.with_(dataflow=member)
    with pytest.raises(ValueError, match="config icebreaker: dataflow must be one of "
                                         "'systolic', 'broadcast', not 'weight-stationary'"):
        BASE.with_(dataflow="weight-stationary")
    with pytest.raises(ValueError, match="dataflow must be one of .*, not 1"):
        BASE.with_(dataflow=1)


@pytest.mark.parametrize("rows, message", [
    (12, "rows = 12 must be a multiple of 8"),
    (4, "rows = 4 must be a multiple of 8"),
    (24, "rows = 24 must be 8 times a power of two"),
])
def test_bad_rows(rows, message):
    with pytest.raises(ValueError, match=f"config icebreaker: {message}"):
        BASE.with_(rows=rows)


def test_rows_powers_of_two_accepted():
    assert [BASE.with_(rows=r).rows for r in (8, 16, 32, 64)] == [8, 16, 32, 64]


@pytest.mark.parametrize("field", SIZES)
@pytest.mark.parametrize("value", [0, -8, 2.5, True, "8"])
def test_sizes_must_be_positive_integers(field, value):
    with pytest.raises(ValueError, match=f"config icebreaker: {field} must be a positive "
                                         f"integer, not {value!r}"):
        BASE.with_(**{field: value})


@pytest.mark.parametrize("field, value, message", [
    ("tx_pad_bytes", -1, "tx_pad_bytes must be an integer 0..65535, not -1"),
    ("tx_pad_bytes", 1 << 16, "tx_pad_bytes must be an integer 0..65535, not 65536"),
    ("tx_pad_bytes", True, "tx_pad_bytes must be an integer 0..65535, not True"),
    ("rx_fifo_bytes", 256, "rx_fifo_bytes = 256 must be a power of two >= 512"),
    ("rx_fifo_bytes", 3072, "rx_fifo_bytes = 3072 must be a power of two >= 512"),
    ("watchdog_log2", 9, "watchdog_log2 = 9 must be 10..31"),
    ("watchdog_log2", 32, "watchdog_log2 = 32 must be 10..31"),
])
def test_link_fields(field, value, message):
    with pytest.raises(ValueError, match=f"config icebreaker: {message}"):
        BASE.with_(**{field: value})
    assert BASE.with_(tx_pad_bytes=0, rx_fifo_bytes=1024, watchdog_log2=10).tx_pad_bytes == 0


def test_act_bytes_whole_chunks():
    with pytest.raises(ValueError, match="act_bytes = 4100 must be a multiple of 8"):
        BASE.with_(act_bytes=4100)


@pytest.mark.parametrize("interval", [3, 6, 12])
def test_requant_interval_power_of_two(interval):
    with pytest.raises(ValueError, match=f"requant_interval = {interval} must be a power of "
                                         f"two dividing the"):
        BASE.with_(requant_interval=interval)


def test_requant_intervals_accepted():
    assert [BASE.with_(requant_interval=k).requant_interval for k in (1, 2, 4, 8)] == \
        [1, 2, 4, 8]


@pytest.mark.parametrize("name", ["", "x" * 17, "brd\u00e9", "a\nb", 7])
def test_bad_name(name):
    with pytest.raises(ValueError, match="config name must be 1 to 16 printable ASCII"):
        BASE.with_(name=name)


def test_ice40_must_be_bool():
    with pytest.raises(ValueError, match="ice40 must be True or False, not 'yes'"):
        BASE.with_(ice40="yes")


def test_unknown_config_names_the_choices():
    with pytest.raises(ValueError, match="unknown board/config 'icestick'; choose one of "
                                         "icebreaker, ulx3s-85f"):
        get_config("icestick")


@pytest.mark.parametrize("flag", ["compact_drain", "wrap_rows", "shared_qparams"])
def test_boolean_flags_are_checked(flag):
    with pytest.raises(ValueError, match=f"{flag} must be True or False"):
        get_config("icebreaker").with_(**{flag: 1})


ULX3S = get_config("ulx3s-85f")


@pytest.mark.parametrize("changes, message", [
    ({"result_lanes": 3}, "result_lanes = 3 must be a power of two dividing rows = 16"),
    ({"result_lanes": 32}, "result_lanes = 32 must be a power of two dividing rows = 16"),
    ({"compact_drain": False}, "result_lanes = 4 needs compact_drain, dataflow='broadcast'"),
    ({"dataflow": "systolic", "fc_columns": False},
     "result_lanes = 4 needs compact_drain, dataflow='broadcast'"),
    ({"ice40": True}, "result_lanes = 4 needs compact_drain, dataflow='broadcast' and no ice40"),
])
def test_bad_result_lanes(changes, message):
    with pytest.raises(ValueError, match=f"config ulx3s-85f: {message}"):
        ULX3S.with_(**changes)


def test_shared_qparams_need_lanes():
    with pytest.raises(ValueError, match="config ulx3s-85f: shared_qparams needs "
                                         "result_lanes > 1"):
        ULX3S.with_(result_lanes=1, pixel_pairs=False, shared_qparams=True)
    assert ULX3S.with_(result_lanes=8, shared_qparams=True).shared_qparams


def test_result_lanes_accepted():
    assert [ULX3S.with_(result_lanes=n, pixel_pairs=False).result_lanes
            for n in (1, 2, 4, 8, 16)] == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("changes", [
    dict(result_lanes=16),                         # 16 lanes do not divide 8 rows
    dict(rows=8, result_lanes=8),
    dict(compact_drain=False, result_lanes=1),
])
def test_pixel_pairs_needs(changes):
    with pytest.raises(ValueError, match="pixel_pairs needs"):
        ULX3S.with_(pixel_pairs=True, **changes)


def test_pixel_pairs_refuses_act_window():
    with pytest.raises(ValueError, match="pixel_pairs needs"):
        get_config("icebreaker").with_(pixel_pairs=True)


@pytest.mark.parametrize("changes", [
    dict(dataflow="systolic", fc_columns=False, result_lanes=1, pixel_pairs=False),
    dict(ice40=True, result_lanes=1, fc_columns=False),
])
def test_overlap_drain_needs(changes):
    with pytest.raises(ValueError, match="overlap_drain needs dataflow='broadcast' and no ice40"):
        ULX3S.with_(overlap_drain=True, **changes)
    assert ULX3S.with_(overlap_drain=False, **changes).overlap_drain is False
