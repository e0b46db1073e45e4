"""history.jsonl's compact forms (format v2): what grows with the number of classes is written
as what differs, and read back whole. The writer (agent/runs/store.py, `RunStore.append`)
packs each line, the reader (agent/runs/reading.py) unpacks it: every other part of
promptclimb, and every event in memory, sees the whole form.

A 397-class names search wrote 3.7 MB of history in format v1, 3 MB of it its final event's two
dense 397 x 397 confusion matrices per split; every scored names variant repeated all 397 names.

- Class names: `run_start` holds the start names once, `start_names`. Every other list of
  class names (the `names` of score, name_score and names_change; the final event's best and
  top `names`, and its names table's `found`) is written as
      {"renamed": {"<class index>": "name", ...}}
  the classes whose name is not their start name ({}: the start names themselves). The names
  table leaves out `start` (run_start's `start_names`).
- Confusion matrices (the names table's `confusion`, per before/after and split):
      {"shape": [true classes, predicted classes], "cells": [[true, predicted, count], ...]}
  the non-zero cells (diagonal ones included), row by row.
- The names table's per-class figures (`classes`): one list per figure, in class order,
      {"accuracy": {"before": {"train": [...], ...}, "after": {...}}, "prob": {...}}
  instead of one object per class; each class's class, start, found and changed come back
  from the table's start and found names.

A history begun in format v1 (a run recorded before, resumed) is continued in v1 by the store,
and read as it is: the reader unpacks only lines that say v2 or later.
"""

from __future__ import annotations

COMPACT_SINCE = 2  # the first history format written compactly
# Past this many classes summary.json holds the names table's confusion matrices as their
# non-zero cells (`summary_table`: a 397-class run's dense matrices were 2.8 of its 3.2 MB),
# the report lists a few confusions instead of the matrices, and `show` lists the changed
# classes only.
CLASSES_IN_FULL = 20
RENAMED = "renamed"
TABLE_NAMES = ("class", "start", "found", "changed")  # a names table row's fields from its start and found names


# -- class names ----------------------------------------------------------------------------
def pack_names(names, start: list[str] | None):
    """A list of class names as its differences from the start names (unchanged without
    start names to differ from, or when it is not one name per class)."""
    if start is None or not isinstance(names, list) or len(names) != len(start):
        return names
    return {RENAMED: {str(c): name for c, (name, first) in enumerate(zip(names, start)) if name != first}}


def unpack_names(packed, start: list[str] | None):
    """`pack_names` undone: the whole list (a list written whole is returned as it is)."""
    if not isinstance(packed, dict):
        return packed
    if start is None:
        raise ValueError("class names written as changes from the start names, and no run_start event before it "
                         "holds them")
    names = list(start)
    for c, name in packed[RENAMED].items():
        if not 0 <= int(c) < len(names) or not isinstance(name, str):
            raise ValueError(f"renamed class {c!r} is not one of the run's {len(names)} classes")
        names[int(c)] = name
    return names


# -- matrices -------------------------------------------------------------------------------
def pack_matrix(rows):
    """A matrix (a list of rows of counts) as its shape and non-zero cells."""
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        return rows
    return {"shape": [len(rows), len(rows[0]) if rows else 0],
            "cells": [[i, j, n] for i, row in enumerate(rows) for j, n in enumerate(row) if n]}


def unpack_matrix(packed):
    """`pack_matrix` undone: the rows of the matrix, zeros included (rows as they are: a
    matrix written whole)."""
    if not isinstance(packed, dict):
        return packed
    height, width = packed["shape"]
    rows = [[0] * width for _ in range(height)]
    for i, j, n in packed["cells"]:
        if not (0 <= i < height and 0 <= j < width):
            raise ValueError(f"confusion cell ({i}, {j}) is outside its {height} x {width} matrix")
        rows[i][j] = n
    return rows


# -- rows and columns -----------------------------------------------------------------------
def columns(rows: list):
    """Rows of the same nested shape (dicts of dicts of values) as that shape with one list
    per value, in row order."""
    if rows and all(isinstance(r, dict) for r in rows):
        return {key: columns([r[key] for r in rows]) for key in rows[0]}
    return list(rows)


def rows_of(cols, n: int) -> list:
    """`columns` undone: n rows."""
    if isinstance(cols, dict):
        parts = {key: rows_of(value, n) for key, value in cols.items()}
        return [{key: parts[key][i] for key in cols} for i in range(n)]
    if len(cols) != n:
        raise ValueError(f"a per-class figure has {len(cols)} values for {n} classes")
    return list(cols)


# -- the names table ------------------------------------------------------------------------
def pack_table(table, start: list[str] | None):
    """The final event's names table (agent/search.py `names_table`) in the compact forms."""
    if not isinstance(table, dict) or start is None:
        return table
    first, found = table.get("start"), table.get("found")
    out = {}
    for key, value in table.items():
        if key == "start" and value == start:
            continue  # run_start holds it
        if key == "found":
            value = pack_names(value, start)
        elif key == "classes" and _derived_rows(value, first, found):
            value = columns([{k: v for k, v in row.items() if k not in TABLE_NAMES} for row in value])
        elif key == "confusion" and isinstance(value, dict):
            value = {when: {split: pack_matrix(m) for split, m in by_split.items()}
                     for when, by_split in value.items()}
        out[key] = value
    return out


def unpack_table(packed, start: list[str] | None):
    """`pack_table` undone."""
    if not isinstance(packed, dict):
        return packed
    out = {}
    for key, value in packed.items():
        if key == "found" and "start" not in packed:
            if start is None:
                raise ValueError("a names table without its start names, and no run_start event before it holds them")
            out["start"] = list(start)
        out[key] = value
    out["found"] = unpack_names(out.get("found"), start)
    if isinstance(out.get("classes"), dict):
        first, found = out["start"], out["found"]
        out["classes"] = [{"class": c, "start": first[c], "found": found[c], "changed": found[c] != first[c], **row}
                          for c, row in enumerate(rows_of(out["classes"], len(first)))]
    if isinstance(out.get("confusion"), dict):
        out["confusion"] = {when: {split: unpack_matrix(m) for split, m in by_split.items()}
                            for when, by_split in out["confusion"].items()}
    return out


def summary_table(table: dict) -> dict:
    """The final event's names table as summary.json holds it: whole, except that past
    CLASSES_IN_FULL classes its confusion matrices are their non-zero cells (`pack_matrix`;
    readers take either form through `confusion_matrix`)."""
    if len(table.get("start") or []) <= CLASSES_IN_FULL or not isinstance(table.get("confusion"), dict):
        return table
    return {**table, "confusion": {when: {split: pack_matrix(m) for split, m in by_split.items()}
                                   for when, by_split in table["confusion"].items()}}


def confusion_matrix(table: dict, when: str, split: str) -> list[list[int]] | None:
    """The rows of a names table's confusion matrix (`when`: before or after), written whole or
    as its non-zero cells (summary.json past CLASSES_IN_FULL classes); None when it has none."""
    matrix = ((table.get("confusion") or {}).get(when) or {}).get(split)
    return unpack_matrix(matrix) if matrix else None


def _derived_rows(rows, start, found) -> bool:
    """Whether each row's class, start, found and changed are what the table's names say, and
    its other fields have the same shape as every other row's (so columns hold them whole)."""
    if not isinstance(rows, list) or not isinstance(start, list) or not isinstance(found, list) \
            or not rows or len(rows) != len(start) or len(found) != len(start):
        return False
    for c, row in enumerate(rows):
        if not isinstance(row, dict) or {k: row.get(k) for k in TABLE_NAMES} != {
                "class": c, "start": start[c], "found": found[c], "changed": found[c] != start[c]}:
            return False
    figures = [{k: v for k, v in row.items() if k not in TABLE_NAMES} for row in rows]
    return all(_shape(f) == _shape(figures[0]) for f in figures)


def _shape(value):
    return {k: _shape(v) for k, v in value.items()} if isinstance(value, dict) else None


# -- events ---------------------------------------------------------------------------------
def pack_event(event: dict, start: list[str] | None) -> dict:
    """The line written for `event` (a new dict; `event` is left whole)."""
    out = dict(event)
    if event["event"] == "final":
        if isinstance(out.get("best"), dict) and "names" in out["best"]:
            out["best"] = {**out["best"], "names": pack_names(out["best"]["names"], start)}
        if isinstance(out.get("top"), list):
            out["top"] = [{**t, "names": pack_names(t["names"], start)} if isinstance(t, dict) and "names" in t else t
                          for t in out["top"]]
        if "names" in out:
            out["names"] = pack_table(out["names"], start)
    elif "names" in out:
        out["names"] = pack_names(out["names"], start)
    return out


def unpack_event(event: dict, start: list[str] | None) -> dict:
    """`pack_event` undone, in place; ValueError (or KeyError, TypeError) for a line that is
    not in the compact form it says."""
    if event["event"] == "final":
        if isinstance(event.get("best"), dict) and "names" in event["best"]:
            event["best"]["names"] = unpack_names(event["best"]["names"], start)
        for t in event.get("top") or []:
            if isinstance(t, dict) and "names" in t:
                t["names"] = unpack_names(t["names"], start)
        if "names" in event:
            event["names"] = unpack_table(event["names"], start)
    elif "names" in event:
        event["names"] = unpack_names(event["names"], start)
    return event
