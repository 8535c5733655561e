"""Data contract, ingestion and feature builders for car-relapse (pure functions over DataFrames)."""
