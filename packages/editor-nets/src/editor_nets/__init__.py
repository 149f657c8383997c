"""editor_nets."""

__all__: list[str] = []
