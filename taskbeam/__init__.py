"""Taskbeam: long-running background jobs with live progress in the browser."""
