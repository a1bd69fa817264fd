"""fpgacnn: an int8 CNN accelerator generated from Python.

Sub-packages: :mod:`fpgacnn.hw` (gateware), :mod:`fpgacnn.sw` (host side),
:mod:`fpgacnn.sim` (simulation harnesses).
"""
__version__ = "0.1.0"
