"""`--fail-if` checks: a tiny, safe expression language, ``FIELD OP NUMBER``.

FIELD is a per-tensor figure (``rel_rmse``, ``error.rel_rmse``, ``collapsed_frac``, ``crest``, ``bpw`` ...),
which trips the check when any tensor's value satisfies the comparison, or ``summary.FIELD``, the
element-weighted whole-model figure. OP is one of ``> >= < <= == !=``; NUMBER a decimal literal.
Nothing is evaluated: the text is matched against one regular expression. A figure a tensor does not
have (no match in the reference) or that is undefined (the SQNR of an exact copy) never trips a check.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from qtool.analysis.report import Report, resolve_field
from qtool.errors import UsageError

OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
       "==": operator.eq, "!=": operator.ne}

_EXPR = re.compile(r"""^\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,2})\s*
                       (?P<op>>=|<=|==|!=|>|<)\s*
                       (?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$""", re.VERBOSE)

#: summary fields beyond the per-tensor ones
SUMMARY_ONLY = ("n_tensors",)


@dataclass(frozen=True)
class Gate:
    text: str
    field: str           # the bare field name
    op: str
    threshold: float
    summary: bool        # on the whole-model summary rather than on every tensor

    def trips(self, value: float | None) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        return bool(OPS[self.op](value, self.threshold))


@dataclass
class Failure:
    gate: Gate
    #: (tensor name or "summary", value) for every offender
    offenders: list[tuple[str, float]]


def parse(text: str, fields: tuple[str, ...], resolve=resolve_field) -> Gate:
    """One ``--fail-if`` expression, checked against the fields the report will carry (``resolve(name,
    fields)`` returns the bare field name or raises UsageError; another command passes its own)."""
    m = _EXPR.match(text)
    if m is None:
        raise UsageError(f"--fail-if {text!r}: expected FIELD OP NUMBER, e.g. 'rel_rmse>0.05' or "
                         f"'summary.collapsed_frac>=0.1', with OP one of {' '.join(OPS)}")
    name, op, number = m.group("field"), m.group("op"), float(m.group("number"))
    summary = name.startswith("summary.")
    if summary:
        name = name[len("summary."):]
        if name in SUMMARY_ONLY:
            return Gate(text, name, op, number, True)
    try:
        bare = resolve(name, fields)
    except UsageError as e:
        raise UsageError(f"--fail-if {text!r}: {e}") from None
    return Gate(text, bare, op, number, summary)


def evaluate(gates: list[Gate], report: Report) -> list[Failure]:
    """The gates that tripped, each with its offending tensors (worst first) or the summary value."""
    failures: list[Failure] = []
    summary = report.summary() if any(g.summary for g in gates) else None
    for g in gates:
        if g.summary:
            v = summary.get(g.field)
            if g.trips(None if v is None else float(v)):
                failures.append(Failure(g, [("summary", float(v))]))
            continue
        offenders = [(t.name, v) for t in report.tensors if g.trips(v := t.value(g.field))]
        if offenders:
            worst_high = g.op in (">", ">=", "!=", "==")
            offenders.sort(key=lambda p: -p[1] if worst_high else p[1])
            failures.append(Failure(g, offenders))
    return failures
