"""Datasets and augmentation pipelines."""
