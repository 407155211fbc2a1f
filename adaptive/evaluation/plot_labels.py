"""Labels of a plot's points that stay readable where points coincide.

Operating points often land on one another (on a small model, exit thresholds 0.9, 0.95 and
0.99 can give the same compute and the same loss); labelled one by one their texts overprint
into an unreadable blot. Points within a hundredth of the plotted span of each other, on both
axes, share one label that names them all, "0.9 / 0.95 / 0.99".
"""

from __future__ import annotations

NEAR = 0.01  # of the points' span on each axis


def merged_labels(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """(x, y, label) of each group of points that nearly coincide: the first point's position
    and every label of the group, in the order given, joined by " / "."""
    if not points:
        return []
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    near_x, near_y = NEAR * (max(xs) - min(xs)), NEAR * (max(ys) - min(ys))
    groups: list[list[tuple[float, float, str]]] = []
    for x, y, label in points:
        home = next((g for g in groups if abs(g[0][0] - x) <= near_x and abs(g[0][1] - y) <= near_y), None)
        if home is None:
            groups.append([(x, y, label)])
        elif label not in [p[2] for p in home]:
            home.append((x, y, label))
    return [(g[0][0], g[0][1], " / ".join(p[2] for p in g)) for g in groups]


def annotate(ax, points: list[tuple[float, float, str]], **style) -> None:
    """Labels `points` = (x, y, label) on `ax`, one label per group that nearly coincides."""
    for x, y, label in merged_labels(points):
        ax.annotate(label, (x, y), **style)
