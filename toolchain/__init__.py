"""Neuromorphic toolchain for event-camera semantic segmentation."""

__version__ = "0.2.0"
