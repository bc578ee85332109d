"""Procedurally rendered diving dataset in the MTL-AQA on-disk layout (the embedded default)."""
