"""A failure inside one of Lava's own worker processes: the run stops with one
error naming the frame and the process, and no Lava worker process is left behind.

Lava as released waits forever when one of its worker processes raises or
dies: its runtime joins every worker, and the others wait on their channels.
`LavaNetwork` watches the workers and ends them all after a failure. Faults
are injected deterministically: a process model that raises at a chosen
step, or an input source that stalls at a chosen step so that a worker can
be killed while the run is surely in progress."""
from __future__ import annotations

import multiprocessing
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from lava.proc.lif.models import PyLifResetModelBitAcc

from deploy import lava_host, lava_procs
from deploy.export import build_netfile
from deploy.lava_host import LavaNetwork, LavaRunError
from tests.test_bench import frames, small_net  # noqa: F401  (fixtures)
from tests.test_lava_equivalence import CASES, graph, spikes
from tests.test_predict import tiny_net  # noqa: F401  (fixture)
from toolchain.core.errors import ToolchainError


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
    lava = lava_host.LavaNetwork(small_net, frames.shape[-1], capacity=4)
    with pytest.raises(ToolchainError, match=r"^Lava failed at frame \d of this call: the spike sink of layer "
                                             r"'\w+' \(FileSink\) raised RuntimeError: injected fault$") as e:
        lava.run(np.asarray(frames[:3]))
    # the first failing step is 2(T+1)+1; the input source may not have begun it yet
    first = 2 * (frames.shape[-1] + 1) + 1
    assert e.value.frame in {(first - 2) // lava.steps, (first - 1) // lava.steps}
    assert set(multiprocessing.active_children()) - before == set()


T = 5
FAULT_STEP = 12  # Lava time step (from 1) at which the fault strikes


class RaisingLif(PyLifResetModelBitAcc):
    def run_spk(self):
        if self.time_step == FAULT_STEP:
            raise ValueError("injected fault")
        return super().run_spk()


class StallingSource(lava_procs.PyFileSourceModel):
    """Holds the whole network (every step ends in a barrier) at FAULT_STEP, its progress at the step before."""

    def run_spk(self):
        if self.time_step == FAULT_STEP:
            time.sleep(3600)
        return super().run_spk()


@pytest.fixture(scope="module")
def chain():
    """An aligned net (frames stream through one runtime) and 6 frames of input."""
    spec, shape = CASES["dilated_conv"]
    net = build_netfile(graph(spec, shape), time_steps=T)
    return net, spikes((6, *shape, T)).numpy()


def _wait_for(condition, what: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.lava
@pytest.mark.timeout(300)
def test_an_exception_inside_a_lava_process_names_the_frame_and_the_layer(chain):
    net, x = chain
    before = set(multiprocessing.active_children())
    with LavaNetwork(net, T, capacity=len(x)) as lava:
        lava._run_cfg.exception_proc_model_map[lava.network.layers["c2"]] = RaisingLif
        with pytest.raises(LavaRunError) as e:
            lava.run(x)
    frame = (FAULT_STEP - 1) // net.frame_steps(T)
    assert e.value.frame == frame and frame > 0
    assert str(e.value) == f"Lava failed at frame {frame} of this call: " \
                           f"layer 'c2' (LIFReset) raised ValueError: injected fault"
    assert set(multiprocessing.active_children()) <= before, "Lava workers left running"


@pytest.mark.lava
@pytest.mark.timeout(300)
def test_killing_a_lava_worker_mid_run_ends_it_with_one_named_error(chain, monkeypatch):
    net, x = chain
    monkeypatch.setitem(lava_procs.MODELS, lava_procs.FileSource, StallingSource)
    before = set(multiprocessing.active_children())
    with LavaNetwork(net, T, capacity=len(x)) as lava:
        def kill_layer_c1():
            def worker():
                return next((actor for proc, actor in lava._actors()
                             if proc is lava.network.layers["c1"] and actor.pid), None)
            victim = _wait_for(worker, "layer c1's Lava worker")
            from deploy.lava_procs import open_memmap
            _wait_for(lambda: open_memmap(lava._progress_path, np.int64, (1,), mode="r")[0] == FAULT_STEP - 1,
                      "the run to reach the stalling step")
            os.kill(victim.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_layer_c1, daemon=True)
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(LavaRunError) as e:
            lava.run(x)
        killer.join()
    assert time.monotonic() - t0 < 120
    frame = (FAULT_STEP - 1) // net.frame_steps(T)
    assert str(e.value) == f"Lava failed at frame {frame} of this call: " \
                           f"the worker process of layer 'c1' (LIFReset) was killed by SIGKILL"
    assert set(multiprocessing.active_children()) <= before, "Lava workers left running"


# The sharded runner (`toolchain run --backend lava --workers 2`), run as users
# run it: in a process of its own, which forks one shard per worker, each shard
# forking Lava's processes. The driver installs a faulty process model first
# (the forks inherit it), then runs the command.
SHARD_DRIVER = """
import os, sys, time
from deploy import lava_procs
from toolchain.cli import main

fault, stall_dir = sys.argv[1], sys.argv[2]

class FaultySink(lava_procs.PyFileSinkModel):
    def run_spk(self):
        frame, _ = lava_procs._frame_step(self, self.proc_params["offset"])
        if fault == "raise" and frame == 1:
            raise ValueError("injected fault")
        return super().run_spk()

class StallingSource(lava_procs.PyFileSourceModel):
    def run_spk(self):
        if fault == "stall" and self.time_step == 3:
            open(os.path.join(stall_dir, str(os.getpid())), "w").close()
            time.sleep(3600)
        return super().run_spk()

lava_procs.MODELS[lava_procs.FileSink] = FaultySink
lava_procs.MODELS[lava_procs.FileSource] = StallingSource
main(sys.argv[3:])
"""


def _process_groups() -> dict[int, int]:
    """pid -> process group of every living (not zombie) process on this machine."""
    groups = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            # /proc/PID/stat: pid (comm) state ppid pgrp ...; comm may hold spaces
            state, _, pgrp = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[:3]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state != "Z":
            groups[int(entry)] = int(pgrp)
    return groups


def _no_process_left_in(groups: set[int]):
    """SIGKILL is delivered at once but a process of a few hundred MB takes a moment to go."""
    try:
        _wait_for(lambda: not any(g in groups for g in _process_groups().values()), "the run's processes to exit", timeout=30)
    except AssertionError:
        left = sorted(pid for pid, g in _process_groups().items() if g in groups)
        raise AssertionError(f"processes of the run left behind: {left}") from None


def _sharded_run(net_path, data, tmp_path, fault: str) -> subprocess.Popen:
    (tmp_path / "stalled").mkdir()
    cmd = [sys.executable, "-c", SHARD_DRIVER, fault, str(tmp_path / "stalled"),
           "run", "--net", str(net_path), "--data", str(data), "--backend", "lava", "--workers", "2"]
    return subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[1], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(run: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        raise AssertionError("the sharded run did not end after its failure") from None
    return run.returncode, err


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_an_exception_in_one_shard_ends_the_sharded_run_naming_the_dataset_frame(tiny_net, tiny_ddd17, tmp_path):  # noqa: F811
    """Shards hold test frames [0, 2] and [1]; the sink raises on the second
    frame of a shard, which only the first has: its dataset frame is 2."""
    run = _sharded_run(tiny_net, tiny_ddd17, tmp_path, "raise")
    code, err = _finish(run)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {tiny_net}: test frame 2: the spike sink of layer 'conv1' (FileSink) raised ValueError: injected fault"]
    _no_process_left_in({run.pid})


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_killing_a_shard_mid_run_ends_every_shard_and_their_lava_workers(tiny_net, tiny_ddd17, tmp_path):  # noqa: F811
    """Both shards stall in their third Lava step; one shard is killed. The run
    ends with one error naming that shard's frames, and no process of any
    shard (their Lava workers included, each shard's own process group) is left."""
    run = _sharded_run(tiny_net, tiny_ddd17, tmp_path, "stall")
    stalled = _wait_for(lambda: len(os.listdir(tmp_path / "stalled")) == 2 and os.listdir(tmp_path / "stalled"),
                        "both shards to reach the stalling step")
    shards = {os.getpgid(int(pid)) for pid in stalled}
    assert len(shards) == 2 and run.pid not in shards
    victim = min(shards)
    os.kill(victim, signal.SIGKILL)
    code, err = _finish(run)
    assert code == 2
    [line] = err.strip().splitlines()
    assert re.fullmatch(rf"error: {re.escape(str(tiny_net))}: the Lava worker running test frames "
                        r"(0, 2|1) was killed by SIGKILL", line), line
    _no_process_left_in(shards | {run.pid})
