"""An artifact's validation accuracy at each operating point, as a server looks it up.

`adaptive export` writes `accuracy_at_budgets` to meta.json: accuracy at every (expert budget,
step budget), scored in batches of the run's evaluation size and, for experts with capacity,
again in each of a few small batch sizes (`by_batch`): the tokens of one batch share the
experts' slots, so one expert a token that is as good as two in a batch of 1000 can be clearly
worse in the batch of 4 a server is about to run. The controller asks for the table of the rows
it is deciding: the one scored in the largest batch that is not larger.

A table is a choice the server makes, so it must be scored on the validation split (DESIGN.md,
"Splits"): one scored on test would tune serving on the data its results are judged on, and
`from_meta` refuses it.
"""

from __future__ import annotations

Point = tuple  # (experts per token or None for the trained budget, steps)
SPLIT = "validation"  # the only split a serving table may be scored on


class AccuracyTable:
    def __init__(self, by_rows: dict[int, dict[Point, float]]):
        """`by_rows`: {batch size scored in: {(experts or None, steps): accuracy}}."""
        self._by_rows = {int(rows): dict(table) for rows, table in by_rows.items() if table}
        self._sizes = sorted(self._by_rows)
        self._at: dict[int, dict[Point, float]] = {}  # rows -> table, as looked up (plans ask often)
        self._least: dict[tuple, int | None] = {}

    @classmethod
    def from_meta(cls, meta: dict) -> AccuracyTable:
        """The table of an artifact's meta.json (empty without one). A table from before batch
        sizes were recorded applies to every batch."""
        table = meta.get("accuracy_at_budgets")
        if not table:
            return cls({})
        check_split(table)
        by_rows = {table.get("batch", 1): _points(table["experts"], table["accuracy"])}
        served = table.get("by_batch") or {"batch": [], "accuracy": []}
        for rows, accuracy in zip(served["batch"], served["accuracy"], strict=True):
            by_rows[rows] = _points(table["experts"], accuracy)
        return cls(by_rows)

    def __bool__(self) -> bool:
        return bool(self._sizes)

    def at(self, rows: int) -> dict[Point, float]:
        """{(experts or None, steps): accuracy} scored in the largest batch of at most `rows`
        (the smallest scored, for fewer rows); empty without a table."""
        if not self._sizes:
            return {}
        if rows not in self._at:
            fitting = [size for size in self._sizes if size <= rows]
            self._at[rows] = self._by_rows[fitting[-1] if fitting else self._sizes[0]]
        return self._at[rows]

    def least_scored(self, rows: int, experts) -> int | None:
        """The fewest steps the table for `rows` scores at `experts` per token (None: none there).
        Fewer steps, down to the model's least run, are points it did not score: an operating
        point's table holds the one accuracy measured, at the cap (serving/point_meta.py), and
        its model still exits earlier under load."""
        if (rows, experts) not in self._least:
            scored = [steps for k, steps in self.at(rows) if k == experts]
            self._least[rows, experts] = min(scored, default=None)
        return self._least[rows, experts]


def accuracy_lookup(meta: dict) -> dict[Point, float]:
    """{(experts or None, steps): accuracy} of an artifact's main table (scored in its
    evaluation batches; empty without a table)."""
    table = meta.get("accuracy_at_budgets")
    if not table:
        return {}
    check_split(table)
    return _points(table["experts"], table["accuracy"])


def check_split(table: dict) -> None:
    """A one-line ValueError unless `table` (meta.json's `accuracy_at_budgets`) was scored on the
    validation split (a table without a `split` predates the key; export has always scored
    validation)."""
    split = table.get("split", SPLIT)
    if split != SPLIT:
        raise ValueError(f"the accuracy table was scored on the {split!r} split; serving reads only {SPLIT!r} tables")


def _points(experts: list[int] | None, accuracy: list[list]) -> dict[Point, float]:
    """Rows per expert budget as {(experts, steps): accuracy}; the trained expert budget (the
    last row) is None, as the controller and engine name it."""
    ks = experts or [None]
    trained = ks[-1]
    points = {}
    for k, row in zip(ks, accuracy, strict=True):
        for steps, acc in enumerate(row, start=1):
            if acc is not None:  # a static model has no step budget below its depth
                points[None if k == trained else k, steps] = float(acc)
    return points
