"""Baseline generators (pix2pixHD, SPADE, pix2pix U-Net); importing this registers them.

Registered names: ``pix2pixhd``, ``pix2pixhd-local``, ``spade``, ``pix2pix`` and the test variants
``pix2pixhd-tiny``, ``pix2pixhd-local-tiny``, ``spade-tiny``, ``pix2pix-tiny``.
"""

from baselines.pix2pix import UnetGenerator
from baselines.pix2pixhd import Pix2PixHDGlobal, Pix2PixHDLocal
from baselines.spade import SPADEGenerator

__all__ = ["Pix2PixHDGlobal", "Pix2PixHDLocal", "SPADEGenerator", "UnetGenerator"]
