"""Triton kernels and their launchers, installed as ``fastflow.kernels``.

Imported only when the ``triton`` backend runs a call: importing fastflow never imports Triton.
"""
