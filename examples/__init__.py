"""Examples of Taskbeam in a team's own code: ``flask_app`` is a Flask app with its
own login that runs Taskbeam's API and live progress through the extension."""
