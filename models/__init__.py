"""PyTorch models of wcscan: networks that estimate delta C9, their training loop and data adapters.

- :mod:`models.resnet3d`: the seed study's 3D ResNet (depth 10/18/34) on voxel images;
- :mod:`models.deepsets`: Deep Sets on sets of events;
- :mod:`models.event_classifier`: per-event posteriors over a delta C9 grid, combined per set;
- :mod:`models.features`: the per-event features (chi as cos/sin, standardised);
- :mod:`models.estimators`: one ``predict(sets) -> (estimates, uncertainties)`` interface
  for the networks and the ML fit;
- :mod:`models.training`: one training loop (:class:`~models.training.TrainConfig`, :func:`~models.training.train`);
- :mod:`models.data`: torch datasets over image arrays, event pools and index arrays;
- :mod:`models.bench`: ResNet training throughput.

Pure PyTorch over arrays: no Ray, no MLflow, no files of a cluster. Importing
this package imports nothing; import the submodules.
"""
