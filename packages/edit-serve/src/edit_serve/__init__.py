"""edit_serve."""

__all__: list[str] = []
