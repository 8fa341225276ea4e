"""Build and run a `.net` as a Lava process graph (the reference execution).

Every layer is a `lava.proc.lif.process.LIF` (as `lava_procs.FrameLIF`, which
restarts it at each frame) fed by one connection process per
synapse, the same processes netx builds for the layers it knows:
- conv -> `lava.proc.conv.process.Conv` (weights laid out as netx lays them),
  run by `lava_procs.PyConvModelBlas`;
- dense -> `lava.proc.dense.process.Dense`;
- pool, convT -> `lava.proc.sparse.process.Sparse`: a fixed linear map from the
  flattened source to the flattened layer, exact and shape-agnostic.
Several connections into one LIF are summed at its `a_in` (additive skips).
Input spikes come from a file-backed source, hidden spikes go to file-backed
sinks, and the readout integrator's voltage is written after each frame's T+D
steps (`lava_procs`: Lava's own RingBuffer I/O is far too slow to read back).
"""
from __future__ import annotations

import numpy as np

from toolchain.errors import ToolchainError

from .netfile import NetFile
from .synapses import Synapse, lava_shape


# ------------------------------------------------------------ data order
def to_lava(x: np.ndarray) -> np.ndarray:
    """slayer (C, H, W[, T]) -> Lava (x, y, channel[, T]) = (W, H, C[, T]).

    The one place the two orders meet; `from_lava` is its inverse.
    """
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def from_lava(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose((2, 1, 0) + tuple(range(3, x.ndim))))


def _connection(syn: Synapse, src: tuple, out: tuple):
    """(Lava process, does it read and write flat vectors?)"""
    return syn.kind.lava(syn, src, out)


def import_lava_runtime() -> None:
    """Import Lava's runtime safely: its module calls `set_start_method('fork')`
    on import and fails if anything in this process chose a start method first."""
    import multiprocessing as mp
    import sys

    name = "lava.magma.runtime.message_infrastructure.multiprocessing"
    if name not in sys.modules and mp.get_start_method(allow_none=True) is not None:
        mp.set_start_method(None, force=True)
    __import__(name)


# Messages each Lava channel can hold. Lava's default, 64, reserves 64 copies of
# every layer's output in shared memory and fills one more each step of a run
# (12 GB for two 17-step frames of the paper-size DeepLab); under the Loihi
# protocol every step ends in a barrier, so a channel never holds more than one.
CHANNEL_SLOTS = 2


class LavaNetwork:
    """A `.net` built once as a Lava process graph that runs any number of frames.

    Frames run back to back, T+D steps each (D the pipeline depth), in one Lava runtime; every LIF
    restarts at a frame's first step (`lava_procs.FrameLIF`), so frame k gives
    what a freshly built network gives for frame k alone. Inputs and outputs
    travel through memory-mapped files in a private temporary folder.
    Convolutions run `lava_procs.PyConvModelBlas`, or with `stock_conv` Lava's
    own `PyConvModelFixed` (same integers; 20 minutes or more per step at paper size).

        with LavaNetwork(net, time_steps=T) as lava:
            spikes, counts, voltage = lava.run(frames)   # frames (N, C, H, W, T)
    """

    def __init__(self, net: NetFile, time_steps: int | None = None, *, capacity: int = 8,
                 keep_spikes: bool = True, stock_conv: bool = False):
        import tempfile

        import_lava_runtime()
        from . import lava_procs
        self.net = net
        self.time_steps = int(time_steps or net.time_steps)
        self.steps = net.frame_steps(self.time_steps)
        self.kept = net.spike_steps(self.time_steps)  # steps whose spikes the sinks record
        self.capacity = int(capacity)
        self.keep_spikes = keep_spikes
        self._tmp = tempfile.TemporaryDirectory(prefix="lava-net-")
        self._frames_done = 0
        self._runtime_started = False
        common = dict(frame_steps=self.steps, capacity=self.capacity)
        in_shape = lava_shape(net.input_shape)
        self._in_path = self._file("input.u8", np.uint8, (self.capacity,) + in_shape + (self.time_steps,))
        source = lava_procs.FileSource(shape=in_shape, time_steps=self.time_steps, path=self._in_path, **common)
        procs = [source]
        outs = {0: source.s_out}
        self._sinks = {}  # name -> (spike file or None, count file, Lava shape)
        lifs = []
        for i, layer in enumerate(net.layers, start=1):
            last = i == len(net.layers)
            shape = lava_shape(layer.shape)
            n = layer.neuron
            v_file = self._file("readout.i32", np.int32, (self.capacity,) + shape) if last else None
            lif = lava_procs.FrameLIF(shape=shape, du=n.iDecay - 1, dv=n.vDecay, vth=n.vThMant, bias_mant=0,
                                      bias_exp=0, name=layer.name, v_file=v_file, **common)
            lifs.append(lif)
            for src, syn in zip(layer.sources, layer.synapses):
                proc, flat = _connection(syn, net.shape_of(src), layer.shape)
                if syn.type == "conv" and not stock_conv:
                    procs.append(proc)
                (outs[src].flatten() if flat else outs[src]).connect(proc.s_in)
                (proc.a_out.reshape(shape) if flat else proc.a_out).connect(lif.a_in)
            outs[i] = lif.s_out
            if not last:
                spike_file = self._file(f"spikes{i}.b", np.bool_, (self.capacity,) + shape + (self.kept,)) \
                    if keep_spikes else None
                count_file = self._file(f"counts{i}.i64", np.int64, (self.capacity,))
                sink = lava_procs.FileSink(shape=shape, time_steps=self.kept, path=spike_file,
                                           count_path=count_file, **common)
                lif.s_out.connect(sink.a_in)
                procs.append(sink)
                self._sinks[layer.name] = (spike_file, count_file, shape)
        procs += lifs
        self._readout = lifs[-1]
        self._v_path = self._readout.proc_params["v_file"]
        # keyed by instance: the compiler then takes the model as given and does
        # not search this package's folder for process models
        self._models = {p: lava_procs.MODELS[type(p)] for p in procs}

    def _file(self, name: str, dtype, shape: tuple) -> str:
        from .lava_procs import open_memmap
        path = f"{self._tmp.name}/{name}"
        open_memmap(path, dtype, shape, mode="w+").flush()
        return path

    def run(self, frames: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
        """Run frames (N, C, H, W, T) of 0/1 spikes.

        Returns hidden spikes {name: (N, C, H, W, T+D-1) bool} (empty unless
        keep_spikes), spike counts {name: (N,)} and the readout's final voltage
        (N, K, H', W') int64, all in slayer order."""
        from .lava_procs import open_memmap

        frames = np.asarray(frames)
        if frames.ndim != 5 or tuple(frames.shape[1:4]) != tuple(self.net.input_shape) \
                or frames.shape[-1] != self.time_steps:
            raise ValueError(f"frames of shape {frames.shape}; this network takes "
                             f"(N, {', '.join(map(str, self.net.input_shape))}, {self.time_steps})")
        spikes = {k: [] for k in self._sinks} if self.keep_spikes else {}
        counts = {k: [] for k in self._sinks}
        voltage = []
        for start in range(0, len(frames), self.capacity):
            chunk = frames[start:start + self.capacity]
            slots = [(self._frames_done + j) % self.capacity for j in range(len(chunk))]
            data = open_memmap(self._in_path, np.uint8, (self.capacity,) + lava_shape(self.net.input_shape)
                               + (self.time_steps,))
            for slot, frame in zip(slots, chunk):
                data[slot] = to_lava(frame.astype(np.uint8))
            data.flush()
            del data
            self._run_steps(len(chunk) * self.steps, first=start, last=start + len(chunk) - 1)
            self._frames_done += len(chunk)
            for name, (spike_file, count_file, shape) in self._sinks.items():
                c = open_memmap(count_file, np.int64, (self.capacity,), mode="r")
                counts[name].append(np.array(c[slots]))
                if self.keep_spikes:
                    s = open_memmap(spike_file, np.bool_, (self.capacity,) + shape + (self.kept,), mode="r")
                    spikes[name].append(np.stack([from_lava(np.array(s[k])) for k in slots]))
            v = open_memmap(self._v_path, np.int32, (self.capacity,) + lava_shape(self.net.layers[-1].shape),
                            mode="r")
            voltage.append(np.stack([from_lava(np.array(v[k])) for k in slots]).astype(np.int64))
        return ({k: np.concatenate(v) for k, v in spikes.items()},
                {k: np.concatenate(v) for k, v in counts.items()}, np.concatenate(voltage))

    def _run_steps(self, steps: int, *, first: int, last: int) -> None:
        from lava.magma.core.run_conditions import RunSteps
        from lava.magma.core.run_configs import Loihi2SimCfg

        if not self._runtime_started:
            import multiprocessing

            import_lava_runtime()
            self._children_before = set(multiprocessing.active_children())
        import threading

        # Lava's runtime waits forever when one of its worker processes dies, so
        # the run goes on a thread and this one watches the workers.
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self._readout.run(condition=RunSteps(num_steps=steps),
                                  run_cfg=Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=self._models),
                                  compile_config={"pypy_channel_size": CHANNEL_SLOTS})
            except BaseException as e:  # handed to the caller's thread below
                failure.append(e)

        self._runtime_started = True
        runner = threading.Thread(target=run, daemon=True, name="lava-run")
        runner.start()
        while runner.is_alive():
            runner.join(timeout=0.2)
            dead = [c for c in self._workers() if c.exitcode not in (None, 0)]
            if dead and runner.is_alive():
                failure.append(RuntimeError(f"Lava worker {dead[0].name} exited with code {dead[0].exitcode}"))
                break
        if failure:
            e = failure[0]
            self.close(failed=True)
            frames = f"frame {first}" if first == last else f"frames {first}..{last}"
            detail = " ".join(str(e).split())[:500]
            raise ToolchainError(f"Lava failed while running {frames} of this call: "
                                 f"{type(e).__name__}: {detail}") from e

    def _workers(self) -> list:
        """The processes Lava started for this network."""
        import multiprocessing

        return [c for c in multiprocessing.active_children() if c not in self._children_before]

    def close(self, *, failed: bool = False) -> None:
        """Stop the runtime and end every Lava worker process, even after a failure."""
        if self._runtime_started:
            self._runtime_started = False
            if not failed:  # after a failure stop() waits on the dead worker forever
                self._readout.stop()
            # Lava's process models run in forked children; after a failure inside
            # one, stop() can leave its siblings waiting on channels forever.
            for child in self._workers():
                child.terminate()
                child.join(timeout=5)
                if child.is_alive():
                    child.kill()
                    child.join(timeout=5)
        self._tmp.cleanup()

    def __enter__(self) -> "LavaNetwork":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_frame(net: NetFile, frame: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run one frame (C, H, W, T) of 0/1 spikes in Lava's fixed-point simulator.

    Returns hidden spikes {name: (C, H, W, T+D-1) bool, Lava steps 0..T+D-2} and the
    readout integrator's final voltage (K, H', W') int64.
    """
    frame = np.asarray(frame)
    with LavaNetwork(net, frame.shape[-1], capacity=1) as lava:
        spikes, _, voltage = lava.run(frame[None])
    return {k: v[0] for k, v in spikes.items()}, voltage[0]
