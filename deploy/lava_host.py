"""Run a `.net` in Lava fast: `deploy.lava.Network` behind host file I/O adapters.

The network itself is `deploy.lava.Network`, a hierarchical process of Lava's
stock processes (one `LIFReset` per layer, `Conv`/`Dense`/`Sparse`
connections, frames streamed through staggered resets). This module only
feeds it: input spikes come from a file-backed source, hidden spikes go to
file-backed sinks, and the readout's voltage is read at each frame's last
step (`lava_procs`: Lava's own RingBuffer I/O is far too slow to read back).
"""
from __future__ import annotations

import numpy as np

from toolchain.core.errors import ToolchainError

from .lava_compat import from_lava, import_lava_runtime, to_lava
from .netfile import NetFile
from .synapses import lava_shape


class LavaRunError(ToolchainError):
    """Lava failed while running frames: `frame` (index into the frames of
    the call) had been reached, `what` says which process failed and how."""

    def __init__(self, frame: int, what: str):
        self.frame, self.what = frame, what
        super().__init__(f"Lava failed at frame {frame} of this call: {what}")


def _one_line(e: BaseException, limit: int) -> str:
    """An exception as `Type: message` on one line (Lava's messages span several)."""
    return f"{type(e).__name__}: {' '.join(str(e).split())[:limit]}"


# Messages each Lava channel can hold. Lava's default, 64, reserves 64 copies of
# every layer's output in shared memory and fills one more each step of a run
# (12 GB for two 17-step frames of the paper-size DeepLab); under the Loihi
# protocol every step ends in a barrier, so a channel never holds more than one.
CHANNEL_SLOTS = 2

# How long Lava may take, once a worker has raised, to stop and join the others
# by itself; past it the run is taken to hang on the lost worker.
WORKER_GRACE_S = 4.0


class LavaNetwork:
    """The fast host runner: `deploy.lava.Network` between memory-mapped file I/O adapters.

    The network is built once and runs any number of frames in one Lava
    runtime, streamed back to back, T+D steps each (D the pipeline depth):
    every layer restarts when a frame reaches it (`deploy.lava`), so frame k
    gives what a freshly built network gives for frame k alone. Inputs and
    outputs travel through memory-mapped files in a private temporary folder
    (`lava_procs.FileSource`, `FileSink`, `FileReadout`). A net whose skips are
    not delay-aligned (`Network.aligned` False) is exact one frame at a time
    only, so each of its frames runs in a network built for it alone.
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
        from .lava import Network, run_config
        self.net = net
        self.time_steps = int(time_steps or net.time_steps)
        self.steps = net.frame_steps(self.time_steps)
        self.kept = net.spike_steps(self.time_steps)  # steps whose spikes the sinks record
        self.network = Network(net, time_steps=self.time_steps)
        self.stock_conv = stock_conv
        self.capacity = int(capacity) if self.network.aligned else 1
        self.keep_spikes = keep_spikes
        self._tmp = tempfile.TemporaryDirectory(prefix="lava-net-")
        self._frames_done = 0
        self._steps_done = 0  # Lava steps run so far in this runtime
        self._runtime_started = False
        self._exit_codes: dict[int, int] = {}
        common = dict(frame_steps=self.steps, capacity=self.capacity)
        in_shape = lava_shape(net.input_shape)
        self._in_path = self._file("input.u8", np.uint8, (self.capacity,) + in_shape + (self.time_steps,))
        self._progress_path = self._file("progress.i64", np.int64, (1,))
        source = lava_procs.FileSource(shape=in_shape, time_steps=self.time_steps, path=self._in_path,
                                       progress_path=self._progress_path, **common)
        source.s_out.connect(self.network.inp)
        adapters = [source]
        # what each Lava process is, for a failure's message
        self._roles = {id(lif): f"layer '{name}' (LIFReset)" for name, lif in self.network.layers.items()}
        self._roles.update({id(c.process): f"the {type(c.process).__name__} synapse into layer "
                                           f"'{net.layers[c.target - 1].name}'" for c in self.network.connections})
        self._roles[id(source)] = "the input source (FileSource)"
        self._sinks = {}  # name -> (spike file or None, count file, Lava shape)
        for i, layer in enumerate(net.layers[:-1], start=1):
            shape = lava_shape(layer.shape)
            spike_file = self._file(f"spikes{i}.b", np.bool_, (self.capacity,) + shape + (self.kept,)) \
                if keep_spikes else None
            count_file = self._file(f"counts{i}.i64", np.int64, (self.capacity,))
            sink = lava_procs.FileSink(shape=shape, time_steps=self.kept, path=spike_file, count_path=count_file,
                                       offset=self.network.offsets[layer.name], **common)
            self.network.layers[layer.name].s_out.connect(sink.a_in)
            adapters.append(sink)
            self._roles[id(sink)] = f"the spike sink of layer '{layer.name}' (FileSink)"
            self._sinks[layer.name] = (spike_file, count_file, shape)
        out_shape = lava_shape(net.layers[-1].shape)
        self._v_path = self._file("readout.i32", np.int32, (self.capacity,) + out_shape)
        readout = lava_procs.FileReadout(shape=out_shape, path=self._v_path,
                                         offset=self.network.offsets[net.layers[-1].name], **common)
        readout.v.connect_var(self.network.readout.v)
        adapters.append(readout)
        self._roles[id(readout)] = "the readout reader (FileReadout)"
        self._run_cfg = run_config(self.network, fast_conv=not stock_conv,
                                   exception_proc_model_map={p: lava_procs.MODELS[type(p)] for p in adapters})

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
        if not self.network.aligned and self._frames_done + len(frames) > 1:
            return self._run_one_by_one(frames)
        spikes: dict[str, list[np.ndarray]] = {k: [] for k in self._sinks} if self.keep_spikes else {}
        counts: dict[str, list[np.ndarray]] = {k: [] for k in self._sinks}
        voltage = []
        for start in range(0, len(frames), self.capacity):
            chunk = frames[start:start + self.capacity]
            slots = [(self._frames_done + j) % self.capacity for j in range(len(chunk))]
            data = open_memmap(self._in_path, np.uint8, (self.capacity,) + lava_shape(self.net.input_shape)
                               + (self.time_steps,))
            for slot, frame in zip(slots, chunk, strict=True):
                data[slot] = to_lava(frame.astype(np.uint8))
            data.flush()
            del data
            self._run_steps(len(chunk) * self.steps, first=start, last=start + len(chunk) - 1)
            self._frames_done += len(chunk)
            for name, (spike_file, count_file, shape) in self._sinks.items():
                c = open_memmap(count_file, np.int64, (self.capacity,), mode="r")
                counts[name].append(np.array(c[slots]))
                if spike_file is not None:  # kept when keep_spikes
                    s = open_memmap(spike_file, np.bool_, (self.capacity,) + shape + (self.kept,), mode="r")
                    spikes[name].append(np.stack([from_lava(np.array(s[k])) for k in slots]))
            v = open_memmap(self._v_path, np.int32, (self.capacity,) + lava_shape(self.net.layers[-1].shape),
                            mode="r")
            voltage.append(np.stack([from_lava(np.array(v[k])) for k in slots]).astype(np.int64))
        return ({k: np.concatenate(v) for k, v in spikes.items()},
                {k: np.concatenate(v) for k, v in counts.items()}, np.concatenate(voltage))

    def _run_one_by_one(self, frames: np.ndarray):
        """Frames of a net whose skips are not delay-aligned: each in a network of its own."""
        parts = []
        for k in range(len(frames)):
            if self._frames_done == 0 and k == 0:
                parts.append(self.run(frames[:1]))
                continue
            with LavaNetwork(self.net, self.time_steps, capacity=1, keep_spikes=self.keep_spikes,
                             stock_conv=self.stock_conv) as fresh:
                try:
                    parts.append(fresh.run(frames[k:k + 1]))
                except LavaRunError as e:
                    raise LavaRunError(k, e.what) from e
        return ({k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]},
                {k: np.concatenate([p[1][k] for p in parts]) for k in parts[0][1]},
                np.concatenate([p[2] for p in parts]))

    def _run_steps(self, steps: int, *, first: int, last: int) -> None:
        from lava.magma.core.run_conditions import RunSteps

        if not self._runtime_started:
            import multiprocessing

            import_lava_runtime()
            self._children_before = set(multiprocessing.active_children())
        import threading

        # Lava's runtime waits forever when one of its worker processes dies or
        # raises (it joins every worker, and the others wait on their channels),
        # so the run goes on a thread and this one watches the workers.
        failure: list[str] = []

        def run() -> None:
            try:
                self.network.run(condition=RunSteps(num_steps=steps), run_cfg=self._run_cfg,
                                 compile_config={"pypy_channel_size": CHANNEL_SLOTS})
            except BaseException as e:  # handed to the caller's thread below
                failure.append(_one_line(e, 500))

        self._runtime_started = True
        runner = threading.Thread(target=run, daemon=True, name="lava-run")
        runner.start()
        while runner.is_alive():
            runner.join(timeout=0.2)
            ended = self._ended_workers() if runner.is_alive() else []
            if ended:
                if all(code == 0 for code in ended):
                    # A worker that raised exits with 0, and Lava may be
                    # stopping the others and reading their exceptions: let it,
                    # rather than race it for them.
                    runner.join(timeout=WORKER_GRACE_S)
                if runner.is_alive():
                    failure.append(self._broken_worker() or "a Lava worker ended mid-run")
                break
        if failure:
            from .lava_procs import open_memmap

            step = int(open_memmap(self._progress_path, np.int64, (1,), mode="r")[0])
            frame = first + min(max(0, (step - 1 - self._steps_done) // self.steps), last - first)
            # Lava's own error only counts the exceptions: the worker's names the process
            what = self._broken_worker() or failure[0]
            self.close(failed=True)
            raise LavaRunError(frame, what)
        self._steps_done += steps

    def _actors(self) -> list[tuple]:
        """(Lava process, its worker) for each worker Lava has started; the
        process is None for a runtime service. Lava starts one worker per
        process, in its compiler's order of process builders, then its services."""
        from lava.magma.compiler.builders.py_builder import PyProcessBuilder

        runtime = self.network.runtime
        infrastructure = getattr(runtime, "_messaging_infrastructure", None)
        if infrastructure is None:
            return []
        procs = [p for p, b in runtime._executable.proc_builders.items() if isinstance(b, PyProcessBuilder)]
        return [(procs[k] if k < len(procs) else None, actor) for k, actor in enumerate(list(infrastructure.actors))]

    def _exit_code(self, actor) -> int | None:
        """A worker's exit code, None while it runs; kept, since Lava's runtime
        closes the workers it joins and a closed process forgets its code."""
        try:
            code = actor.exitcode
        except ValueError:  # joined and closed by Lava: it ended, its exception kept
            return self._exit_codes.get(id(actor), 0)
        if code is not None:
            self._exit_codes[id(actor)] = code
        return code

    def _ended_workers(self) -> list[int]:
        """The exit codes of the workers that have ended."""
        return [code for _, actor in self._actors() if (code := self._exit_code(actor)) is not None]

    def _broken_worker(self) -> str | None:
        """Which of Lava's worker processes ended mid-run, and how, or None.
        A worker that raises hands Lava the exception through a pipe and exits
        with code 0; after Lava has joined its workers, the healthy ones have
        ended too, so one that raised is named first, then one that died."""
        import signal

        def who(proc) -> str:
            return "Lava's runtime service" if proc is None else self._roles.get(id(proc), f"Lava process {proc.name}")

        ended = []
        for proc, actor in self._actors():
            code = self._exit_code(actor)
            if code is None:
                continue
            error = actor.exception
            if error:
                return f"{who(proc)} raised {_one_line(error[0], 300)}"
            ended.append((code, proc))
        if not ended:
            return None
        code, proc = min(ended, key=lambda e: e[0] == 0)  # a death by a signal or an error code first
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        return f"the worker process of {who(proc)} {how}"

    def _workers(self) -> list:
        """The processes Lava started for this network."""
        import multiprocessing

        return [c for c in multiprocessing.active_children() if c not in self._children_before]

    def close(self, *, failed: bool = False) -> None:
        """Stop the runtime and end every Lava worker process, even after a failure."""
        if self._runtime_started:
            self._runtime_started = False
            if not failed:  # after a failure stop() waits on the dead worker forever
                self.network.stop()
            # Lava's process models run in forked children; after a failure inside
            # one, stop() can leave its siblings waiting on channels forever.
            # (Lava's SystemProcess.join takes no timeout: the base class's does.)
            import multiprocessing

            infrastructure = getattr(self.network.runtime, "_messaging_infrastructure", None)
            smm = getattr(infrastructure, "smm", None)
            if failed and smm is not None:
                try:  # its server frees the channels' shared memory as it stops
                    smm.shutdown()
                except Exception:  # already gone: the kill below is all that is left to do
                    pass
            for child in self._workers():
                try:
                    child.terminate()
                    multiprocessing.Process.join(child, 5)
                    if child.is_alive():
                        child.kill()
                        multiprocessing.Process.join(child, 5)
                except ValueError:  # Lava's runtime thread joined and closed it meanwhile
                    pass
        self._tmp.cleanup()

    def __enter__(self) -> LavaNetwork:
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
