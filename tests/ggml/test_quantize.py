import numpy as np
import pytest

pytest.importorskip("llama_cpp")
from gguf import GGMLQuantizationType as QT, quants  # noqa: E402

from llm_quantizer.errors import BackendError, ConfigError  # noqa: E402
from llm_quantizer.ggml import lib  # noqa: E402
from llm_quantizer.ggml.quantize import (  # noqa: E402
    dequantize_tensor, fake_quantize, quant_error, quantize_tensor)

K_ORDER = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0"]
# relative MSE on Gaussian weights, ~1.5x the measured 0.088, 0.023, 0.0051, 0.0013, 0.00032, 3e-5, 0.0059
REL_MSE_BOUND = {"Q2_K": 0.13, "Q3_K": 0.035, "Q4_K": 0.008, "Q5_K": 0.002, "Q6_K": 0.0005,
                 "Q8_0": 5e-5, "IQ4_XS": 0.009}


@pytest.fixture(scope="module")
def w():
    return np.random.default_rng(0).standard_normal((96, 512)).astype(np.float32)


@pytest.fixture(scope="module")
def imat():
    rng = np.random.default_rng(1)
    return (rng.random(512) ** 4 * 50 + 0.01).astype(np.float32)  # a few dominant channels


def rel_mse(w, qtype, imatrix=None):
    return float(np.mean((fake_quantize(w, qtype, imatrix) - w) ** 2) / np.mean(w ** 2))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_bytes_equal_gguf_py(w, qtype):
    ours = quantize_tensor(w, qtype, nthread=2)
    ref = quants.quantize(w, QT[qtype])
    assert ours.shape == ref.shape and ours.dtype == np.uint8
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("qtype", ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"])
def test_dequant_equals_gguf_py(w, qtype):
    raw = quantize_tensor(w, qtype)
    assert raw.shape == (w.shape[0], lib.row_size(qtype, w.shape[1]))
    assert np.array_equal(dequantize_tensor(raw, qtype, w.shape), quants.dequantize(raw, QT[qtype]))


def test_round_trip_error_bounded_and_ordered(w):
    errs = {t: rel_mse(w, t) for t in REL_MSE_BOUND}
    for t, bound in REL_MSE_BOUND.items():
        assert errs[t] < bound, (t, errs[t])
    ordered = [errs[t] for t in K_ORDER]
    assert ordered == sorted(ordered, reverse=True), errs


def test_threads_do_not_change_bytes(w):
    assert np.array_equal(quantize_tensor(w, "Q4_K", nthread=1), quantize_tensor(w, "Q4_K", nthread=4))


def test_imatrix_changes_q4k_and_lowers_weighted_error(w, imat):
    plain, weighted = quantize_tensor(w, QT.Q4_K), quantize_tensor(w, QT.Q4_K, imat)
    assert not np.array_equal(plain, weighted)
    assert quant_error(w, "Q4_K", imat, h=imat) < quant_error(w, "Q4_K", None, h=imat)


def test_quant_error_full_h_matches_diag(w, imat):
    e_diag = quant_error(w, "Q4_K", imat, h=imat)
    assert quant_error(w, "Q4_K", imat, h=np.diag(imat)) == pytest.approx(e_diag, rel=1e-6)
    dw = w - fake_quantize(w, "Q4_K")
    assert quant_error(w, "Q4_K") == pytest.approx(float(np.sum(dw.astype(np.float64) ** 2)), rel=1e-6)


def test_requires_imatrix_raises_without_one(w, imat):
    with pytest.raises(BackendError, match="importance matrix"):
        quantize_tensor(w, "IQ2_XXS")
    assert quantize_tensor(w, "IQ2_XXS", imat).shape[0] == w.shape[0]


def test_bad_inputs_raise_clear_errors(w):
    with pytest.raises(BackendError, match="multiple of 256"):
        quantize_tensor(w[:, :96], "Q4_K")
    with pytest.raises(BackendError, match="cannot quantize"):
        quantize_tensor(w, "Q8_K")
    with pytest.raises(ConfigError, match="unknown ggml type"):
        quantize_tensor(w, "Q4_X")
    with pytest.raises(BackendError, match="imatrix has"):
        quantize_tensor(w, "Q4_K", np.ones(7, np.float32))
    with pytest.raises(BackendError, match="needs 288 bytes"):
        dequantize_tensor(np.zeros(100, np.uint8), "Q4_K", (1, 512))
