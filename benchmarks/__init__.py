"""Measurement harnesses: each module runs ours and the reference side by side in one run."""
