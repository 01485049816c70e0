"""Iterative self-verification for audio tagging with noisy labels (Dorfer & Widmer, DCASE 2018).

Plain importable functions; the Snakemake rules in ``rules/`` only wire them together.
"""

__version__ = "0.1.0"
