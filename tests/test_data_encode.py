"""Input encoders: spike counts follow the rate, draws are seeded."""
import pytest
import torch

from toolchain.core.errors import ToolchainError
from toolchain.data import encode


@pytest.fixture
def ramp():
    return torch.linspace(0, 1, 41).reshape(1, 1, 41)  # (C, H, W)


def test_poisson_counts_follow_rate_within_binomial_bounds(ramp):
    T, reps = 50, 40
    g = torch.Generator().manual_seed(0)
    x = encode(ramp.expand(reps, 1, 1, 41), "poisson", T, g)
    assert x.shape == (reps, 1, 1, 41, T)
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    rate = x.mean(dim=(0, 1, 2, 4))
    p = ramp.flatten()
    sd = (p * (1 - p) / (T * reps)).sqrt()
    assert torch.all((rate - p).abs() <= 4 * sd + 1e-6)
    assert rate[0] == 0 and rate[-1] == 1


def test_poisson_is_reproducible_per_generator_and_differs_across_seeds(ramp):
    a = encode(ramp, "poisson", 20, torch.Generator().manual_seed(5))
    b = encode(ramp, "poisson", 20, torch.Generator().manual_seed(5))
    c = encode(ramp, "poisson", 20, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("T", [1, 7, 20, 32])
def test_rate_gives_rounded_counts_evenly_spread(ramp, T):
    x = encode(ramp, "rate", T)
    counts = x.sum(-1).flatten()
    expected = torch.floor(ramp.flatten().double() * T + 0.5)
    assert torch.equal(counts.double(), expected)
    # Evenly spread: in every prefix of t steps the count stays within 1 of rate * t.
    cum = x.cumsum(-1).flatten(0, 2)
    t = torch.arange(1, T + 1)
    assert torch.all((cum - ramp.flatten()[:, None] * t).abs() <= 1.0 + 1e-6)


def test_direct_repeats_the_frame(ramp):
    x = encode(ramp, "direct", 5)
    assert x.shape == (1, 1, 41, 5)
    assert torch.equal(x[..., 3], ramp)


def test_unknown_encoding_and_bad_steps_are_clear_errors(ramp):
    with pytest.raises(ToolchainError, match="unknown encoding 'bogus'"):
        encode(ramp, "bogus", 4)
    with pytest.raises(ToolchainError, match="time_steps"):
        encode(ramp, "rate", 0)
