"""SPOT: semi-supervised, proposal-free temporal action detection (ECCV 2022), production stack."""

__version__ = "0.1.0"
