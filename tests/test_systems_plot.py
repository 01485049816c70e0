"""systems.png's trust panel: a key of what each mark means, not an entry per chain and mark."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from workflow_lib import systems  # noqa: E402

from conftest import REPO  # noqa: E402

STUDY_REP = REPO / "experiments" / "fsdd" / "reference" / "study_single_label_full" / "george_s2018"


def test_the_trust_panel_legend_is_a_style_key_whatever_the_number_of_chains(tmp_path, monkeypatch):
    """Five chains drew 16 legend entries over the bars before; now the key has the marks only
    (the chains are named once, in the selection panel)."""
    table = pd.read_csv(STUDY_REP / "systems.csv")
    iterations = pd.read_csv(STUDY_REP / "systems_iterations.csv")
    figures = []
    real_subplots = plt.subplots

    def kept_subplots(*args, **kwargs):
        figures.append(real_subplots(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plt, "subplots", kept_subplots)
    systems.plot_systems(table, iterations, tmp_path / "systems.png")
    assert (tmp_path / "systems.png").stat().st_size > 10_000
    _, axes = figures[0]
    trust_labels = [text.get_text() for text in axes[2].get_legend().get_texts()]
    assert trust_labels == ["trusted clips (bars)", "precision", "recall", "precision of the given labels"]
    chain_labels = [text.get_text() for text in axes[1].get_legend().get_texts()]
    assert chain_labels == list(table["system"])
