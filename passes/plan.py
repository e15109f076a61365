"""A plan is data: an ordered list of pass calls (the JSON of DESIGN.md). Search emits plans,
`onnxcompress apply` replays them, reports store them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from onnxcompress.compiler.errors import PlanError
from onnxcompress.passes.registry import get_pass


@dataclass(frozen=True)
class PassCall:
    name: str
    params: Any

    def to_json(self) -> dict[str, Any]:
        return {"pass": self.name, **self.params.to_json()}

    @staticmethod
    def from_json(obj: Any) -> "PassCall":
        if not isinstance(obj, Mapping) or "pass" not in obj:
            raise PlanError(f"a plan step must be an object with a \"pass\" key, got {json.dumps(obj)[:80]}")
        spec = get_pass(str(obj["pass"]))
        params = spec.params.from_json({k: v for k, v in obj.items() if k != "pass"})
        return PassCall(spec.name, params)


@dataclass(frozen=True)
class Plan:
    steps: tuple[PassCall, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"passes": [s.to_json() for s in self.steps]}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)

    def then(self, other: "Plan") -> "Plan":
        return Plan(self.steps + other.steps)

    @staticmethod
    def from_json(obj: Any) -> "Plan":
        if isinstance(obj, list):
            steps = obj
        elif isinstance(obj, Mapping) and isinstance(obj.get("passes"), list):
            steps = obj["passes"]
        else:
            raise PlanError('a plan must be {"passes": [...]} (or a list of pass calls)')
        return Plan(tuple(PassCall.from_json(s) for s in steps))

    @staticmethod
    def load(path: str | Path, student: int | None = None) -> "Plan":
        """A plan file, or the plan of a student in a `compress --report` file (`student`: its
        number, from 1; needed when the report has several)."""
        p = Path(path)
        if not p.is_file():
            raise PlanError(f"plan file '{p}' does not exist")
        try:
            obj = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PlanError(f"plan file '{p}' is not valid JSON ({exc.__class__.__name__} at {getattr(exc, 'lineno', '?')}:{getattr(exc, 'colno', '?')})") from None
        if isinstance(obj, Mapping) and isinstance(obj.get("students"), list) and "passes" not in obj:
            return Plan.from_json(_report_plan(obj["students"], p, student))
        if student is not None:
            raise PlanError(f"--student picks a student of a compress report; '{p}' is a plan")
        return Plan.from_json(obj)

    def __len__(self) -> int:
        return len(self.steps)


def _report_plan(students: list, path: Path, student: int | None) -> Any:
    targets = [", ".join(f"{k}={v}" for k, v in (s.get("target") or {}).items()) if isinstance(s, Mapping) else "?" for s in students]
    if not students:
        raise PlanError(f"report '{path}' has no students")
    if student is None and len(students) > 1:
        listed = "; ".join(f"{i + 1}: {t}" for i, t in enumerate(targets))
        raise PlanError(f"report '{path}' has {len(students)} students ({listed}); choose one with --student N")
    k = 1 if student is None else student
    if not 1 <= k <= len(students):
        raise PlanError(f"--student {k} is out of range: report '{path}' has {len(students)} student(s)")
    chosen = students[k - 1]
    if not isinstance(chosen, Mapping) or "plan" not in chosen:
        raise PlanError(f"student {k} of report '{path}' has no plan")
    return chosen["plan"]


def parse_fields(obj: Mapping[str, Any], pass_name: str, allowed: Mapping[str, type | tuple]) -> dict[str, Any]:
    """Checks that a pass call has only known keys with values of the right JSON type."""
    unknown = set(obj) - set(allowed)
    if unknown:
        raise PlanError(f"pass '{pass_name}' has unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    out = {}
    for key, value in obj.items():
        types = allowed[key]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            raise PlanError(f"pass '{pass_name}': field '{key}' has the wrong type ({value!r})")
        if not isinstance(value, types):
            raise PlanError(f"pass '{pass_name}': field '{key}' has the wrong type ({value!r})")
        out[key] = value
    return out
