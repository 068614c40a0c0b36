"""Arrow schemas shared by every layer: the one shape ratings have once read."""

from __future__ import annotations

import pyarrow as pa

#: A rating as every reader returns it and every table stores it.
RATING_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float64(), nullable=False),
        pa.field("rated_at", pa.int64(), nullable=True),  # epoch seconds
    ]
)

#: A row a reader refused: 1-based physical line in the file, the raw text, why.
REJECT_SCHEMA = pa.schema(
    [
        pa.field("line", pa.int64(), nullable=False),
        pa.field("raw", pa.string(), nullable=True),
        pa.field("reason", pa.string(), nullable=False),
    ]
)

#: The rating scale of the shipped MovieLens latest-small set (half stars).
DEFAULT_SCALE = (0.5, 5.0)
