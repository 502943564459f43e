"""Triton kernels, installed as ``ssgr.kernels`` (never as a top-level ``kernels`` package).

Importing this package imports nothing heavy; each op's module (one file per op) imports triton
itself and is loaded only by the dispatch layer when the ``triton`` backend can run.
"""
