"""The BLAS process model for Lava's Conv computes what Lava's own fixed-point
model computes (`lava.proc.conv.utils.conv`, then the 24-bit signed wrap),
integer for integer, for every stride, padding, dilation and grouping."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lava.proc.conv import utils

from deploy.lava_procs import BlasConv


def lava_conv(x, w, stride, padding, dilation, groups):
    out = utils.conv(x, w, w.shape[1:3], stride, padding, dilation, groups)
    return utils.signed_clamp(out, bits=24)


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kx, ky = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    sx = draw(st.integers(dilation[0] * (kx - 1) + 1 - 2 * padding[0], 9).filter(lambda v: v >= 1))
    sy = draw(st.integers(dilation[1] * (ky - 1) + 1 - 2 * padding[1], 9).filter(lambda v: v >= 1))
    seed = draw(st.integers(0, 2**31))
    return (sx, sy, cin), (cout, kx, ky, cin // groups), stride, padding, dilation, groups, seed


@settings(max_examples=60, deadline=None)
@given(conv_case())
def test_blas_conv_equals_lava_conv_on_spikes(case):
    shape, wshape, stride, padding, dilation, groups, seed = case
    rng = np.random.default_rng(seed)
    x = rng.random(shape) < 0.4
    w = rng.integers(-256, 255, wshape).astype(np.int32)
    got = BlasConv(w, stride, padding, dilation, groups)(x)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, lava_conv(x, w, stride, padding, dilation, groups))


def test_blas_conv_wraps_large_sums_to_24_bits_as_lava_does():
    """Graded inputs push sums past 2^24: float64 then, and the same signed wrap."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 1 << 16, (5, 4, 8)).astype(np.int32)
    w = rng.integers(-256, 255, (3, 3, 3, 8)).astype(np.int32)
    conv = BlasConv(w, (1, 1), (1, 1), (1, 1), 1)
    got = conv(x)
    assert conv.w_bound * x.max() >= 1 << 24  # the float64 path ran
    expected = lava_conv(x, w, (1, 1), (1, 1), (1, 1), 1)
    assert np.abs(utils.conv(x, w, (3, 3), (1, 1), (1, 1), (1, 1), 1)).max() >= 1 << 23  # the wrap mattered
    np.testing.assert_array_equal(got, expected)


@pytest.mark.lava
@pytest.mark.slow
def test_blas_and_stock_conv_models_give_the_same_lava_run():
    """Inside a running graph (one-step send delay, frame restarts, grouped and
    strided and dilated layers) the BLAS model changes nothing Lava computes."""
    from lava.lib.dl import slayer

    from deploy.export import build_netfile
    from deploy.lava_host import LavaNetwork
    from models.graph import INPUT

    from .content import assert_has_content
    from .test_lava_equivalence import conv, graph, spikes

    spec = [("c1", [INPUT], [conv(2, 4, 3, stride=2, padding=1)], True),
            ("c2", ["c1"], [conv(4, 4, 3, padding=2, dilation=2, groups=2)], True),
            ("out", ["c2", "c1"], [conv(4, 3, 3, padding=1),
                                   lambda: slayer.synapse.Conv(4, 3, 1)], False)]
    model = graph(spec, (2, 9, 8))
    x = spikes((2, 2, 9, 8, 5), rate=0.4).numpy()
    net = build_netfile(model, time_steps=5)
    runs = []
    for stock in (True, False):
        with LavaNetwork(net, 5, capacity=2, stock_conv=stock) as lava:
            runs.append(lava.run(x))
    (stock_spikes, _, stock_v), (blas_spikes, _, blas_v) = runs
    assert_has_content(blas_spikes, blas_v, layers=["c1", "c2"], where="stock vs BLAS conv")
    for name in stock_spikes:
        np.testing.assert_array_equal(blas_spikes[name], stock_spikes[name], err_msg=f"layer {name}")
    np.testing.assert_array_equal(blas_v, stock_v)
