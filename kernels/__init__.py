"""Numerical kernels of wcscan: theory tables, sampler, likelihood, metrics, dataset I/O.

Plain numpy / pyarrow / flavio. Nothing here imports Ray, torch or MLflow, and
nothing heavy is imported at package import time.
"""
