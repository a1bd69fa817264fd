"""Model files: round trip, every kind of damage raising a clear error, the shipped model."""

import json

import numpy as np
import pytest

from fpgacnn.sw import golden, mnist, modelfile
from fpgacnn.sw import network as nets
from fpgacnn.sw import quantize as qz
from fpgacnn.sw.modelfile import ModelFileError

#: Accuracy goal of the shipped model (int8, golden model, 1,000 held-out digits).
GOAL_INT8 = 0.98
GOAL_GAP = 0.005


@pytest.fixture
def saved(tmp_path):
    net = nets.lenet5()
    params = nets.random_params(net, 0)
    path = modelfile.save(tmp_path / "m.npz", net, params, {"seed": 3, "note": "test"})
    return path, net, params


@pytest.mark.parametrize("make", [nets.lenet5, nets.seeds_cifar_example])
@pytest.mark.parametrize("seed", range(2))
def test_round_trip(tmp_path, make, seed):
    net = make()
    params = nets.random_params(net, seed)
    params[0].m[0], params[0].s[0] = 0, 63                   # range edges survive
    params[-1].m[-1], params[-1].s[-1] = (1 << golden.M_BITS) - 1, 1
    params[0].weight.flat[:2] = (-128, 127)
    params[0].bias[:2] = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
    meta = {"accuracy_int8": 0.5, "train_loss": [1.0, 0.5], "seed": seed}
    path = modelfile.save(tmp_path / "sub" / "m.npz", net, params, meta)
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert path.stat().st_mode == reference.stat().st_mode      # usual permissions
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.npz"]
    net2, params2, meta2 = modelfile.load(path, expect=make())
    assert net2 == net and meta2 == meta
    for p, q in zip(params, params2):
        for name in ("weight", "bias", "m", "s"):
            np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
        assert q.weight.dtype == np.int8 and q.bias.dtype == np.int32
        assert q.m.dtype == np.int64 and q.s.dtype == np.int64
    x = np.random.default_rng(seed).integers(-128, 128, net.input_shape, dtype=np.int8)
    np.testing.assert_array_equal(nets.run_network(net2, params2, x),
                                  nets.run_network(net, params, x))


def test_save_rejects_bad_arguments(tmp_path):
    net = nets.lenet5()
    params = nets.random_params(net, 0)
    with pytest.raises(ValueError, match="5 stages, got 4"):
        modelfile.save(tmp_path / "a.npz", net, params[:4])
    with pytest.raises(ValueError, match="plain JSON"):
        modelfile.save(tmp_path / "a.npz", net, params, {"x": object()})
    bad = nets.random_params(net, 0)
    bad[1].s[0] = 0
    with pytest.raises(ValueError, match="stage 1: S outside"):
        modelfile.save(tmp_path / "a.npz", net, bad)
    assert not list(tmp_path.iterdir()), "nothing may be written on error"


def rewrite(path, out, change):
    """Copy the arrays of ``path`` to ``out`` after ``change(arrays)`` edits them."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    with open(out, "wb") as f:
        np.savez(f, **arrays)
    return out


def header_edit(fn):
    def change(arrays):
        h = json.loads(str(arrays["header"]))
        fn(h)
        arrays["header"] = np.array(json.dumps(h))
    return change


def set_item(key, value):
    def change(arrays):
        arrays[key] = value
    return change


def set_elem(key, index, value):
    def change(arrays):
        arrays[key] = arrays[key].copy()
        arrays[key].flat[index] = value
    return change


DAMAGE = {
    "missing key": (lambda a: a.pop("stage2.m"), r"missing keys \['stage2.m'\]"),
    "missing header": (lambda a: a.pop("header"), "missing key 'header'"),
    "extra key": (set_item("stage5.weight", np.zeros(3, np.int8)),
                  r"unexpected keys \['stage5.weight'\]"),
    "weight dtype": (lambda a: a.update({"stage0.weight": a["stage0.weight"].astype(np.int16)}),
                     "stage0.weight has dtype int16, expected int8"),
    "bias dtype": (lambda a: a.update({"stage3.bias": a["stage3.bias"].astype(np.float32)}),
                   "stage3.bias has dtype float32, expected int32"),
    "weight shape": (lambda a: a.update({"stage1.weight": a["stage1.weight"][:, :, :4]}),
                     r"stage 1 weight: shape \(16, 6, 4, 5\), expected \(16, 6, 5, 5\)"),
    "bias shape": (lambda a: a.update({"stage4.bias": a["stage4.bias"][:9]}),
                   r"stage 4 bias: shape \(9,\), expected \(10,\)"),
    "M too large": (set_elem("stage2.m", 5, 1 << golden.M_BITS),
                    rf"stage 2: M outside \[0, 2\*\*{golden.M_BITS}\)"),
    "M negative": (set_elem("stage0.m", 0, -1), r"stage 0: M outside"),
    "S zero": (set_elem("stage3.s", 1, 0), r"stage 3: S outside \[1, 63\]"),
    "S too large": (set_elem("stage4.s", 9, 64), r"stage 4: S outside \[1, 63\]"),
    "header not JSON": (set_item("header", np.array("{not json")), "not valid JSON"),
    "header not string": (set_item("header", np.zeros(3)), "must be a JSON string"),
    "wrong format": (header_edit(lambda h: h.update(format="other")), "format is not"),
    "wrong version": (header_edit(lambda h: h.update(version=2)), "version 2 is not supported"),
    "meta not object": (header_edit(lambda h: h.update(meta=[1])), "'meta' must be a JSON"),
    "unknown layer": (header_edit(lambda h: h["network"]["layers"].append({"type": "Dropout"})),
                      "layer 11: unknown layer"),
    "bad layer field": (header_edit(lambda h: h["network"]["layers"][0].update(kernel="5")),
                        "layer 0: bad fields"),
    "bad geometry": (header_edit(lambda h: h["network"]["layers"][0].update(stride=2)),
                     "bad network description: .*not an integer"),
    "bad input shape": (header_edit(lambda h: h["network"].update(input_shape=[1, 28])),
                        "input_shape must be three positive integers"),
    "fewer layers": (header_edit(lambda h: h["network"]["layers"].pop()),
                     r"unexpected keys \['stage4.bias'"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_file_raises_clear_error(saved, tmp_path, case):
    path = saved[0]
    change, message = DAMAGE[case]
    bad = rewrite(path, tmp_path / "bad.npz", change)
    with pytest.raises(ModelFileError, match=message) as info:
        modelfile.load(bad)
    assert str(bad) in str(info.value)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -30])
def test_truncated_file_raises_clear_error(saved, tmp_path, keep):
    data = saved[0].read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[:n])
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        modelfile.load(bad)


@pytest.mark.parametrize("where", [0.2, 0.4, 0.6])
def test_corrupted_bytes_raise_clear_error(saved, tmp_path, where):
    data = bytearray(saved[0].read_bytes())
    i = int(len(data) * where)
    data[i:i + 4] = bytes(b ^ 0x5A for b in data[i:i + 4])
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="truncated or corrupted"):
        modelfile.load(bad)


def test_not_a_model_file(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("hello")
    with pytest.raises(ModelFileError, match="notes.npz: not a readable model file"):
        modelfile.load(text)
    single = tmp_path / "single.npz"
    with open(single, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ModelFileError, match="single .npy array"):
        modelfile.load(single)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        modelfile.load(tmp_path / "nothing.npz")


def test_expected_network_mismatch(saved):
    with pytest.raises(ModelFileError, match="expected"):
        modelfile.load(saved[0], expect=nets.seeds_cifar_example())


# ---------------------------------------------------------------------------------------
# The model shipped as package data.

@pytest.fixture(scope="module")
def shipped():
    return modelfile.load_default()


def test_shipped_model_is_package_data(shipped):
    path = modelfile.default_model_path()
    assert path.is_file() and path.parent.name == "data" and path.name == "lenet5.npz"
    network, _, meta = shipped
    assert network == nets.lenet5()
    for key in ("accuracy_float", "accuracy_int8", "heldout", "seed", "epochs"):
        assert key in meta


def test_shipped_model_meets_accuracy_goal(shipped):
    network, params, meta = shipped
    x, y = mnist.heldout()
    assert len(y) == meta["heldout"] == 1000
    acc = qz.accuracy_int8(network, params, x, y)       # golden model, every held-out digit
    assert acc == pytest.approx(meta["accuracy_int8"], abs=1e-12)
    assert acc >= GOAL_INT8, f"int8 held-out accuracy {acc:.2%} below {GOAL_INT8:.0%}"
    assert acc >= meta["accuracy_float"] - GOAL_GAP
