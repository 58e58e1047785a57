"""HDMoLE layers and adapter helpers."""
