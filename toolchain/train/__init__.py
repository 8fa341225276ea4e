"""Training and evaluation of the spiking segmenters (`toolchain train`, `toolchain eval`)."""
from .loop import augment, evaluate, loss_fn, train

__all__ = ["train", "evaluate", "augment", "loss_fn"]
