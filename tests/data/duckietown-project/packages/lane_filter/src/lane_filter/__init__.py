"""A stand-in Duckietown node package."""

GAIN = 1.0
