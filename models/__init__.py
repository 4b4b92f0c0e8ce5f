"""PyTorch models of wcscan (lands with the models issue).

3D ResNet on voxel images, Deep Sets and an event-by-event classifier, with the
training loop and dataset adapters. Pure PyTorch: no Ray, no MLflow.
"""
