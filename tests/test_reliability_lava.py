"""A failure inside one of Lava's own worker processes: the run stops with one
clear error naming the frames, and no Lava worker process is left behind."""
from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from deploy import lava_graph, lava_procs
from tests.test_bench import frames, small_net  # noqa: F401  (fixtures)
from toolchain.errors import ToolchainError


@pytest.mark.lava
@pytest.mark.timeout(180)
def test_failure_inside_a_lava_process_is_reported_with_its_frames_and_leaves_no_workers(
        small_net, frames, monkeypatch):  # noqa: F811
    original = lava_procs.PyFileSinkModel.run_spk

    def failing_run_spk(self):
        if self.time_step > 2 * (frames.shape[-1] + 1):  # during the third frame
            raise RuntimeError("injected fault")
        original(self)

    # Lava forks its workers from this process, so they inherit the patch.
    monkeypatch.setattr(lava_procs.PyFileSinkModel, "run_spk", failing_run_spk)
    before = set(multiprocessing.active_children())
    lava = lava_graph.LavaNetwork(small_net, frames.shape[-1], capacity=4)
    with pytest.raises(ToolchainError, match=r"Lava failed while running frames 0\.\.2"):
        lava.run(np.asarray(frames[:3]))
    assert set(multiprocessing.active_children()) - before == set()
