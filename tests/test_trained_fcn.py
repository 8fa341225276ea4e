"""A spiking-fcn-tiny trained by the demo recipe carries spikes through its whole depth.

`tests/data/spiking-fcn-tiny-trained.net` is `examples/ddd17-tiny.yaml` with
`--model spiking-fcn-tiny` (8 epochs on the generated DDD17-format set,
26.3% test mIoU), exported; the frames beside it are the first four test
frames of that set, encoded as training saw them (64x64, T=10). With frames
of T + D steps (D = 11 here) the deepest path, score -> up1 -> up2 -> readout,
which never carried a spike when the readout heard only T - D steps, is live.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import deploy

DATA = Path(__file__).parent / "data"


def test_every_layer_of_the_trained_fcn_spikes_on_every_test_frame():
    net = deploy.load(DATA / "spiking-fcn-tiny-trained.net")
    packed = np.load(DATA / "spiking-fcn-tiny-trained.frames.npz")
    shape = tuple(packed["shape"])
    frames = np.unpackbits(packed["frames"], count=int(np.prod(shape))).reshape(shape).astype(np.float32)
    assert net.net.pipeline_depth == 11 and frames.shape[-1] == net.time_steps == 10
    result = net.run(frames, keep_spikes=False)
    for layer in net.net.layers[:-1]:
        counts = result.counts[layer.name]
        assert (counts > 0).all(), f"{layer.name} is silent on test frames {np.flatnonzero(counts == 0).tolist()}"
    assert len(np.unique(result.class_map)) >= 3, "the readout paints fewer than three classes"
