"""Variable-effort inference: the cascade decision, offline evaluation, calibration and serving."""
