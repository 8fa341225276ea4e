"""A Lava run that fails ends with one error naming the frame and the process, and leaves no process behind.

Lava as released waits forever when one of its worker processes raises or
dies: its runtime joins every worker, and the others wait on their channels.
`LavaNetwork` watches the workers; the sharded runner (`deploy.runner`)
watches its shard processes and ends each shard's process group, Lava's
workers included. Faults are injected deterministically: a process model that
raises at a chosen step, or an input source that stalls at a chosen step so
that a worker can be killed while the run is surely in progress.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import pytest
from lava.proc.lif.models import PyLifResetModelBitAcc

from deploy import lava_procs
from deploy.export import build_netfile
from deploy.lava_graph import LavaNetwork, LavaRunError
from tests.test_lava_equivalence import CASES, graph, spikes
from toolchain.errors import ToolchainError

pytestmark = [pytest.mark.lava, pytest.mark.timeout(300)]

T = 5
FAULT_STEP = 12  # Lava time step (from 1) at which the fault strikes


class RaisingLif(PyLifResetModelBitAcc):
    def run_spk(self):
        if self.time_step == FAULT_STEP:
            raise ValueError("injected fault")
        return super().run_spk()


class StallingSource(lava_procs.PyFileSourceModel):
    """Holds the whole network (every step ends in a barrier) at FAULT_STEP."""

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


def _group(pgid: int) -> list[int]:
    """Live (non-zombie) processes of a process group, from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z" and int(stat[2]) == pgid:
                pids.append(int(entry))
    return pids


def _wait_for(condition, what: str, timeout: float = 120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


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


def test_killing_a_lava_worker_mid_run_ends_it_with_one_named_error(chain, monkeypatch):
    net, x = chain
    monkeypatch.setitem(lava_procs.MODELS, lava_procs.FileSource, StallingSource)
    before = set(multiprocessing.active_children())
    with LavaNetwork(net, T, capacity=len(x)) as lava:
        def kill_layer_c1():
            def worker():
                from lava.magma.compiler.builders.py_builder import PyProcessBuilder
                runtime = lava.network.runtime
                actors = getattr(getattr(runtime, "_messaging_infrastructure", None), "actors", [])
                procs = [p for p, b in runtime._executable.proc_builders.items()
                         if isinstance(b, PyProcessBuilder)] if actors else []
                k = next((i for i, p in enumerate(procs) if p is lava.network.layers["c1"]), None)
                return actors[k] if k is not None and k < len(actors) and actors[k].pid else None
            victim = _wait_for(worker, "layer c1's Lava worker")
            from deploy.lava_procs import open_memmap
            _wait_for(lambda: open_memmap(lava._progress_path, np.int64, (1,), mode="r")[0] == FAULT_STEP,
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


@pytest.fixture
def sharded_net(tmp_path, tiny_ddd17):
    import models
    from deploy.export import export
    from models.graph import NeuronParams

    model = models.build("spiking-deeplab-tiny", 2, 6, (24, 40), NeuronParams())
    export(model, tmp_path / "tiny.net", time_steps=T, encoding="poisson")
    return tmp_path / "tiny.net"


def test_killing_a_shard_worker_ends_every_shard_and_its_lava_processes(sharded_net, data_cfg, monkeypatch):
    from deploy.runner import evaluate

    monkeypatch.setitem(lava_procs.MODELS, lava_procs.FileSource, StallingSource)
    seen: dict[int, list[int]] = {}

    def kill_a_shard():
        def shards_running_lava():
            shards = {tuple(p._args[3]): p.pid for p in multiprocessing.active_children()
                      if p.name.startswith("ForkProcess")}
            # both shards have started Lava's workers (each a group of the shard and its children)
            if len(shards) == 2 and all(len(_group(pid)) > 3 for pid in shards.values()):
                return shards
        shards = _wait_for(shards_running_lava, "both shards to start Lava")
        seen.update({pid: _group(pid) for pid in shards.values()})
        time.sleep(1.0)  # well inside the stalled run
        os.kill(shards[(0, 2)], signal.SIGKILL)

    killer = threading.Thread(target=kill_a_shard, daemon=True)
    killer.start()
    with pytest.raises(ToolchainError) as e:
        evaluate(sharded_net, data_cfg, backend="lava", workers=2, progress=False)
    killer.join()
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(f"{sharded_net}: the Lava worker running test frames 0, 2 was killed by SIGKILL"), \
        message
    for pgid, members in seen.items():
        assert not _group(pgid), f"processes of shard {pgid} left running (were {members})"


def test_a_shard_whose_lava_process_raises_names_the_dataset_frame(sharded_net, data_cfg, monkeypatch):
    """The shard holding test frames 0 and 2 fails in its second frame: the error names frame 2."""
    from deploy.runner import evaluate

    class RaisingSink(lava_procs.PyFileSinkModel):
        def run_spk(self):
            if self.time_step == self.proc_params["frame_steps"] + 2:  # only the shard of two frames gets there
                raise ValueError("injected fault")
            return super().run_spk()

    monkeypatch.setitem(lava_procs.MODELS, lava_procs.FileSink, RaisingSink)
    with pytest.raises(ToolchainError) as e:
        evaluate(sharded_net, data_cfg, backend="lava", workers=2, progress=False)
    message = str(e.value)
    assert len(message.splitlines()) == 1
    assert f"{sharded_net}: test frame 2: the spike sink of layer " in message, message
    assert message.endswith("(FileSink) raised ValueError: injected fault"), message
