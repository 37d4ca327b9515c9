"""Attack harness for securefedrec (see the attack issue); measures what each defence stops."""

__all__: list[str] = []
