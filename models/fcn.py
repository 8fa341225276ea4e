"""Spiking FCN (Kim et al. 2022, "fcn-vgg9").

VGG9 encoder (64, 64 | 128, 128 | 256, 256, 256, each block followed by a
2x2 average pool), two 3x3 1024-wide layers, a 1x1 score layer, then three
stride-2 transposed-convolution stages; each adds a 1x1 score of the encoder
block at its resolution (the additive skips of FCN). In the paper the score
path is analogue; here every stage but the last is a spiking group of
`num_classes` neurons, so the whole net is spiking and
exportable, and the last stage is the non-spiking readout. The paper's
bilinear resize after each transposed conv is replaced by choosing the
transposed kernel (4 or 3) so that sizes match exactly.
"""
from __future__ import annotations

from .blocks import GraphBuilder
from .graph import NeuronParams, SpikingGraph

PAPER = dict(blocks=[[64, 64], [128, 128], [256, 256, 256]], head=[1024, 1024])
TINY = dict(blocks=[[16], [32], [32]], head=[64])


def spiking_fcn(in_channels: int, num_classes: int, input_hw: tuple[int, int], neuron: NeuronParams, *,
                blocks=PAPER["blocks"], head=PAPER["head"], width: float = 1.0,
                **kw) -> SpikingGraph:
    g = GraphBuilder(in_channels, input_hw, neuron, **kw)
    scale = lambda c: max(1, round(c * width))  # noqa: E731
    skips = []
    n = 0
    for b, block in enumerate(blocks):
        for c in block:
            n += 1
            g.conv(f"conv{n}", scale(c))
        skips.append(g.last)
        g.pool(f"pool{b + 1}")
    for c in head:
        n += 1
        g.conv(f"conv{n}", scale(c))
    g.conv("score", num_classes, 1)
    up = g.last
    for k, skip in enumerate(reversed(skips[1:])):
        up = g.upsample_add(f"up{k + 1}", up, skip)
    g.upsample_add("readout", up, skips[0], spiking=False)
    return g.build()
