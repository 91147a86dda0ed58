"""Reading a data table (CSV) for training and prediction: the command line's data path.

``read_csv(path, target=-1, delimiter=None, header=None)`` returns a :class:`Table`: the
numeric feature matrix, the raw target column (numbers, or strings for text class labels),
the column names and each row's line number in the file. Every problem raises
:class:`DataError` (a ValueError) whose message names the file, the line and the column:

- the delimiter is sniffed among ``, ; tab |`` and space unless given;
- a header row is detected unless given (``header=True/False``): the first row is a header
  when a column that holds numbers below it does not hold a number in it;
- a row with another number of fields than the first, a missing value (an empty field, NA,
  N/A, NaN, null, None, ?) or a non-finite number is refused with its line and column;
- feature columns must be numeric; the target may hold text labels.

``infer_task(y)`` says whether a target looks like class labels or a regression target, and
why. Only the standard library's csv module and numpy are used.
"""
import csv
import io
import os

import numpy as np

MISSING = frozenset(["", "na", "n/a", "nan", "null", "none", "?", "-nan"])
DELIMITERS = ",;\t| "
MAX_CLASSES = 50


class DataError(ValueError):
    """A data file that cannot be used as it is; the message says where and why."""


def _is_number(text):
    try:
        float(text)
        return text.strip().lower() not in MISSING
    except ValueError:
        return False


def _describe_delimiter(d):
    return {"\t": "tab", " ": "space"}.get(d, repr(d))


class Table:
    """A data table read from a file.

    X: (n, features) float64; y: (n,) float64 or str (None for a table read with
    target=None); feature_names, target_name: column names (the header's, or "column <i>"
    with i from 0); lines: (n,) the 1-based line number of each row in the file;
    header: whether the file had a header row; delimiter: the field separator;
    raw_rows: the rows' fields as text (for echoing them back).
    """

    def __init__(self, path, X, y, feature_names, target_name, target_index, lines, header,
                 delimiter, raw_rows, names):
        self.path, self.X, self.y = path, X, y
        self.feature_names, self.target_name, self.target_index = (feature_names, target_name,
                                                                   target_index)
        self.lines, self.header, self.delimiter = lines, header, delimiter
        self.raw_rows, self.names = raw_rows, names

    def __len__(self):
        return len(self.raw_rows)


def _read_rows(path, delimiter):
    """(rows of fields, their line numbers, the delimiter) of a text file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, expected a CSV file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file (byte {e.start}); expected a CSV "
                        f"file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if delimiter is None:
        sample = "\n".join(text.splitlines()[:50])
        try:
            delimiter = csv.Sniffer().sniff(sample, delimiters=DELIMITERS).delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    rows, lines = [], []
    try:
        for row in reader:   # skipinitialspace strips the fields' leading blanks
            if len(row) > 1 or (row and row[0].strip()):
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{path}: line {reader.line_num}: cannot parse the CSV ({e})") from None
    if not rows:
        raise DataError(f"{path}: the file holds no data rows")
    width = len(rows[0])
    for row, line in zip(rows, lines):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} fields, expected {width} like "
                            f"line {lines[0]} (delimiter {_describe_delimiter(delimiter)}; "
                            f"pass --delimiter if the file uses another)")
    return rows, lines, delimiter, text


def _detect_header(rows):
    """Whether rows[0] is a header row (see the module docstring)."""
    if len(rows) < 2:
        return not all(_is_number(c) for c in rows[0])
    body = rows[1:201]
    for j, cell in enumerate(rows[0]):
        if _is_number(cell):
            continue
        below = [r[j] for r in body if r[j].strip().lower() not in MISSING]
        if below and all(_is_number(c) for c in below):
            return True
    # every column that is text in the first row is text below too: a header only when
    # the first row repeats no value of the rows below (names, not labels)
    return all(not _is_number(c) for c in rows[0]) and not any(
        rows[0][j] == r[j] for r in body for j in range(len(rows[0])))


def _column_index(target, names, header, path):
    n = len(names)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if not header:
            raise DataError(f"--target {target!r}: {path} has no header row, so columns have "
                            f"no names; give the column's index (0 to {n - 1}, or -1 for the "
                            f"last)")
        if target not in names:
            raise DataError(f"--target {target!r}: no such column in {path} (columns: "
                            f"{', '.join(names)})")
        return names.index(target)
    i = int(target)
    if not -n <= i < n:
        raise DataError(f"--target {target}: column index out of range: {path} has {n} "
                        f"columns (0 to {n - 1}, or -1 for the last)")
    return i % n


def _numeric(path, strings, lines, name):
    """strings -> float64, or the first cell that is not a number: (None, line, text)."""
    col = np.asarray(strings)
    try:
        values = col.astype(np.float64)
    except ValueError:
        values = None
    if values is not None:
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size == 0:
            return values, None
        i = int(bad[0])
    else:
        i = next(i for i, c in enumerate(strings) if not _is_number(c))
    cell = strings[i].strip()
    if cell.lower() in MISSING:
        raise DataError(f"{path}: missing value at line {lines[i]}, column {name} "
                        f"({cell!r}); fastnn does not fill missing values: fill or drop "
                        f"them first")
    if _is_number(cell) or cell.lower().lstrip("+-") in ("inf", "infinity"):
        raise DataError(f"{path}: non-finite value {cell!r} at line {lines[i]}, column {name}")
    return None, (lines[i], cell)


def _fast_numeric(text, delimiter, skip, n, use):
    """The columns `use` of the data rows as float64, parsed by numpy's loadtxt, when every
    one of their cells is a finite number and the rows are plain (one line each); None
    otherwise (the caller then goes column by column through the csv module's rows, which
    name the first bad cell)."""
    try:
        X = np.loadtxt(io.StringIO(text), delimiter=delimiter, skiprows=skip, usecols=use,
                       dtype=np.float64, ndmin=2, comments=None, quotechar='"')
    except (ValueError, IndexError):
        return None
    return X if X.shape == (n, len(use)) and np.isfinite(X).all() else None


def read_csv(path, target=-1, delimiter=None, header=None, numeric=True, features=None):
    """Read a CSV file into a :class:`Table` (see the module docstring).

    target: the target column, by name or index (default -1: the last); None: every column
    is a feature (prediction input). delimiter: one character (None: sniffed).
    header: True, False or None (detected). numeric=False: only the rows as text and the
    column names (X and y are None). features: the feature columns by name, in this order
    (the file needs a header row; other columns are ignored); default: every column but the
    target. Raises DataError.
    """
    path = os.fspath(path)
    if delimiter is not None and len(delimiter) != 1:
        raise DataError(f"--delimiter: expected one character, got {delimiter!r}")
    rows, lines, delimiter, text = _read_rows(path, delimiter)
    if header is None:
        header = _detect_header(rows)
    skip = lines[0] if header else lines[0] - 1   # physical lines before the data
    width = len(rows[0])
    if header:
        names, rows, lines = [c.strip() for c in rows[0]], rows[1:], lines[1:]
        if not rows:
            raise DataError(f"{path}: the file holds a header row but no data rows")
    else:
        names = [f"column {j}" for j in range(width)]
    if target is not None and width < 2:
        raise DataError(f"{path}: found 1 column with delimiter "
                        f"{_describe_delimiter(delimiter)}; expected features and a target "
                        f"(pass --delimiter if the file uses another separator)")
    t = None if target is None else _column_index(target, names, header, path)
    if not numeric:
        return Table(path, None, None, None, None, t, np.array(lines), header, delimiter, rows,
                     names)
    quoted = (lambda j: repr(names[j]) if header else names[j])
    if features is None:
        use = [j for j in range(width) if j != t]
    else:
        missing = [f for f in features if f not in names]
        if not header or missing:
            raise DataError(f"{path}: the model's feature column"
                            f"{'s' if len(missing) != 1 else ''} "
                            f"{', '.join(repr(f) for f in missing or features)} "
                            f"{'are' if len(missing) != 1 else 'is'} not in the header "
                            f"({', '.join(names)}): rename the columns, or remove the header "
                            f"row to match them by position")
        use = [names.index(f) for f in features]
        if t in use:
            raise DataError(f"{path}: the target column {quoted(t)} is one of the model's "
                            f"features")
    X = _fast_numeric(text, delimiter, skip, len(rows), use) if use else None
    slow = X is None
    if slow:
        X = np.empty((len(rows), len(use)), np.float64)
    y = None
    for j in ([t] if t is not None else []) + (use if slow else []):
        strings = [r[j].strip() for r in rows]
        values, bad = _numeric(path, strings, lines, quoted(j))
        if j == t:
            if bad is not None:
                missing = [i for i, c in enumerate(strings) if c.lower() in MISSING]
                if missing:
                    raise DataError(f"{path}: missing value at line {lines[missing[0]]}, "
                                    f"column {quoted(j)} ({strings[missing[0]]!r}): the target "
                                    f"must be given for every row")
                y = np.array(strings, dtype=str)
            else:
                y = values
            continue
        if bad is not None:
            raise DataError(f"{path}: column {quoted(j)} is not numeric: line {bad[0]} has "
                            f"{bad[1]!r}; features must be numbers (drop or encode that "
                            f"column{'' if t is None else ', or name the target with --target'}"
                            f")")
        X[:, use.index(j)] = values
    feature_names = [names[j] for j in use]
    return Table(path, X, y, feature_names, None if t is None else names[t], t,
                 np.array(lines), header, delimiter, rows, names)


def infer_task(y, name="target"):
    """("classify" or "regress", the reason in words) for a target column y (numbers or
    strings): text labels, or integer values with few distinct values (at most 50 and at
    most one per 5 rows), are class labels; anything else is a regression target."""
    y = np.asarray(y)
    if y.dtype.kind in "US":
        k = len(np.unique(y))
        return "classify", f"the {name} holds text labels ({k} distinct)"
    k = len(np.unique(y))
    frac = y[y != np.round(y)]
    if frac.size:
        return "regress", f"the {name} has non-integer values (such as {frac[0]:g})"
    if k > MAX_CLASSES or k > max(2, len(y) // 5):
        return "regress", (f"the {name} has {k} distinct integer values in {len(y)} rows, too "
                           f"many for class labels (at most {MAX_CLASSES} and one per 5 rows)")
    return "classify", f"the {name} holds {k} distinct integer values"
