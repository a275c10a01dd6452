"""The Great Expectations suite over normalised requests, with the custom expectations it needs.

Importing this module imports Great Expectations (4-7 s) and registers the custom expectations; only
:mod:`validation.intake.validate` imports it, and only when a validation runs.

Custom expectations (GX has no built-in for these):

* ``expect_column_values_to_not_be_blank`` -- a present value that is only whitespace;
* ``expect_column_values_to_contain_one_placeholder`` -- exactly one ``{}`` in a prompt template;
* ``expect_column_values_to_have_no_control_characters`` -- C0/C1 control characters (tab and newline
  included) and the Unicode bidirectional overrides, in a text or in every string of a probe list;
* ``expect_column_values_to_have_items_of_length_at_most`` -- every string of a probe list within a bound;
* ``expect_column_values_to_be_iso8601`` -- a parseable ISO 8601 time;
* ``expect_column_pair_values_to_differ`` -- ``target_new`` differs from ``target_true`` (compared without
  surrounding whitespace and case); rows without ``target_true`` pass.

Each expectation's failures are reported per row by the ``request_id`` column (``Row.key``).
"""

from __future__ import annotations

import logging
import unicodedata
from datetime import datetime
from typing import Any, ClassVar, Literal

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.compatibility.pydantic import Field
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.expectation import ColumnMapExpectation, ColumnPairMapExpectation
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    ColumnPairMapMetricProvider,
    column_condition_partial,
    column_pair_condition_partial,
)

logging.getLogger("great_expectations").setLevel(logging.ERROR)

SUITE_NAME = "factsmith_requests"
INDEX_COLUMN = "request_id"

# Length bounds (characters). Generous for real requests, small enough that a runaway field (a whole
# document pasted into a target) is caught before it reaches a tokenizer.
MAX_LENGTH = {"id": 128, "subject": 200, "prompt": 500, "target_new": 200, "target_true": 200, "relation": 100,
              "source": 500, "requested_by": 200, "reason": 2000, "requested_at": 64}
MAX_PROBE_LENGTH = 500
# Ids name ledger entries and may become parts of file names downstream: letters, digits and . _ : @ + -,
# starting with a letter or a digit -- never a path ("../x", "/etc/passwd", "a/b", "C:\\x" all fail).
ID_REGEX = r"^[A-Za-z0-9][A-Za-z0-9._:@+\-]*$"
_BIDI = {0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069}


def control_character(text: str) -> str | None:
    """The first control character of ``text`` as ``U+XXXX``, or None."""
    for ch in text:
        if unicodedata.category(ch) == "Cc" or ord(ch) in _BIDI:
            return f"U+{ord(ch):04X}"
    return None


def _strings(value: Any) -> list[str]:
    """The strings of a text value or of a probe list (strings, or (prompt, target) pairs)."""
    if isinstance(value, str):
        return [value]
    out: list[str] = []
    for item in value if isinstance(value, (list, tuple)) else ():
        out.extend(_strings(item))
    return out


def _iso8601(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------------------------
# Custom expectations: a metric provider (the row condition) and the expectation that uses it.


class ColumnValuesNotBlank(ColumnMapMetricProvider):
    condition_metric_name = "column_values.factsmith_not_blank"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return column.map(lambda v: bool(str(v).strip()))


class ExpectColumnValuesToNotBeBlank(ColumnMapExpectation):
    """Each present value has a non-whitespace character."""

    map_metric = "column_values.factsmith_not_blank"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ColumnValuesOnePlaceholder(ColumnMapMetricProvider):
    condition_metric_name = "column_values.factsmith_one_placeholder"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return column.map(lambda v: str(v).count("{}") == 1)


class ExpectColumnValuesToContainOnePlaceholder(ColumnMapExpectation):
    """Each prompt template has exactly one ``{}`` where the subject goes."""

    map_metric = "column_values.factsmith_one_placeholder"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ColumnValuesNoControlCharacters(ColumnMapMetricProvider):
    condition_metric_name = "column_values.factsmith_no_control_characters"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return column.map(lambda v: all(control_character(s) is None for s in _strings(v)))


class ExpectColumnValuesToHaveNoControlCharacters(ColumnMapExpectation):
    """No control character (tab and newline included) nor bidi override in a text or a probe list."""

    map_metric = "column_values.factsmith_no_control_characters"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ColumnValuesItemsLengthAtMost(ColumnMapMetricProvider):
    condition_metric_name = "column_values.factsmith_items_length_at_most"
    condition_value_keys = ("max_length",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, max_length: int, **kwargs) -> pd.Series:
        return column.map(lambda v: all(len(s) <= max_length for s in _strings(v)))


class ExpectColumnValuesToHaveItemsOfLengthAtMost(ColumnMapExpectation):
    """Every string of a probe list is at most ``max_length`` characters."""

    max_length: int = Field(..., ge=1)
    map_metric = "column_values.factsmith_items_length_at_most"
    success_keys: ClassVar[tuple[str, ...]] = ("max_length", "mostly")


class ColumnValuesIso8601(ColumnMapMetricProvider):
    condition_metric_name = "column_values.factsmith_iso8601"

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, **kwargs) -> pd.Series:
        return column.map(lambda v: _iso8601(str(v)))


class ExpectColumnValuesToBeIso8601(ColumnMapExpectation):
    """Each present value is an ISO 8601 date or time (``datetime.fromisoformat``)."""

    map_metric = "column_values.factsmith_iso8601"
    success_keys: ClassVar[tuple[str, ...]] = ("mostly",)


class ColumnPairValuesDiffer(ColumnPairMapMetricProvider):
    condition_metric_name = "column_pair_values.factsmith_differ"

    @column_pair_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column_A: pd.Series, column_B: pd.Series, **kwargs) -> pd.Series:
        def differ(a: Any, b: Any) -> bool:
            if not isinstance(a, str) or not isinstance(b, str):
                return True  # a missing value is another expectation's business
            return a.strip().casefold() != b.strip().casefold()

        return pd.Series([differ(a, b) for a, b in zip(column_A, column_B)], index=column_A.index)


class ExpectColumnPairValuesToDiffer(ColumnPairMapExpectation):
    """``column_A`` differs from ``column_B`` (ignoring surrounding whitespace and case) where both are set."""

    # ColumnPairMapExpectation does not declare it, and the pandas engine fails on None
    ignore_row_if: Literal["both_values_are_missing", "either_value_is_missing", "neither"] = "neither"
    map_metric = "column_pair_values.factsmith_differ"
    success_keys: ClassVar[tuple[str, ...]] = ("column_A", "column_B", "ignore_row_if", "mostly")


# --------------------------------------------------------------------------------------------------


REQUIRED = ("id", "subject", "prompt", "target_new")
TEXT_COLUMNS = tuple(MAX_LENGTH)
PROBE_COLUMN = "probes"  # every paraphrase, neighbour and portability string of the row


def suite() -> gx.ExpectationSuite:
    """The request suite, in the order problems are reported (a row's first problem is its headline)."""
    s = gx.ExpectationSuite(name=SUITE_NAME)
    for col in REQUIRED:
        s.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    for col in REQUIRED:
        s.add_expectation(ExpectColumnValuesToNotBeBlank(column=col))
    s.add_expectation(gxe.ExpectColumnValuesToMatchRegex(column="id", regex=ID_REGEX))
    s.add_expectation(ExpectColumnValuesToContainOnePlaceholder(column="prompt"))
    s.add_expectation(ExpectColumnPairValuesToDiffer(column_A="target_new", column_B="target_true"))
    for col in TEXT_COLUMNS:
        s.add_expectation(ExpectColumnValuesToHaveNoControlCharacters(column=col))
    s.add_expectation(ExpectColumnValuesToHaveNoControlCharacters(column=PROBE_COLUMN))
    for col, n in MAX_LENGTH.items():
        s.add_expectation(gxe.ExpectColumnValueLengthsToBeBetween(column=col, min_value=0, max_value=n))
    s.add_expectation(ExpectColumnValuesToHaveItemsOfLengthAtMost(column=PROBE_COLUMN, max_length=MAX_PROBE_LENGTH))
    s.add_expectation(ExpectColumnValuesToBeIso8601(column="requested_at"))
    s.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="id"))
    return s


def explain(expectation: str, column: str, value: Any, kwargs: dict[str, Any]) -> str:
    """The sentence a quarantine record gives for one failed expectation on one row."""
    short = repr(value) if not isinstance(value, str) or len(value) <= 80 else repr(value[:77] + "...")
    if expectation == "expect_column_values_to_not_be_null":
        return f"field '{column}' is missing"
    if expectation == "expect_column_values_to_not_be_blank":
        return f"field '{column}' is empty"
    if expectation == "expect_column_values_to_match_regex":
        return (f"field 'id' {short} is not a safe identifier (letters, digits and . _ : @ + -, starting with a "
                f"letter or digit; never a path)")
    if expectation == "expect_column_values_to_contain_one_placeholder":
        n = str(value).count("{}")
        return (f"field 'prompt' must contain exactly one '{{}}' where the subject goes, or the subject itself; "
                f"found {n} in {short}")
    if expectation == "expect_column_pair_values_to_differ":
        return f"fields 'target_new' and 'target_true' are the same ({short}): nothing to change"
    if expectation == "expect_column_values_to_have_no_control_characters":
        bad = next((c for c in map(control_character, _strings(value)) if c), "?")
        where = "a probe prompt" if column == PROBE_COLUMN else f"field '{column}'"
        return f"{where} contains the control character {bad}"
    if expectation == "expect_column_value_lengths_to_be_between":
        return f"field '{column}' is {len(str(value))} characters long; the limit is {kwargs.get('max_value')}"
    if expectation == "expect_column_values_to_have_items_of_length_at_most":
        longest = max((len(s) for s in _strings(value)), default=0)
        return f"a probe prompt is {longest} characters long; the limit is {kwargs.get('max_length')}"
    if expectation == "expect_column_values_to_be_iso8601":
        return f"field 'requested_at' {short} is not an ISO 8601 time (e.g. 2025-01-21T09:00:00Z)"
    if expectation == "expect_column_values_to_be_unique":
        return f"id {short} is used by more than one request in this validation"
    return f"field '{column}' failed {expectation}"
