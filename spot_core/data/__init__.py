"""Annotations, feature files, windows and the synthetic data generator."""
