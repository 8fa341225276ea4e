"""Spiking DeepLab (Kim et al. 2022, "dl-vgg9"), and a variant with a decoder.

A VGG9 encoder with average pooling, dilated 3x3 convolutions (dilation 2,
then 12 in the 1024-wide layer) and a 1x1 classifier (`readout_kernel`) whose synaptic input,
accumulated over T and divided by T, is the class score (the paper's
non-spiking membrane readout). Bilinear upsampling of the scores to the input
size runs on the host after the network (`models.predict`).

The paper's readout sits at a quarter (tiny) or an eighth of the input, where
a pole or a person is one cell or less. `decoder` adds DeepLabv3+-style
stages after the encoder: each doubles the resolution with a transposed
convolution and adds a 1x1 projection of an earlier, finer layer (the
low-level skip, delayed to arrive with the upsampled path), so the classifier
reads out at the resolution of the last skip.
"""
from __future__ import annotations

from .blocks import GraphBuilder
from .graph import NeuronParams, SpikingGraph

# (channels, dilation) per 3x3 conv; "pool" is a 2x2 average pool.
PAPER = [(64, 1), (64, 1), "pool", (128, 1), (128, 1), "pool", (256, 1), (256, 2), (256, 2), (1024, 12)]
TINY = [(16, 1), "pool", (32, 1), "pool", (32, 2), (64, 6)]
# (skip layer, channels) per x2 decoder stage: back to the input resolution
TINY_DECODER = [("conv2", 32), ("conv1", 16)]


def spiking_deeplab(in_channels: int, num_classes: int, input_hw: tuple[int, int], neuron: NeuronParams, *,
                    layers=PAPER, decoder=(), width: float = 1.0, readout_kernel: int = 1, **kw) -> SpikingGraph:
    g = GraphBuilder(in_channels, input_hw, neuron, **kw)
    scale = lambda c: max(1, round(c * width))  # noqa: E731
    n_pool = 0
    for i, spec in enumerate(layers):
        if spec == "pool":
            n_pool += 1
            g.pool(f"pool{n_pool}")
        else:
            channels, dilation = spec
            g.conv(f"conv{i + 1 - n_pool}", scale(channels), 3, dilation)
    for k, (skip, channels) in enumerate(decoder):
        g.upsample_add(f"decoder{k + 1}", g.last, skip, channels=scale(channels))
    g.conv("classifier", num_classes, readout_kernel, spiking=False)
    return g.build()
