"""Points that land on one another share one label naming them all, instead of overprinting."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from adaptive.evaluation.plot_labels import annotate, merged_labels  # noqa: E402


def test_coinciding_points_share_one_label_and_distinct_ones_keep_their_own():
    points = [
        (100.0, 2.0, "0.9"),
        (300.0, 1.5, "full"),
        (100.0, 2.0, "0.95"),
        (100.5, 2.001, "0.99"),  # within a hundredth of the span: the same place on the plot
        (110.0, 2.0, "0.5"),  # 5% of the span away: its own label
        (300.0, 1.5, "full"),  # the same label twice is named once
    ]
    assert merged_labels(points) == [(100.0, 2.0, "0.9 / 0.95 / 0.99"), (300.0, 1.5, "full"), (110.0, 2.0, "0.5")]
    assert merged_labels([]) == [] and merged_labels([(1.0, 1.0, "a")]) == [(1.0, 1.0, "a")]


def test_annotate_draws_one_text_per_group():
    fig, ax = plt.subplots()
    annotate(ax, [(0.0, 0.0, "a"), (0.0, 0.0, "b"), (1.0, 1.0, "c")], fontsize=6)
    assert sorted(t.get_text() for t in ax.texts) == ["a / b", "c"]
    plt.close(fig)
