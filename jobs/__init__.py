"""Your team's own job kinds: every module in this folder is one or more kinds.

Web and worker import them at start-up (JOBS_MODULES, default ``jobs``); add a
file here and run ``make up``. See docs/jobs.md.
"""
