"""Git: status, pulls and submodules of this checkout (or --repo PATH), with one-line errors."""
