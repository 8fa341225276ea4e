"""Host I/O adapters around `deploy.lava.Network`, and a fast model for Lava's `Conv`.

Lava's own I/O processes move data through the runtime one number at a time
(`Var.get` of a sink's buffer costs one channel message per element: seconds
per frame of the tiny preset, hours at paper size). These adapters move it
through memory-mapped files instead, shared with Lava's worker processes: the
host writes the inputs before a run and reads the outputs after it. They are
host I/O only; the network between them is `deploy.lava.Network`, stock
processes throughout.

- `FileSource`: sends frame f's input spikes from a memory-mapped file, zeros
  in the steps past the frame's T.
- `FileSink`: writes the spikes a layer sends to a memory-mapped file, and
  their count per frame, each frame's steps counted from the step the frame
  reaches that layer (its reset offset, `deploy.lava.Network.offsets`).
- `FileReadout`: reads the readout's voltage through a `RefPort` at each
  frame's last step and writes it to a memory-mapped file.

`PyDelaySparseModelCached` is Lava's `DelaySparse` model with its
delay-stacked matrix built once rather than every step.

`PyConvModelBlas` is a process model for Lava's own `Conv` process: the same
arithmetic as `PyConvModelFixed`, computed as one matrix product per kernel
tap instead of one `scipy.signal.convolve2d` per channel pair over the
dilated kernel (the paper-size DeepLab's dilation-12 layer alone costs Lava's
model 1,500 to 2,400 CPU seconds per step). tests/test_lava_conv.py checks it against Lava's
`utils.conv` integer for integer.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv
from lava.proc.conv.utils import signed_clamp
from lava.proc.sparse.models import PyDelaySparseModelBitAcc


def open_memmap(path: str, dtype, shape: tuple, mode: Literal["r", "r+", "w+"] = "r+") -> np.memmap:
    return np.memmap(path, dtype=dtype, mode=mode, shape=tuple(int(s) for s in shape))


# ------------------------------------------------------------ processes
class FileSource(AbstractProcess):
    """Input spikes (capacity, *shape, T) uint8 from `path`; frame f at steps f*P .. f*P+T-1.
    Each step's number goes to `progress_path` (one int64), so that the host
    can name the frame a failed run had reached."""

    def __init__(self, *, shape: tuple, time_steps: int, frame_steps: int, capacity: int, path: str,
                 progress_path: str):
        super().__init__(shape=shape, time_steps=time_steps, frame_steps=frame_steps, capacity=capacity,
                         path=path, progress_path=progress_path)
        self.s_out = OutPort(shape=shape)


class FileSink(AbstractProcess):
    """Writes received spikes to `path` as (capacity, *shape, kept) bool (when given) and
    their count per frame to `count_path` as (capacity,) int64. Frame f reaches the
    layer at step f*P + offset; its steps offset .. kept-1 are recorded, earlier ones are 0."""

    def __init__(self, *, shape: tuple, time_steps: int, frame_steps: int, capacity: int,
                 path: str | None, count_path: str, offset: int = 0):
        super().__init__(shape=shape, time_steps=time_steps, frame_steps=frame_steps, capacity=capacity,
                         path=path, count_path=count_path, offset=offset)
        self.a_in = InPort(shape=shape)


class FileReadout(AbstractProcess):
    """Writes the voltage of the LIF it is connected to (`connect_var`) at every frame's
    last step to `path` as (capacity, *shape) int32; all zeros when no input reaches it
    inside a frame (`offset` >= frame_steps)."""

    def __init__(self, *, shape: tuple, frame_steps: int, capacity: int, path: str, offset: int = 0):
        super().__init__(shape=shape, frame_steps=frame_steps, capacity=capacity, path=path, offset=offset)
        self.v = RefPort(shape=shape)


# ------------------------------------------------------------ models
def _frame_step(model, offset: int = 0) -> tuple[int, int]:
    """(frame index, step inside the frame) of the step now running, for a
    process that frame f reaches at step f*P + offset; the index is < 0 before frame 0."""
    p = model.proc_params
    t = model.time_step - 1 - offset
    return t // p["frame_steps"], t % p["frame_steps"] + offset


@implements(proc=FileSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSourceModel(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = proc_params
        self._data = open_memmap(p["path"], np.uint8, (p["capacity"],) + tuple(p["shape"]) + (p["time_steps"],),
                                 mode="r")
        self._zeros = np.zeros(p["shape"], dtype=np.int32)
        self._progress = open_memmap(p["progress_path"], np.int64, (1,))

    def run_spk(self):
        self._progress[0] = self.time_step
        frame, step = _frame_step(self)
        if step < self.proc_params["time_steps"]:
            self.s_out.send(self._data[frame % self.proc_params["capacity"], ..., step].astype(np.int32))
        else:
            self.s_out.send(self._zeros)


@implements(proc=FileSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileSinkModel(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = proc_params
        self._spikes = None if p["path"] is None else open_memmap(
            p["path"], np.bool_, (p["capacity"],) + tuple(p["shape"]) + (p["time_steps"],))
        self._counts = open_memmap(p["count_path"], np.int64, (p["capacity"],))

    def run_spk(self):
        s = self.a_in.recv()
        p = self.proc_params
        frame, step = _frame_step(self, p["offset"])
        if frame < 0:
            return  # before frame 0 reaches the layer: nothing
        slot = frame % p["capacity"]
        if step == p["offset"]:  # the frame's first step here: steps before it are 0
            self._counts[slot] = 0
            if self._spikes is not None:
                self._spikes[slot] = False
        if step >= p["time_steps"]:
            return  # past the frame's spike steps: they reach nothing inside the frame
        self._counts[slot] += int(np.count_nonzero(s))
        if self._spikes is not None:
            self._spikes[slot, ..., step] = s != 0


@implements(proc=FileReadout, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyFileReadoutModel(PyLoihiProcessModel):
    v: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = proc_params
        self._v = open_memmap(p["path"], np.int32, (p["capacity"],) + tuple(p["shape"]))

    def post_guard(self) -> bool:
        return self.time_step % self.proc_params["frame_steps"] == 0  # a frame's last step

    def run_post_mgmt(self) -> None:
        p = self.proc_params
        slot = (self.time_step // p["frame_steps"] - 1) % p["capacity"]
        v = self.v.read()
        self._v[slot] = v if p["offset"] < p["frame_steps"] else 0


class BlasConv:
    """Lava's fixed-point convolution (`lava.proc.conv.utils.conv` followed by
    the 24-bit signed wrap of `PyConvModelFixed`) as one matrix product per
    kernel tap.

    Operands are whole numbers held in floats: float32 while the largest
    possible sum, max |input| * max over outputs of sum |weight|, stays below
    2^24 (every partial sum is then exact), float64 beyond (Lava's own model
    sums in float64 too). The result is cast to int32 as Lava casts it.
    """

    def __init__(self, weight: np.ndarray, stride, padding, dilation, groups: int):
        # Lava's weight is (out, kx, ky, in) and its conv flips the kernel
        self.taps = np.ascontiguousarray(np.asarray(weight)[:, ::-1, ::-1, :].transpose(1, 2, 3, 0))
        self.stride, self.padding, self.dilation = (tuple(int(v) for v in a) for a in (stride, padding, dilation))
        self.groups = int(groups)
        self.w_bound = float(np.abs(np.asarray(weight, dtype=np.float64)).reshape(len(weight), -1).sum(1).max())
        self._taps: dict[type, np.ndarray] = {}  # dtype -> taps in it

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kx, ky, cin_g, cout = self.taps.shape
        (sx, sy), (px, py), (dx, dy), g = self.stride, self.padding, self.dilation, self.groups
        bound = self.w_bound * float(np.abs(x).max(initial=0))
        dtype = np.float32 if bound < (1 << 24) else np.float64
        taps = self._taps.get(dtype)
        if taps is None:
            taps = self._taps[dtype] = self.taps.astype(dtype)
        xp = np.pad(x.astype(dtype), ((px, px), (py, py), (0, 0)))
        xo = (xp.shape[0] - dx * (kx - 1) - 1) // sx + 1
        yo = (xp.shape[1] - dy * (ky - 1) - 1) // sy + 1
        out: np.ndarray = np.zeros((xo * yo, cout), dtype=dtype)
        cout_g = cout // g
        for i in range(kx):
            for j in range(ky):
                window = xp[i * dx:i * dx + sx * (xo - 1) + 1:sx, j * dy:j * dy + sy * (yo - 1) + 1:sy]
                for k in range(g):
                    cols = window[:, :, k * cin_g:(k + 1) * cin_g].reshape(xo * yo, cin_g)
                    out[:, k * cout_g:(k + 1) * cout_g] += cols @ taps[i, j, :, k * cout_g:(k + 1) * cout_g]
        return signed_clamp(out.reshape(xo, yo, cout).astype(np.int32), bits=24)


class PyConvModelBlas(PyConvModelFixed):  # Lava's Conv binding and ports; chosen per instance
    def run_spk(self) -> None:
        # what the previous step accumulated, as Lava's model does (which declares a_buf)
        self.a_out.send(self.a_buf)  # type: ignore[has-type]
        s_in = self.s_in.recv()
        if self.num_message_bits.item() == 0:
            s_in = s_in.astype(bool)
        if not hasattr(self, "_conv"):  # the Vars hold their values only once the model runs
            self._conv = BlasConv(self.weight, self.stride, self.padding, self.dilation, self.groups[0])
        self.a_buf = self._conv(s_in)


class PyDelaySparseModelCached(PyDelaySparseModelBitAcc):  # Lava's binding and ports; chosen per instance
    """Lava's bit-accurate `DelaySparse` model, its matrix stacked by delay once
    instead of every step (`get_delay_wgts_mat`: one sparse product per delay
    value over the whole matrix). Same integers."""

    def calc_act(self, s_in) -> np.ndarray:
        stacked = getattr(self, "_stacked", None)
        if stacked is None:  # after run_spk has clipped the weights, as Lava's model uses them
            stacked = self._stacked = self.get_delay_wgts_mat(self.weights, self.delays, self.a_buff.shape[-1] - 1)
        return np.reshape(stacked.dot(s_in), (self.a_buff.shape[-1], self.weights.shape[0])).T


MODELS = {FileSource: PyFileSourceModel, FileSink: PyFileSinkModel, FileReadout: PyFileReadoutModel,
          Conv: PyConvModelBlas}
