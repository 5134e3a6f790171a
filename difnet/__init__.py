"""DifNet: semantic segmentation by diffusion networks (Jiang et al., NeurIPS 2018)."""

__version__ = "0.1.0"
