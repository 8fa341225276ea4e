"""`toolchain bench`: Lava against the emulator on the same `.net` and frames,
training throughput, and the time to evaluate a whole test split.

Everything is measured in one run, so the ratios compare like with like on a
machine shared with other jobs. Each measurement runs in its own child
process (`python -m toolchain.bench.measure SPEC.json`) so that its peak memory is its
own: the child samples the proportional set size (PSS: resident memory,
shared pages split between their sharers) of itself and all its descendants
(Lava runs every process of a graph in a worker process of its own).

Steps are frame-steps: one frame of T time steps is T+D Lava steps (D the
net's pipeline depth), for both backends.

Every backend runs the same frames: frame 0 first, untimed (it compiles Lava's
graph and the emulator's kernel), then frames 1.. timed. Each run keeps every
layer's spike trains, and the bench stops unless every row gives the reference
row's readout and the same spike train in every layer on every frame both ran,
and unless those frames have content (every layer spiking, the readout neither
zero nor constant): a speed is only reported for a computation shown equal.

Modules: `suite` (the cases, run in child processes), `measure` (the child
side), `memory` (PSS sampling), `compare` (backends agree, with content),
`table` (printing), `training` (the training-step throughput).
"""
