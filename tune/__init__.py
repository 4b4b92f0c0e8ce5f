"""Ray Tune searches over the model families (lands with the Tune issue).

Search spaces, Tune trainables and the Tuner set-up (ASHA, Optuna), logging to
MLflow. Uses ``models``; nothing in ``kernels`` or ``models`` imports this.
"""
