"""The SynOps a training run counts are the energy study's: the same frames give
the same SynOps per frame from torch's spikes as from the deployed net's run,
and the budget penalty pushes spikes down only above the budget."""
from __future__ import annotations

import pytest
import torch

import models
from deploy.export import build_netfile, quantized_copy
from deploy.synops import SynOpsCounter, budget_penalty
from toolchain.studies.energy import count_run, energy


@pytest.mark.parametrize("name", ["spiking-deeplab-tiny", "spiking-fcn-tiny"])
def test_training_counts_the_synops_the_energy_study_counts_on_the_deployed_net(name):
    torch.manual_seed(0)
    model = models.build(name, 2, 6, (24, 32), quantized=True).eval()
    x = (torch.rand(3, 2, 24, 32, 6) < 0.3).float()
    counter = SynOpsCounter(model, time_steps=6)
    with torch.no_grad():
        _, spikes = quantized_copy(model)(x)
        total, per_layer = counter(x, spikes)
    counts = count_run(build_netfile(model, time_steps=6), x)
    study = energy(counts)
    assert all(float(s.sum()) > 0 for s in spikes.values()), "a silent layer would compare nothing"
    assert float(total) == pytest.approx(study["synops_per_frame"], rel=1e-6)
    assert {k: pytest.approx(float(v), rel=1e-6) for k, v in per_layer.items()} == \
        {layer["name"]: layer["synops"] for layer in counts["layers"]}


def test_the_count_is_differentiable_and_the_penalty_acts_only_above_the_budget():
    torch.manual_seed(0)
    model = models.build("spiking-deeplab-tiny", 2, 6, (24, 32)).train()
    x = (torch.rand(2, 2, 24, 32, 6) < 0.3).float()
    counter = SynOpsCounter(model, time_steps=6)
    assert model.training, "building the counter leaves the model's mode alone"
    _, spikes = model(x)
    total, _ = counter(x, spikes)
    budget_penalty(total, float(total) / 2).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    assert float(budget_penalty(total.detach(), 2 * float(total))) == 0.0
    assert float(budget_penalty(torch.tensor(150.0), 100.0)) == pytest.approx(0.5)
