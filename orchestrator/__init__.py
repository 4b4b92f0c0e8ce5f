"""The orchestration layer of wcscan: generation, fitting, and the ``wcscan`` CLI.

It composes the kernels (and later Ray, models, Tune and MLflow) into jobs. It
is the only layer that knows the whole job; nothing in ``kernels`` imports it.
"""
