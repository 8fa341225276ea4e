"""The lowest layer: errors, atomic files, configs, metrics and their printing,
Loihi fixed point, checkpoints and the allocator. It imports nothing else of
the project."""
