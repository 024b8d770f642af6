"""Data preparation: readers for real source formats, cleaning, conversion, merge, decontamination, splits."""
