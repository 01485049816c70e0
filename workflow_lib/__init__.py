"""Iterative self-verification for audio tagging with noisy labels (Dorfer & Widmer, DCASE 2018).

Plain importable functions; the Snakemake rules in ``rules/`` only wire them together.
"""

#: The one place the version is written: pyproject.toml reads it (``[tool.setuptools.dynamic]``),
#: every CLI step logs it, and the Snakemake report shows it. Changes per version: CHANGELOG.md.
__version__ = "0.5.0"
