"""A Flask app of a team's own with Taskbeam in it: see README.md beside this file."""
