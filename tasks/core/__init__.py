"""Plain, typed modules that the tasks call. Nothing here imports a task module."""
