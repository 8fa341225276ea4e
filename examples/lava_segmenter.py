"""A `.net` segmenter inside a Lava application: RingBuffer source -> Network -> readout.

    .venv/bin/python examples/lava_segmenter.py MODEL.net [FRAMES]

Frames stream back to back, T + D steps each; after each frame's last step
the readout's voltage / (4096*T) is the class score per pixel (random input
spikes here: put your own (x, y, channel, step) spikes in `data`).
"""
import sys

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.proc.io.source import RingBuffer

from deploy.lava import Network, run_config

net = Network(sys.argv[1])                      # a hierarchical process of stock Lava processes
frames, t, period = int(sys.argv[2]) if len(sys.argv) > 2 else 3, net.time_steps, net.frame_steps
data = np.zeros(net.inp.shape + (frames * period,), dtype=np.int32)
for k in range(frames):                         # frame k: T steps of input, then D steps of zeros
    data[..., k * period:k * period + t] = np.random.default_rng(k).random(net.inp.shape + (t,)) < 0.3
source = RingBuffer(data=data)
source.s_out.connect(net.inp)
cfg = run_config(net)                           # Loihi2SimCfg(select_tag="fixed_pt") works too, slower
for k in range(frames):
    net.run(condition=RunSteps(num_steps=period), run_cfg=cfg)
    scores = net.v.get() / (4096 * t)           # (x, y, class): the frame's readout
    print(f"frame {k}: class per pixel (y, x)\n{scores.argmax(-1).T}")
net.stop()
