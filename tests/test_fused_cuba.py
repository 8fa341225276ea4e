"""The fused CPU CUBA-LIF neuron and 2-D synapses against slayer's own CPU path:
identical spikes and states, gradients to float rounding, whole models
trained both ways, and the fused path actually used by default."""
import contextlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lava.lib.dl import slayer

import models
from models.fused_cuba import cuba_dynamics, cuba_forward, fused_calls, neuron_impl, set_neuron_impl, synapse_forward

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def impl(name):
    old = neuron_impl()
    set_neuron_impl(name)
    try:
        yield
    finally:
        set_neuron_impl(old)


def _neuron(threshold=1.0, current_decay=1.0, voltage_decay=0.01, tau_grad=1.0, scale_grad=1.0, **kw):
    args = dict(shared_param=True, persistent_state=False, requires_grad=False)
    args.update(kw)
    return slayer.neuron.cuba.Neuron(threshold=threshold, current_decay=current_decay, voltage_decay=voltage_decay,
                                     tau_grad=tau_grad, scale_grad=scale_grad, **args)


@st.composite
def neuron_cases(draw):
    n, c, h = (draw(st.integers(1, k)) for k in (3, 4, 5))
    w = draw(st.integers(2, 5))  # at least two neurons: one silent, one firing
    t = draw(st.integers(2, 12))
    params = dict(
        threshold=draw(st.sampled_from([1.0, 0.5, 1.25, 3.0]) | st.floats(0.05, 4.0)),
        current_decay=draw(st.sampled_from([1.0, 0.0, 0.25]) | st.floats(0.0, 1.0)),
        voltage_decay=draw(st.sampled_from([0.01, 0.0, 1.0]) | st.floats(0.0, 1.0)),
        tau_grad=draw(st.floats(0.1, 4.0)),
        scale_grad=draw(st.floats(0.1, 4.0)),
    )
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["normal", "sparse", "dense", "quantized"]))
    scale = draw(st.floats(0.01, 3.0))
    g = torch.Generator().manual_seed(seed)
    shape = (n, c, h, w, t)
    if kind == "quantized":  # synapse output of 8-bit weights (steps of 2/64) onto spikes
        z = torch.randint(-40, 41, shape, generator=g).float() * (2 / 64)
    else:
        z = torch.randn(shape, generator=g) * scale * params["threshold"]
        if kind == "sparse":
            z = z * (torch.rand(shape, generator=g) < 0.1)
        elif kind == "dense":
            z = z.abs() + params["threshold"]
    # one neuron that never fires (no input) and one that fires at once, so
    # that the compared spikes are never all zero nor all one
    z[0, 0, 0, 0, :] = 0
    z[-1, -1, -1, -1, 0] = 3 * params["threshold"] + 1
    return z, params


def _frame_major(z):
    """The same values in the memory order the 2-D synapses produce."""
    return z.permute(0, 4, 1, 2, 3).contiguous().permute(0, 2, 3, 4, 1)


@SETTINGS
@given(neuron_cases(), st.booleans())
def test_fused_forward_is_bit_identical_to_slayer(case, frame_major):
    z, params = case
    ref = _neuron(**params)
    current, voltage = ref.dynamics(z)
    spikes = ref.spike(voltage)
    got = cuba_dynamics(_neuron(**params), _frame_major(z) if frame_major else z)
    assert torch.equal(got[0], current)
    assert torch.equal(got[1], voltage)
    assert torch.equal(got[2], spikes)
    assert 0 < spikes.sum() < spikes.numel()
    with impl("fused"):
        assert torch.equal(cuba_forward(_neuron(**params), z), spikes)


@SETTINGS
@given(neuron_cases())
def test_fused_gradient_matches_slayer(case):
    z, params = case
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(7))
    grads, outs = [], []
    for name in ("slayer", "fused"):
        x = z.clone().requires_grad_()
        with impl(name):
            s = cuba_forward(_neuron(**params), x)
        (s * grad).sum().backward()
        grads.append(x.grad)
        outs.append(s.detach())
    assert torch.equal(outs[0], outs[1])
    assert 0 < outs[0].sum() < outs[0].numel()
    ref = grads[0]
    torch.testing.assert_close(grads[1], ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()) + 1e-12)


@st.composite
def synapse_cases(draw):
    quantized = draw(st.booleans())
    q = _neuron().quantize_8bit if quantized else None
    kind = draw(st.sampled_from(["conv", "transpose", "pool"]))
    cin, cout = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w, t, n = draw(st.integers(3, 9)), draw(st.integers(3, 9)), draw(st.integers(1, 5)), draw(st.integers(1, 2))
    torch.manual_seed(draw(st.integers(0, 2**31 - 1)))
    if kind == "conv":
        k, d = draw(st.sampled_from([1, 3])), draw(st.integers(1, 2))
        syn = slayer.synapse.Conv(cin, cout, k, stride=draw(st.integers(1, 2)), padding=d * (k - 1) // 2,
                                  dilation=d, weight_norm=True, weight_scale=8, pre_hook_fx=q)
    elif kind == "transpose":
        k = (draw(st.sampled_from([3, 4])), draw(st.sampled_from([3, 4])))
        syn = slayer.synapse.ConvTranspose(cin, cout, k, stride=2, padding=1, weight_norm=True, weight_scale=8,
                                           pre_hook_fx=q)
    else:
        syn = slayer.synapse.Pool(2, stride=2, weight_scale=0.5, pre_hook_fx=q)
    x = (torch.rand(n, cin, h, w, t) < draw(st.floats(0.05, 0.9))).float()
    return syn, x, quantized


@SETTINGS
@given(synapse_cases())
def test_synapse_forward_matches_slayer(case):
    syn, x, quantized = case
    params = [p for p in syn.parameters() if p.requires_grad]
    results = []
    for name in ("slayer", "fused"):
        xin = x.clone().requires_grad_()
        with impl(name):
            y = synapse_forward(syn, xin)
        g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
        results.append((y.detach(), torch.autograd.grad((y * g).sum(), [xin] + params)))
    (y_ref, g_ref), (y, g) = results
    assert y.shape == y_ref.shape
    if quantized:  # multiples of 2/64 onto spikes: every sum is exact
        assert torch.equal(y, y_ref)
    else:
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    # weight norm's gradient for v is a projection, zero up to rounding when
    # v has one element: tolerances scale with the largest gradient of all
    scale = max(float(b.abs().max()) for b in g_ref)
    # ... and identically zero when each output channel's v has one element
    # (weight = g * sign(v)): both paths then return rounding noise, not compared
    degenerate = [p.dim() > 1 and p[0].numel() == 1 and n.endswith("weight_v")
                  for n, p in syn.named_parameters() if p.requires_grad]
    for a, b, skip in zip(g, g_ref, [False] + degenerate, strict=True):
        if not skip:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * scale + 1e-12)


def test_unsupported_neurons_fall_back_to_slayer():
    for kw in (dict(persistent_state=True), dict(graded_spike=True), dict(requires_grad=True),
               dict(shared_param=False, current_decay=(0.1, 0.2), voltage_decay=(0.0, 0.1))):
        # slayer's per-channel decays broadcast over (N, C) only
        z = torch.randn(2, 3, 6) if not kw.get("shared_param", True) else torch.randn(2, 3, 4, 4, 6)
        before = fused_calls()
        torch.manual_seed(0)
        a = _neuron(**kw)
        torch.manual_seed(0)
        b = _neuron(**kw)
        with impl("fused"):
            out = cuba_forward(a, z)
        assert fused_calls() == before, kw
        assert torch.equal(out, b(z)), kw
    z = torch.randn(2, 3, 4, 4, 6, dtype=torch.float64)
    before = fused_calls()
    with impl("fused"):
        assert torch.equal(cuba_forward(_neuron(), z), _neuron()(z))
    assert fused_calls() == before


def test_impl_switch():
    assert neuron_impl() == "auto"
    with pytest.raises(ValueError, match="expected one of"):
        set_neuron_impl("fast")
    z = torch.empty(1, 1, 2, 2, 3, device="meta")
    with impl("fused"), pytest.raises(RuntimeError, match="CPU only"):
        cuba_forward(_neuron(), z)
    before = fused_calls()
    with impl("slayer"):
        cuba_forward(_neuron(), torch.randn(1, 2, 3, 3, 4))
    assert fused_calls() == before


def test_auto_mode_runs_the_fused_kernel_on_cpu():
    torch.manual_seed(0)
    model = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), quantized=True)
    spiking = sum(not n.is_readout for n in model.nodes)
    before = fused_calls()
    assert neuron_impl() == "auto"  # the default every model runs with
    model((torch.rand(1, 2, 16, 16, 4) < 0.3).float())
    assert fused_calls() - before == spiking


def _train(name, impl_name, steps=3):
    """Spikes, readout, gradients and weights after each of `steps` AdamW steps."""
    torch.manual_seed(0)
    model = models.build(name, 2, 6, (32, 32), quantized=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 2, 32, 32, 8, generator=g) < 0.2).float()
    y = torch.randint(0, 6, (2, 32, 32), generator=g)
    history = []
    with impl(impl_name):
        for _ in range(steps + 1):
            scores, spikes = models.predict(model, x, (32, 32))
            loss = torch.nn.functional.cross_entropy(scores, y)
            opt.zero_grad()
            loss.backward()
            history.append(dict(
                spikes={k: v.detach().clone() for k, v in spikes.items()},
                scores=scores.detach().clone(),
                grads={k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None},
                weights={k: p.detach().clone() for k, p in model.named_parameters()}))
            opt.step()
    return history


@pytest.mark.slow
@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_whole_model_forward_backward_and_training_match_slayer(name):
    ref, got = _train(name, "slayer"), _train(name, "fused")
    for step, (a, b) in enumerate(zip(ref, got, strict=True)):
        assert a["spikes"].keys() == b["spikes"].keys()
        for node in a["spikes"]:
            assert torch.equal(a["spikes"][node], b["spikes"][node]), (step, node)
            assert a["spikes"][node].sum() > 0, (step, node)
        torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-5, atol=1e-6)
        assert a["grads"].keys() == b["grads"].keys() and a["grads"]
        for k in a["grads"]:
            scale = float(a["grads"][k].abs().max())
            torch.testing.assert_close(b["grads"][k], a["grads"][k], rtol=1e-4, atol=1e-4 * scale + 1e-12)
        for k in a["weights"]:
            torch.testing.assert_close(b["weights"][k], a["weights"][k], rtol=1e-5, atol=1e-5)


@SETTINGS
@given(neuron_cases(), st.integers(1, 3))
def test_the_neuron_writes_its_spikes_delayed_like_slayers_axon_delay(case, steps):
    z, params = case
    steps = min(steps, z.shape[-1] - 1)  # the neuron that fires at step 0 still shows
    grad = torch.randn(z.shape, generator=torch.Generator().manual_seed(11))
    results = []
    for name in ("slayer", "fused"):
        x = z.clone().requires_grad_()
        with impl(name):
            s = cuba_forward(_neuron(**params), x, delay_steps=steps)
        (s * grad).sum().backward()
        results.append((s.detach(), x.grad))
    (s_ref, g_ref), (s, g) = results
    assert torch.equal(s, slayer.axon.delay(_neuron(**params)(z), steps).detach())
    assert torch.equal(s, s_ref) and not s[..., :steps].any()
    assert 0 < s.sum()
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5 * float(g_ref.abs().max()) + 1e-12)


def test_surrogate_exponential_is_float32_exact_to_a_few_ulp():
    import numba
    import numpy as np

    from models.fused_cuba import _exp_nonpositive

    @numba.njit
    def run(x, out):
        for i in range(x.shape[0]):
            out[i] = _exp_nonpositive(x[i])
    x = -np.concatenate([np.linspace(0, 1e-3, 1001), np.linspace(0, 87, 200_001)]).astype(np.float32)
    got = np.empty_like(x)
    run(x, got)
    ref = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - ref) / ref) < 2.5e-7
    assert got[0] == 1.0


def test_layers_hand_each_other_frame_major_tensors_without_copies():
    """A conv's output feeds the neuron, whose spikes feed the next conv, all
    as views of one frame-major buffer per layer (a copy per layer cost a
    fifth of a training step)."""
    from models.fused_cuba import _frames

    torch.manual_seed(0)
    model = models.build("spiking-deeplab-tiny", 2, 6, (16, 16), quantized=True)
    _, spikes = model((torch.rand(2, 2, 16, 16, 8) < 0.3).float())
    for name, s in spikes.items():
        assert s.permute(0, 4, 2, 3, 1).is_contiguous(), name
        assert _frames(s).data_ptr() == s.data_ptr(), name
