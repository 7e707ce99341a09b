"""Projects: named containers of tasks."""
