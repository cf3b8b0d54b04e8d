"""A Materialize stand-in for tests: a pgwire server (psycopg 3, sync and async) whose
`DECLARE c CURSOR FOR SUBSCRIBE ...` / `FETCH` replay a scripted, timestamped collection.

    with MaterializeDouble("orders_mv", [("id", "int8"), ("total", "numeric")]) as mz:
        mz.insert((1, "10.50"))
        ...  # point the code under test at mz.dsn

See `MaterializeDouble` for the controls, `collection` for what a SUBSCRIBE emits.
"""

from .collection import COLUMN_TYPES, Column
from .double import MaterializeDouble, Received
from .sql import SqlError

__all__ = ["COLUMN_TYPES", "Column", "MaterializeDouble", "Received", "SqlError"]
