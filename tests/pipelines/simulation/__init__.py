"""Tests of the simulation modules (pipelines.simulation)."""
