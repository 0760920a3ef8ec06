"""The loaded models by name, with the default one."""

from __future__ import annotations

from tdb_core import checks
from tdb_core.errors import NotFoundError
from tdb_core.runner import ModelRunner


class ModelRegistry:
    def __init__(self, runners: list[ModelRunner], default: str | None = None) -> None:
        if not runners:
            raise ValueError("a registry needs at least one model")
        self._runners = {r.name: r for r in runners}
        self.default = default or runners[0].name
        if self.default not in self._runners:
            raise NotFoundError(
                f"default model '{self.default}' is not loaded; loaded: {', '.join(self._runners)}"
            )

    def get(self, name: str = "") -> ModelRunner:
        """The named model; an empty name means the default one."""
        return checks.lookup(self._runners, name or self.default, "model", "loaded")

    def all(self) -> list[ModelRunner]:
        return list(self._runners.values())
