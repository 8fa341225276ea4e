"""Spiking DeepLab (Kim et al. 2022, "dl-vgg9").

A VGG9 encoder with average pooling, dilated 3x3 convolutions (dilation 2,
then 12 in the 1024-wide layer) and a 1x1 classifier whose synaptic input,
accumulated over T and divided by T, is the class score (the paper's
non-spiking membrane readout). Bilinear upsampling of the scores to the input
size runs on the host after the network (`models.predict`).
"""
from __future__ import annotations

from .blocks import GraphBuilder
from .graph import NeuronParams, SpikingGraph

# (channels, dilation) per 3x3 conv; "pool" is a 2x2 average pool.
PAPER = [(64, 1), (64, 1), "pool", (128, 1), (128, 1), "pool", (256, 1), (256, 2), (256, 2), (1024, 12)]
TINY = [(16, 1), "pool", (32, 1), "pool", (32, 2), (64, 6)]


def spiking_deeplab(in_channels: int, num_classes: int, input_hw: tuple[int, int], neuron: NeuronParams, *,
                    layers=PAPER, width: float = 1.0, **kw) -> SpikingGraph:
    g = GraphBuilder(in_channels, input_hw, neuron, **kw)
    n_pool = 0
    for i, spec in enumerate(layers):
        if spec == "pool":
            n_pool += 1
            g.pool(f"pool{n_pool}")
        else:
            channels, dilation = spec
            g.conv(f"conv{i + 1 - n_pool}", max(1, round(channels * width)), 3, dilation)
    g.conv("classifier", num_classes, 1, spiking=False)
    return g.build()
