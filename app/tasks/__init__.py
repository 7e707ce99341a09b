"""Tasks: the work items of a project."""
