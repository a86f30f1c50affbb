"""Virtual Rollout: replay a student's trajectory through a teacher, token by token."""

__version__ = "0.1.0"
