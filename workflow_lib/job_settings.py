"""Every job's settings, built once from the resolved config (issue 20, "one settings path").

Each builder is a pure function of the resolved settings (``config.resolve_settings``) and the
job's wildcards, returns plain JSON-able values, and is unit-tested without Snakemake. The rules
call these through ``rules/common.smk`` and pass the result to the job on its command line; the
CLI turns it into the job's one typed settings object, passed by keyword.

No third-party imports beyond numpy/pandas: the Snakefile imports this module at every start.
"""

from __future__ import annotations

# --- data: dataset validation and demo data jobs ---------------------------------------------


# --- training: initial training and fine-tuning jobs -----------------------------------------


# --- trust: self-verification jobs (trust policies) ------------------------------------------


# --- prediction, fusion, evaluation, export --------------------------------------------------
