"""Hostile inputs generated in this run, per category: each generator counts its cases here, and
conftest prints the table at the end of the run (the CI log shows it)."""

GENERATED: dict[str, int] = {}


def counted(category: str) -> None:
    GENERATED[category] = GENERATED.get(category, 0) + 1
