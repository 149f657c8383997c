"""graddecomp."""

__all__: list[str] = []
