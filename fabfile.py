"""`fab` entry point: the same tasks as `inv`, reading the same invoke.yaml."""

import fabric

from tasks import ns

# fab reads fabric.yaml by default; the project's single config file is invoke.yaml.
fabric.Config.file_prefix = "invoke"

__all__ = ["ns"]
